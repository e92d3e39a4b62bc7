"""Users, groups, extension attachments, the apiKey hash, call records and recording legs.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "system_variables",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_system_variables"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_index("uq_users_login_lower", "users", [sa.text("lower(login)")], unique=True)
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "user_groups",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_user_groups_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_user_groups_group_id_groups", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "group_id", name="pk_user_groups"),
    )
    op.create_table(
        "extension_attachments",
        sa.Column("extension", sa.String(80), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("attached_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_extension_attachments_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("extension", name="pk_extension_attachments"),
    )
    op.create_table(
        "call_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("unique_id", sa.String(150), nullable=False),
        sa.Column("external_reference", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_call_records"),
        sa.UniqueConstraint("unique_id", name="uq_call_records_unique_id"),
    )
    op.create_index("ix_call_records_external_reference", "call_records", ["external_reference"])
    op.create_table(
        "recording_legs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("call_record_id", sa.Integer(), nullable=False),
        sa.Column("leg", sa.Integer(), nullable=False),
        sa.Column("unique_id", sa.String(150), nullable=False),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.Column("extension", sa.String(80), nullable=False),
        sa.Column("file", sa.String(1024), nullable=False),
        sa.Column("mixmonitor_id", sa.String(64), nullable=True),
        sa.Column("tag", sa.String(255), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("ownership", sa.String(16), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recording_legs"),
        sa.ForeignKeyConstraint(
            ["call_record_id"], ["call_records.id"], name="fk_recording_legs_call_record_id_call_records",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_recording_legs_owner_id_users"),
        sa.UniqueConstraint("call_record_id", "leg", name="uq_recording_legs_call_record_id_leg"),
        sa.CheckConstraint("ownership IN ('AGENT', 'EXTENSION', 'DEFAULT')", name="ck_recording_legs_ownership_rule"),
        sa.CheckConstraint(
            "state IN ('recording', 'paused', 'stopped', 'ended', 'lost')", name="ck_recording_legs_state"
        ),
        sa.CheckConstraint(
            "(ownership = 'DEFAULT') = (owner_id IS NULL)", name="ck_recording_legs_owner_matches_rule"
        ),
    )
    op.create_index("ix_recording_legs_unique_id", "recording_legs", ["unique_id"])
    op.create_index("ix_recording_legs_tag", "recording_legs", ["tag"])
    # NOTE: the guarantee behind ALREADY_RECORDING across processes: one active leg per call.
    op.create_index(
        "uq_recording_legs_active_unique_id",
        "recording_legs",
        ["unique_id"],
        unique=True,
        postgresql_where=sa.text("state IN ('recording', 'paused')"),
        sqlite_where=sa.text("state IN ('recording', 'paused')"),
    )


def downgrade() -> None:
    for table in (
        "recording_legs", "call_records", "extension_attachments", "user_groups", "groups", "users",
        "system_variables",
    ):
        op.drop_table(table)
