"""The end of a leg and its pauses: who or what ended it, when it was last seen alive, and
each paused span (for card payments), so durations with and without pauses can be told.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recording_legs") as batch:
        batch.add_column(sa.Column("ended_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("seen_at", UTCDateTime(), nullable=True))
    op.create_table(
        "recording_pauses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("leg_id", sa.String(32), nullable=False),
        sa.Column("paused_at", UTCDateTime(), nullable=False),
        sa.Column("resumed_at", UTCDateTime(), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("paused_by", sa.String(128), nullable=True),
        sa.Column("resumed_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recording_pauses"),
        sa.ForeignKeyConstraint(
            ["leg_id"], ["recording_legs.id"], name="fk_recording_pauses_leg_id_recording_legs", ondelete="CASCADE"
        ),
        sa.CheckConstraint("method IN ('mute', 'restart')", name="ck_recording_pauses_method"),
        sa.CheckConstraint("resumed_at IS NULL OR resumed_at >= paused_at", name="ck_recording_pauses_order"),
    )
    op.create_index("ix_recording_pauses_leg_id", "recording_pauses", ["leg_id"])
    # NOTE: a leg has at most one pause open at a time; a repeated pause is a no-op.
    op.create_index(
        "uq_recording_pauses_open_leg_id",
        "recording_pauses",
        ["leg_id"],
        unique=True,
        postgresql_where=sa.text("resumed_at IS NULL"),
        sqlite_where=sa.text("resumed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("recording_pauses")
    with op.batch_alter_table("recording_legs") as batch:
        batch.drop_column("seen_at")
        batch.drop_column("ended_by")
