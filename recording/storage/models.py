"""The tables, as SQLAlchemy 2 models. The schema itself is made only by the Alembic
migrations in ``migrations/``; these classes describe it for queries and for autogenerate."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..domain import LEG_STATES, OWNERSHIP_RULES


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"

# Every constraint gets a predictable name, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

API_KEY_VARIABLE = "apiKey"


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend stores
    (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SystemVariable(Base):
    """Site-wide values; the apiKey is kept here as a hash only (name ``apiKey``)."""

    __tablename__ = "system_variables"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    """An agent or supervisor who can own recording legs. Logins match without regard to case."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# NOTE: an expression index, so "Fred" and "fred" cannot both exist on either backend.
Index("uq_users_login_lower", func.lower(User.login), unique=True)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)


class UserGroup(Base):
    __tablename__ = "user_groups"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)


class ExtensionAttachment(Base):
    """Which user is currently logged in at an extension (at most one)."""

    __tablename__ = "extension_attachments"

    extension: Mapped[str] = mapped_column(String(80), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    attached_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CallRecord(Base):
    """One call, by its Asterisk unique id; ``external_reference`` is the caller's tag."""

    __tablename__ = "call_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unique_id: Mapped[str] = mapped_column(String(150), unique=True)
    external_reference: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# The rules of a leg's file, kept by the database itself (migration 0004 spells out the same text).
# A digest is the size, the SHA-256 and when they were taken, all three or none.
DIGEST_COMPLETE = ("(file_sha256 IS NULL) = (file_size IS NULL) AND (file_sha256 IS NULL) = (hashed_at IS NULL)"
                   " AND (file_sha256 IS NULL OR length(file_sha256) = 64)")
# "purged" comes with its time and the state the leg had ended in, and only then.
PURGED_WHEN_MARKED = ("(state = 'purged') = (purged_at IS NOT NULL)"
                      " AND (purged_at IS NULL) = (state_before_purge IS NULL)")
# A leg is marked purged only after its purge was begun (and recorded) before its file was deleted.
PURGE_HAS_INTENT = "purged_at IS NULL OR (purge_started_at IS NOT NULL AND purge_reason IS NOT NULL)"
# A held leg has no purge under way: a hold cannot be placed once the deletion may have begun,
# and a purge does not begin on a held leg.
HOLD_OR_PURGE = "held_at IS NULL OR purge_started_at IS NULL"


class RecordingLeg(Base):
    """One MixMonitor run on one channel of a call.

    ``id`` is made by the service before the row is written (so the dialplan can be told it
    even when the write is deferred); ``leg`` numbers the legs of a call from 1. At most one
    leg of a unique id is active (recording or paused) at a time.
    """

    __tablename__ = "recording_legs"
    __table_args__ = (
        UniqueConstraint("call_record_id", "leg"),
        # A part of a followed call is recorded once, and a leg taken over once, whichever
        # process heard the change first (unique indexes: migration 0008 adds them in place).
        Index("uq_recording_legs_linkedid_part", "linkedid", "part", unique=True),
        Index("uq_recording_legs_follows", "follows", unique=True),
        CheckConstraint(_one_of("ownership", OWNERSHIP_RULES), name="ownership_rule"),
        CheckConstraint(_one_of("state", LEG_STATES), name="state"),
        CheckConstraint("(ownership = 'DEFAULT') = (owner_id IS NULL)", name="owner_matches_rule"),
        CheckConstraint(DIGEST_COMPLETE, name="digest_complete"),
        CheckConstraint(PURGED_WHEN_MARKED, name="purged_when_marked"),
        CheckConstraint(PURGE_HAS_INTENT, name="purge_has_intent"),
        CheckConstraint(HOLD_OR_PURGE, name="hold_or_purge"),
        Index(
            "uq_recording_legs_active_unique_id",
            "unique_id",
            unique=True,
            postgresql_where="state IN ('recording', 'paused')",
            sqlite_where="state IN ('recording', 'paused')",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    call_record_id: Mapped[int] = mapped_column(ForeignKey("call_records.id", ondelete="CASCADE"))
    leg: Mapped[int] = mapped_column(Integer)
    unique_id: Mapped[str] = mapped_column(String(150), index=True)
    channel: Mapped[str] = mapped_column(String(255))
    extension: Mapped[str] = mapped_column(String(80))
    file: Mapped[str] = mapped_column(String(1024))
    mixmonitor_id: Mapped[str | None] = mapped_column(String(64))
    tag: Mapped[str | None] = mapped_column(String(255), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    ownership: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Who or what ended the leg: a login, "dialplan", "hangup", "sweeper"...
    ended_by: Mapped[str | None] = mapped_column(String(128))
    # When the channel was last known to be alive; a lost leg ends there.
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When its state last changed (a pause, resume or end; None: never since its start). A
    # change older than this is not applied over it (a journal replayed late).
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A leg of a followed call (one leg per part of a call through transfers and queues): the
    # call's Linkedid, and the leg this one took over from (each leg is taken over at most once:
    # the database decides which process starts the next part's recording).
    linkedid: Mapped[str | None] = mapped_column(String(150), index=True)
    part: Mapped[int | None] = mapped_column(Integer)
    follows: Mapped[str | None] = mapped_column(String(32))
    # The file once complete (the leg ended and the file stopped changing).
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    hashed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A legal hold: the leg's audio is not purged while held_at is set.
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    held_by: Mapped[str | None] = mapped_column(String(128))
    hold_reason: Mapped[str | None] = mapped_column(String(255))
    # Retention: the intent (written first), then the mark once the file is deleted.
    purge_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_reason: Mapped[str | None] = mapped_column(String(255))
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state_before_purge: Mapped[str | None] = mapped_column(String(16))


class RecordingPause(Base):
    """A span during which a leg did not record (a caller reading out a card number).

    ``method`` is ``mute`` (MixMonitorMute over AMI: the file keeps its timeline, with silence)
    or ``restart`` (MixMonitor stopped, then started again appending to the same file).
    """

    __tablename__ = "recording_pauses"
    __table_args__ = (
        CheckConstraint("method IN ('mute', 'restart')", name="method"),
        CheckConstraint("resumed_at IS NULL OR resumed_at >= paused_at", name="order"),
        Index(
            "uq_recording_pauses_open_leg_id",
            "leg_id",
            unique=True,
            postgresql_where="resumed_at IS NULL",
            sqlite_where="resumed_at IS NULL",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    leg_id: Mapped[str] = mapped_column(ForeignKey("recording_legs.id", ondelete="CASCADE"), index=True)
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(8))
    paused_by: Mapped[str | None] = mapped_column(String(128))
    resumed_by: Mapped[str | None] = mapped_column(String(128))
    # The keys of the pause and of the resume that made this row (LegChange.key): each is
    # applied once, however often a journal is replayed. None for rows older than 0005.
    pause_key: Mapped[str | None] = mapped_column(String(32), unique=True)
    resume_key: Mapped[str | None] = mapped_column(String(32), unique=True)


# -- the recordings pages, per-user credentials and the audit (migration 0006) ---------------------

# The system variable that says the HTTP API takes the apiKey's word for who asks (loginName):
# written by migration 0006 on a database that was in use before it, so an upgrade keeps its CRM
# working; RECORDING_TRUST_CRM_LOGIN_NAME overrides it either way.
TRUST_CRM_VARIABLE = "trustCrmLoginName"
AUDIT_ACTIONS = ("play", "download", "hold", "release", "purge")
AUDIT_DOORS = ("pages", "http", "cli", "service")
CHECK_OUTCOMES = ("unchanged", "changed", "vanished", "unreadable")


class Password(Base):
    """A user's password for the recordings pages, as a slow salted hash (argon2id, PHC string)."""

    __tablename__ = "passwords"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    hash: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PageSession(Base):
    """A signed-in browser: the SHA-256 of its cookie's random value (never the value), whose
    user, and its times. Deleted on sign-out, on a password change, and once idle or expired."""

    __tablename__ = "page_sessions"
    __table_args__ = (CheckConstraint("via IN ('password', 'sso')", name="via"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    address: Mapped[str | None] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(8))


class ApiToken(Base):
    """A per-user credential for the HTTP API (Authorization: Bearer): the SHA-256 of the token,
    whose user, and whether it was revoked (kept, so the list shows it)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Who played, downloaded, held, released or purged which leg, when, from where, through
    which door. NOTE: no foreign key to the leg or the user, so nothing that happens to either
    (a purge, a user removed) takes the audit with it."""

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint(_one_of("action", AUDIT_ACTIONS), name="action"),
        CheckConstraint(_one_of("door", AUDIT_DOORS), name="door"),
        Index("ix_audit_events_leg_id_at", "leg_id", "at"),
        Index("ix_audit_events_login_at", "login", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    action: Mapped[str] = mapped_column(String(16))
    leg_id: Mapped[str] = mapped_column(String(32))
    unique_id: Mapped[str | None] = mapped_column(String(150))
    login: Mapped[str] = mapped_column(String(128))
    address: Mapped[str | None] = mapped_column(String(64))
    door: Mapped[str] = mapped_column(String(8))
    detail: Mapped[str | None] = mapped_column(String(255))


class LegCheck(Base):
    """The last time ``recordings verify`` read a leg's file again, and what it found."""

    __tablename__ = "leg_checks"
    __table_args__ = (CheckConstraint(_one_of("outcome", CHECK_OUTCOMES), name="outcome"),)

    leg_id: Mapped[str] = mapped_column(ForeignKey("recording_legs.id", ondelete="CASCADE"), primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(255))


# The list of the recordings pages, newest first (keyset pagination on (started_at, id)): for
# everyone, by owner (an agent's own legs; a manager's owner filter) and by extension.
Index("ix_recording_legs_started_at_id", RecordingLeg.started_at, RecordingLeg.id)
Index("ix_recording_legs_owner_id_started_at_id", RecordingLeg.owner_id, RecordingLeg.started_at, RecordingLeg.id)
Index("ix_recording_legs_extension_started_at_id", RecordingLeg.extension, RecordingLeg.started_at,
      RecordingLeg.id)
# Held legs are few: a partial index finds them without scanning the list's index.
Index("ix_recording_legs_held", RecordingLeg.started_at, RecordingLeg.id,
      postgresql_where=RecordingLeg.held_at.is_not(None), sqlite_where=RecordingLeg.held_at.is_not(None))


# -- webhooks (migration 0007): subscriptions, the outbox of leg events, one delivery per
# (event, subscription). The events are written by database triggers on recording_legs, in the
# transaction of the change they report (see recording/storage/outbox.py).

# The kinds of event, in the words of a subscription's --events and of the payload's type.
WEBHOOK_EVENTS = ("started", "failed", "paused", "resumed", "ended", "ready", "held", "released", "purged")
DELIVERY_STATES = ("pending", "delivered", "failed")


class WebhookSubscription(Base):
    """A receiver: its URL, its signing secret (``whsec_`` and base64; kept, since signing needs
    it), the kinds of event it wants (``,ended,ready,``; NULL: all) and the prefix its legs'
    tags must have (NULL: any leg). ``failing_since``: the first failure of the current run of
    failed attempts (NULL once one succeeds)."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[str | None] = mapped_column(String(255))
    tag_prefix: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """What happened to a leg, as it was at that moment: who owned it, its tag, and the fields
    of its kind. ``message_id`` is the ``webhook-id`` of every delivery of it. ``at`` is when it
    happened (the leg's own column); ``created_at`` when it was written."""

    __tablename__ = "webhook_events"
    __table_args__ = (CheckConstraint(_one_of("kind", WEBHOOK_EVENTS), name="kind"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    leg_id: Mapped[str] = mapped_column(String(32))
    unique_id: Mapped[str] = mapped_column(String(150))
    leg: Mapped[int] = mapped_column(Integer)
    tag: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(128))
    ownership: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(8))
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one subscription: ``pending`` until ``delivered``, or ``failed`` once its
    retries are given up. A deliverer claims it until ``claimed_until``; ``next_at`` is when it
    may be tried (again). ``leg_id`` is the event's, for the rule that a leg's events reach a
    subscriber in order."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "subscription_id"),
        CheckConstraint(_one_of("state", DELIVERY_STATES), name="state"),
        Index("ix_webhook_deliveries_order", "subscription_id", "leg_id", "event_id"),
        Index("ix_webhook_deliveries_due", "next_at", postgresql_where="state = 'pending'",
              sqlite_where="state = 'pending'"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    leg_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When it was queued: made, or sent again by `webhooks redeliver`; retries end 3 days after.
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
