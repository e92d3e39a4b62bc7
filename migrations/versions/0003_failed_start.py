"""A leg state for a start whose MixMonitor did not run: the leg is written while MixMonitor is
being asked for (so the commit overlaps the AGI round trips), and settled as ``failed`` when
Asterisk gives no recording.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BEFORE = "state IN ('recording', 'paused', 'stopped', 'ended', 'lost')"
AFTER = "state IN ('recording', 'paused', 'stopped', 'ended', 'lost', 'failed')"


# NOTE: 0001 named its check constraints with the prefix twice (the naming convention was
# applied to names that already carried it); this one gets the name the convention gives.
OLD_NAME = "ck_recording_legs_ck_recording_legs_state"
NEW_NAME = "ck_recording_legs_state"


def upgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_constraint(op.f(OLD_NAME), type_="check")
        batch.create_check_constraint(op.f(NEW_NAME), AFTER)


def downgrade() -> None:
    # NOTE: a failed leg recorded nothing; it becomes "lost" (ended, never found alive after).
    op.execute("UPDATE recording_legs SET state = 'lost' WHERE state = 'failed'")
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_constraint(op.f(NEW_NAME), type_="check")
        batch.create_check_constraint(op.f(OLD_NAME), BEFORE)
