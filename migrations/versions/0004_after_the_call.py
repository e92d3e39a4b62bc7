"""After the call: a leg's file digest (size and SHA-256 once the file is complete), a legal hold,
and retention's purge (its intent, then the mark, with the state the leg had ended in); the leg
state 'purged'; an index on the end of a leg, by which purges and digests find their legs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BEFORE = "state IN ('recording', 'paused', 'stopped', 'ended', 'lost', 'failed')"
AFTER = "state IN ('recording', 'paused', 'stopped', 'ended', 'lost', 'failed', 'purged')"

# The same rules as recording/storage/models.py, spelled out here so that this migration keeps
# doing what it did whatever the models say later.
CHECKS = {
    "digest_complete": (
        "(file_sha256 IS NULL) = (file_size IS NULL) AND (file_sha256 IS NULL) = (hashed_at IS NULL)"
        " AND (file_sha256 IS NULL OR length(file_sha256) = 64)"
    ),
    "purged_when_marked": (
        "(state = 'purged') = (purged_at IS NOT NULL) AND (purged_at IS NULL) = (state_before_purge IS NULL)"
    ),
    "purge_has_intent": "purged_at IS NULL OR (purge_started_at IS NOT NULL AND purge_reason IS NOT NULL)",
    "hold_or_purge": "held_at IS NULL OR purge_started_at IS NULL",
}
COLUMNS = (
    ("file_size", sa.BigInteger()),
    ("file_sha256", sa.String(64)),
    ("hashed_at", UTCDateTime()),
    ("held_at", UTCDateTime()),
    ("held_by", sa.String(128)),
    ("hold_reason", sa.String(255)),
    ("purge_started_at", UTCDateTime()),
    ("purge_reason", sa.String(255)),
    ("purged_at", UTCDateTime()),
    ("state_before_purge", sa.String(16)),
)


def upgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
        # NOTE: 0003 gave the state check the name the naming convention gives (see its NOTE:
        # 0001's checks carry the prefix twice); op.f() keeps the convention from adding it again.
        batch.drop_constraint(op.f("ck_recording_legs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_recording_legs_state"), AFTER)
        for name, condition in CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_recording_legs_{name}"), condition)
        batch.create_index(op.f("ix_recording_legs_ended_at"), ["ended_at"])


def downgrade() -> None:
    # NOTE: a purged leg has no audio left, and the one state 0003 has for a leg without audio
    # is "failed"; going back to the state it had ended in would make it look as if its file
    # were still there to play, hold or verify. Who ended it stays in ended_by.
    op.execute(
        "UPDATE recording_legs SET state = 'failed', purged_at = NULL, state_before_purge = NULL"
        " WHERE state = 'purged'"
    )
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_index(op.f("ix_recording_legs_ended_at"))
        for name in CHECKS:
            batch.drop_constraint(op.f(f"ck_recording_legs_{name}"), type_="check")
        batch.drop_constraint(op.f("ck_recording_legs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_recording_legs_state"), BEFORE)
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
