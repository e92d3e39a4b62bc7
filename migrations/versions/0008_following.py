"""Following a call through transfers and queues: a leg knows its call (Asterisk's Linkedid), the
part of the call it records, and the leg it took over from. A part is recorded once and a leg
taken over once (both unique): of several processes that see the same transfer, the one whose
write the database takes starts the next recording.

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        batch.add_column(sa.Column("linkedid", sa.String(150), nullable=True))
        batch.add_column(sa.Column("part", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("follows", sa.String(32), nullable=True))
        batch.create_index(op.f("ix_recording_legs_linkedid"), ["linkedid"])
        batch.create_unique_constraint(op.f("uq_recording_legs_linkedid_part"), ["linkedid", "part"])
        batch.create_unique_constraint(op.f("uq_recording_legs_follows"), ["follows"])


def downgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_constraint(op.f("uq_recording_legs_follows"), type_="unique")
        batch.drop_constraint(op.f("uq_recording_legs_linkedid_part"), type_="unique")
        batch.drop_index(op.f("ix_recording_legs_linkedid"))
        batch.drop_column("follows")
        batch.drop_column("part")
        batch.drop_column("linkedid")
