"""The recordings pages and who may see what: users' passwords, the pages' sessions, per-user API
tokens, the audit of every play, download, hold, release and purge, the last verification of a
leg's file; the indexes the pages' list needs at a million legs.

A database that was in use before this migration (it has users or legs) is marked to keep
taking the apiKey's word for who asks (loginName), as it did: the CRMs that talk to it keep
working. A new one is not (README, "Who asks").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Spelled out here, as in earlier migrations, so that this one keeps doing what it did whatever
# the models say later.
TRUST_CRM_VARIABLE = "trustCrmLoginName"
ACTIONS = "action IN ('play', 'download', 'hold', 'release', 'purge')"
DOORS = "door IN ('pages', 'http', 'cli', 'service')"
OUTCOMES = "outcome IN ('unchanged', 'changed', 'vanished', 'unreadable')"
LEG_INDEXES = (
    ("ix_recording_legs_started_at_id", ["started_at", "id"]),
    ("ix_recording_legs_owner_id_started_at_id", ["owner_id", "started_at", "id"]),
    ("ix_recording_legs_extension_started_at_id", ["extension", "started_at", "id"]),
)


def upgrade() -> None:
    in_use = op.get_bind().execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM recording_legs)"
    )).scalar()
    op.create_table(
        "passwords",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(255), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_passwords_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_passwords")),
    )
    op.create_table(
        "page_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("via", sa.String(8), nullable=False),
        sa.CheckConstraint("via IN ('password', 'sso')", name=op.f("ck_page_sessions_via")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_page_sessions_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_page_sessions")),
    )
    op.create_index(op.f("ix_page_sessions_user_id"), "page_sessions", ["user_id"])
    op.create_index(op.f("ix_page_sessions_expires_at"), "page_sessions", ["expires_at"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])
    op.create_table(
        "audit_events",
        # NOTE: BIGINT on PostgreSQL (an audit grows for ever); SQLite's rowid is 64 bits already,
        # and only INTEGER PRIMARY KEY makes it one.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("leg_id", sa.String(32), nullable=False),
        sa.Column("unique_id", sa.String(150), nullable=True),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("door", sa.String(8), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.CheckConstraint(ACTIONS, name=op.f("ck_audit_events_action")),
        sa.CheckConstraint(DOORS, name=op.f("ck_audit_events_door")),
        # NOTE: no foreign key to recording_legs or users: the audit outlives a purge, and a
        # cascade must never delete it.
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index("ix_audit_events_leg_id_at", "audit_events", ["leg_id", "at"])
    op.create_index("ix_audit_events_login_at", "audit_events", ["login", "at"])
    op.create_table(
        "leg_checks",
        sa.Column("leg_id", sa.String(32), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.CheckConstraint(OUTCOMES, name=op.f("ck_leg_checks_outcome")),
        sa.ForeignKeyConstraint(["leg_id"], ["recording_legs.id"], name=op.f("fk_leg_checks_leg_id_recording_legs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("leg_id", name=op.f("pk_leg_checks")),
    )
    for name, columns in LEG_INDEXES:
        op.create_index(name, "recording_legs", columns)
    op.create_index("ix_recording_legs_held", "recording_legs", ["started_at", "id"],
                    postgresql_where=sa.text("held_at IS NOT NULL"), sqlite_where=sa.text("held_at IS NOT NULL"))
    if in_use:
        op.execute(sa.text(
            "INSERT INTO system_variables (name, value, updated_at) VALUES (:name, 'true', CURRENT_TIMESTAMP)"
        ).bindparams(name=TRUST_CRM_VARIABLE))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM system_variables WHERE name = :name").bindparams(name=TRUST_CRM_VARIABLE))
    op.drop_index("ix_recording_legs_held", "recording_legs")
    for name, _ in reversed(LEG_INDEXES):
        op.drop_index(name, "recording_legs")
    op.drop_table("leg_checks")
    op.drop_index("ix_audit_events_login_at", "audit_events")
    op.drop_index("ix_audit_events_leg_id_at", "audit_events")
    op.drop_index(op.f("ix_audit_events_at"), "audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_api_tokens_user_id"), "api_tokens")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_page_sessions_expires_at"), "page_sessions")
    op.drop_index(op.f("ix_page_sessions_user_id"), "page_sessions")
    op.drop_table("page_sessions")
    op.drop_table("passwords")
