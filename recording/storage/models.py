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
        # A part of a followed call is recorded once, whichever process heard it first.
        UniqueConstraint("linkedid", "part"),
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
    follows: Mapped[str | None] = mapped_column(String(32), unique=True)
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
