"""The database decides a leg's changes: when its state last changed (a change older than that is
not applied over it), and the keys of the pauses and resumes applied (a journal replayed twice
applies each of them once).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        batch.add_column(sa.Column("changed_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("recording_pauses") as batch:
        batch.add_column(sa.Column("pause_key", sa.String(32), nullable=True))
        batch.add_column(sa.Column("resume_key", sa.String(32), nullable=True))
        batch.create_unique_constraint(op.f("uq_recording_pauses_pause_key"), ["pause_key"])
        batch.create_unique_constraint(op.f("uq_recording_pauses_resume_key"), ["resume_key"])


def downgrade() -> None:
    with op.batch_alter_table("recording_pauses") as batch:
        batch.drop_constraint(op.f("uq_recording_pauses_resume_key"), type_="unique")
        batch.drop_constraint(op.f("uq_recording_pauses_pause_key"), type_="unique")
        batch.drop_column("resume_key")
        batch.drop_column("pause_key")
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_column("changed_at")
