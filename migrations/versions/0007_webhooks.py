"""Webhooks: subscriptions, the outbox of leg events and their deliveries, and the triggers that
write an event in the transaction of the change it reports, whichever code made the change.

The triggers key on the columns of recording_legs (its state, file_sha256, held_at), so every
path that writes a leg (the hot path's fixed SQL, the general path, a journal's replay, the
sweeper, retention, the hasher, holds) emits its events by construction. They write nothing
while there is no subscription (one EXISTS per statement on PostgreSQL, per row on SQLite).
Each event is copied by a trigger on webhook_events into one delivery per subscription that
wants its kind and tag.

A leg inserted already ended (a replayed leg written as lost) gives ``started`` then ``ended``;
one inserted failed gives ``started`` then ``failed``: a subscriber always sees a leg begin.
A pause and a resume are read from the leg's state (recording -> paused -> recording), with
their time, who and how from the pause row: an end closes an open pause too, so the pause
row's resumed_at alone would announce a resume that did not happen.

NOTE: SQLite drops a table's triggers with the table, and Alembic's batch mode rebuilds a
table by copying it into a new one: a later migration that batch-alters recording_legs on
SQLite must create these triggers again (tests/recording/test_webhooks_outbox.py checks they
are there at head).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from recording.storage.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KINDS = "kind IN ('started', 'failed', 'paused', 'resumed', 'ended', 'ready', 'held', 'released', 'purged')"
ENDED = "('stopped', 'ended', 'lost')"
ACTIVE = "('recording', 'paused')"

_COLUMNS = ("message_id, kind, leg_id, unique_id, leg, tag, owner, ownership, at, state, actor, reason, method, "
            "file_size, file_sha256, created_at")
_OPEN_PAUSE = "FROM recording_pauses p WHERE p.leg_id = L.id AND p.resumed_at IS NULL"
_LAST_PAUSE = ("FROM recording_pauses p WHERE p.leg_id = L.id AND p.resumed_at IS NOT NULL "
               "ORDER BY p.resumed_at DESC, p.id DESC LIMIT 1")

# Each event a leg row can give: (kind, condition on the insert, condition on an update, and
# the values of at, state, actor, reason, method, file_size, file_sha256). {now} is the
# backend's current time; L is the leg as it is now, O as it was before an update.
EVENTS = (
    ("started", "true", None,
     ("L.started_at", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL")),
    ("paused", None, "O.state = 'recording' AND L.state = 'paused'",
     (f"COALESCE((SELECT p.paused_at {_OPEN_PAUSE}), {{now}})", "NULL",
      f"(SELECT p.paused_by {_OPEN_PAUSE})", "NULL", f"(SELECT p.method {_OPEN_PAUSE})", "NULL", "NULL")),
    ("resumed", None, "O.state = 'paused' AND L.state = 'recording'",
     (f"COALESCE((SELECT p.resumed_at {_LAST_PAUSE}), {{now}})", "NULL",
      f"(SELECT p.resumed_by {_LAST_PAUSE})", "NULL", f"(SELECT p.method {_LAST_PAUSE})", "NULL", "NULL")),
    ("ended", f"L.state IN {ENDED}", f"O.state IN {ACTIVE} AND L.state IN {ENDED}",
     ("COALESCE(L.ended_at, {now})", "L.state", "L.ended_by", "NULL", "NULL", "NULL", "NULL")),
    ("failed", "L.state = 'failed'", f"O.state IN {ACTIVE} AND L.state = 'failed'",
     ("COALESCE(L.ended_at, {now})", "L.state", "L.ended_by", "NULL", "NULL", "NULL", "NULL")),
    ("ready", None, "O.file_sha256 IS NULL AND L.file_sha256 IS NOT NULL",
     ("L.hashed_at", "NULL", "NULL", "NULL", "NULL", "L.file_size", "L.file_sha256")),
    ("held", None, "O.held_at IS NULL AND L.held_at IS NOT NULL",
     ("L.held_at", "NULL", "L.held_by", "L.hold_reason", "NULL", "NULL", "NULL")),
    # NOTE: a release clears held_at and held_by, so its time is the change's own.
    ("released", None, "O.held_at IS NOT NULL AND L.held_at IS NULL",
     ("{now}", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL")),
    ("purged", None, "O.state <> 'purged' AND L.state = 'purged'",
     ("L.purged_at", "L.state_before_purge", "NULL", "L.purge_reason", "NULL", "NULL", "NULL")),
)

BACKEND = {
    "postgresql": {
        "now": "now()",
        "message_id": "'msg_' || replace(gen_random_uuid()::text, '-', '')",
        "contains": "strpos(s.events, ',' || NEW.kind || ',') > 0",
    },
    "sqlite": {
        "now": "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')",
        "message_id": "'msg_' || lower(hex(randomblob(16)))",
        "contains": "instr(s.events, ',' || NEW.kind || ',') > 0",
    },
}


def _insert(backend: str, kind: str, values: tuple[str, ...], source: str, where: str) -> str:
    """The INSERT of one kind of event for the legs of ``source`` (a FROM clause naming the leg
    L, its call record c and its owner u)."""
    words = BACKEND[backend]
    at, state, actor, reason, method, size, sha = (v.format(now=words["now"]) for v in values)
    return (
        f"INSERT INTO webhook_events ({_COLUMNS}) SELECT {words['message_id']}, '{kind}', L.id, L.unique_id, L.leg, "
        f"COALESCE(L.tag, c.external_reference), u.login, L.ownership, {at}, {state}, {actor}, {reason}, {method}, "
        f"{size}, {sha}, {words['now']} {source} WHERE {where}"
    )


def _statements(backend: str, update: bool) -> list[str]:
    """The INSERTs of a row trigger, in the order their events happen; on SQLite each carries
    its condition, on PostgreSQL it is wrapped in an IF."""
    found = []
    for kind, on_insert, on_update, values in EVENTS:
        condition = on_update if update else on_insert
        if condition is None:
            continue
        if backend == "sqlite":
            condition = condition.replace("L.", "NEW.").replace("O.", "OLD.")
            sql = _insert(backend, kind, values, "FROM call_records c LEFT JOIN users u ON u.id = NEW.owner_id",
                          f"c.id = NEW.call_record_id AND {condition}")
            found.append(sql.replace("L.", "NEW."))
        else:
            sql = _insert(backend, kind, values, "FROM call_records c LEFT JOIN users u ON u.id = NEW.owner_id",
                          "c.id = NEW.call_record_id")
            condition = condition.replace("L.", "NEW.").replace("O.", "OLD.")
            found.append(f"IF {condition} THEN {sql.replace('L.', 'NEW.')}; END IF;")
    return found


def _postgres_inserted() -> list[str]:
    """PostgreSQL's insert trigger runs once per statement over the rows it inserted (the hot
    path inserts a batch of legs in one statement): one function call and one EXISTS a batch."""
    found = []
    for kind, on_insert, _, values in EVENTS:
        if on_insert is not None:
            source = ("FROM new_legs L JOIN call_records c ON c.id = L.call_record_id "
                      "LEFT JOIN users u ON u.id = L.owner_id")
            found.append(_insert("postgresql", kind, values, source, on_insert) + ";")
    return found


CHANGED = "OLD.state IS DISTINCT FROM NEW.state OR OLD.file_sha256 IS DISTINCT FROM NEW.file_sha256 " \
          "OR OLD.held_at IS DISTINCT FROM NEW.held_at"
FAN_OUT = (
    "INSERT INTO webhook_deliveries (event_id, subscription_id, leg_id, state, attempts, next_at, queued_at) "
    "SELECT NEW.id, s.id, NEW.leg_id, 'pending', 0, NEW.created_at, NEW.created_at FROM webhook_subscriptions s "
    "WHERE (s.events IS NULL OR {contains}) "
    "AND (s.tag_prefix IS NULL OR substr(COALESCE(NEW.tag, ''), 1, length(s.tag_prefix)) = s.tag_prefix)"
)


def _postgres_triggers() -> list[str]:
    guard = "IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions) THEN RETURN NULL; END IF;"
    inserted = "\n  ".join(_postgres_inserted())
    changed = "\n  ".join(_statements("postgresql", update=True))
    fan_out = FAN_OUT.format(contains=BACKEND["postgresql"]["contains"])
    return [
        f"CREATE FUNCTION webhook_legs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  {guard}\n"
        f"  {inserted}\n  RETURN NULL;\nEND $$",
        "CREATE TRIGGER webhook_legs_inserted AFTER INSERT ON recording_legs REFERENCING NEW TABLE AS new_legs "
        "FOR EACH STATEMENT EXECUTE FUNCTION webhook_legs_inserted()",
        f"CREATE FUNCTION webhook_leg_changed() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  {guard}\n"
        f"  {changed}\n  RETURN NULL;\nEND $$",
        "CREATE TRIGGER webhook_leg_changed AFTER UPDATE OF state, file_sha256, held_at ON recording_legs "
        f"FOR EACH ROW WHEN ({CHANGED}) EXECUTE FUNCTION webhook_leg_changed()",
        f"CREATE FUNCTION webhook_event_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  {fan_out};\n"
        "  RETURN NULL;\nEND $$",
        "CREATE TRIGGER webhook_event_fan_out AFTER INSERT ON webhook_events FOR EACH ROW "
        "EXECUTE FUNCTION webhook_event_fan_out()",
    ]


def _sqlite_triggers() -> list[str]:
    guard = "EXISTS (SELECT 1 FROM webhook_subscriptions)"
    inserted = ";\n  ".join(_statements("sqlite", update=False))
    changed = ";\n  ".join(_statements("sqlite", update=True))
    distinct = CHANGED.replace("IS DISTINCT FROM", "IS NOT")
    fan_out = FAN_OUT.format(contains=BACKEND["sqlite"]["contains"])
    return [
        f"CREATE TRIGGER webhook_legs_inserted AFTER INSERT ON recording_legs WHEN {guard}\nBEGIN\n  {inserted};\nEND",
        f"CREATE TRIGGER webhook_leg_changed AFTER UPDATE OF state, file_sha256, held_at ON recording_legs "
        f"WHEN ({distinct}) AND {guard}\nBEGIN\n  {changed};\nEND",
        f"CREATE TRIGGER webhook_event_fan_out AFTER INSERT ON webhook_events\nBEGIN\n  {fan_out};\nEND",
    ]


TRIGGERS = ("webhook_legs_inserted", "webhook_leg_changed", "webhook_event_fan_out")


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("events", sa.String(255), nullable=True),
        sa.Column("tag_prefix", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("last_success_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_subscriptions"),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", big, nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("leg_id", sa.String(32), nullable=False),
        sa.Column("unique_id", sa.String(150), nullable=False),
        sa.Column("leg", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(255), nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("ownership", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("method", sa.String(8), nullable=True),
        sa.Column("file_size", sa.BigInteger(), nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.UniqueConstraint("message_id", name="uq_webhook_events_message_id"),
        sa.CheckConstraint(KINDS, name="ck_webhook_events_kind"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", big, nullable=False),
        sa.Column("event_id", big, nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("leg_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("queued_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(["event_id"], ["webhook_events.id"],
                                name="fk_webhook_deliveries_event_id_webhook_events", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscription_id"], ["webhook_subscriptions.id"],
                                name="fk_webhook_deliveries_subscription_id_webhook_subscriptions", ondelete="CASCADE"),
        sa.UniqueConstraint("event_id", "subscription_id", name="uq_webhook_deliveries_event_id_subscription_id"),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_state"),
    )
    op.create_index("ix_webhook_deliveries_order", "webhook_deliveries", ["subscription_id", "leg_id", "event_id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_at"],
                    postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
    dialect = op.get_bind().dialect.name
    for statement in _postgres_triggers() if dialect == "postgresql" else _sqlite_triggers():
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table in zip(TRIGGERS, ("recording_legs", "recording_legs", "webhook_events")):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}" if dialect == "postgresql"
                   else f"DROP TRIGGER IF EXISTS {name}")
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_subscriptions")
