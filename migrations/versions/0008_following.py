"""Following a call through transfers and queues: a leg knows its call (Asterisk's Linkedid), the
part of the call it records, and the leg it took over from. A part is recorded once and a leg
taken over once (both unique): of several processes that see the same transfer, the one whose
write the database takes starts the next recording.

NOTE: columns and indexes are added in place, not by a batch rebuild of recording_legs: SQLite
drops a table's triggers with the table (the webhooks' triggers are on recording_legs).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_recording_legs_linkedid", ["linkedid"], False),
    ("uq_recording_legs_linkedid_part", ["linkedid", "part"], True),
    ("uq_recording_legs_follows", ["follows"], True),
)


def upgrade() -> None:
    op.add_column("recording_legs", sa.Column("linkedid", sa.String(150), nullable=True))
    op.add_column("recording_legs", sa.Column("part", sa.Integer(), nullable=True))
    op.add_column("recording_legs", sa.Column("follows", sa.String(32), nullable=True))
    for name, columns, unique in INDEXES:
        op.create_index(op.f(name), "recording_legs", columns, unique=unique)


def downgrade() -> None:
    for name, _, _ in reversed(INDEXES):
        op.drop_index(op.f(name), table_name="recording_legs")
    for column in ("follows", "part", "linkedid"):
        op.drop_column("recording_legs", column)
