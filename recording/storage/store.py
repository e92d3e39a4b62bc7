"""The only module that opens database transactions: engines, transactions, and the translation
of database errors into :class:`~recording.errors.StorageUnavailable`. :class:`Store` is made of
this module's legs and users and of three parts kept beside it: ``parts.py`` (following a
call), ``keeping.py`` (a leg after the call) and ``leases.py`` (one process at a time).

Every method is synchronous and thread-safe; the asyncio side calls them from worker threads
(see :mod:`recording.persist` for the grouped commits of the hot path).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from sqlalchemy import Engine, case, create_engine, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..domain import (
    ACTIVE_STATES,
    CommitResult,
    DirectorySnapshot,
    LegChange,
    LegView,
    NewLeg,
    Pause,
    TagUpdate,
    UserRef,
    utcnow,
)
from ..errors import ConfigError, Invalid, StorageRefused, StorageUnavailable
from .hotpath import HotPath
from .keeping import Keeping
from .leases import Leases
from .parts import Parts
from .models import (
    API_KEY_VARIABLE,
    CallRecord,
    ExtensionAttachment,
    Group,
    RecordingLeg,
    RecordingPause,
    SystemVariable,
    User,
    UserGroup,
)

log = logging.getLogger("recording.store")

_legs = RecordingLeg.__table__
_calls = CallRecord.__table__
_pauses = RecordingPause.__table__
_variables = SystemVariable.__table__


def migrations_path() -> Path:
    """Where the Alembic scripts are: ``migrations/`` in a checkout, ``recording/migrations``
    once installed (setup.cfg maps one onto the other)."""
    import importlib

    return Path(importlib.import_module("recording.migrations").__file__).resolve().parent


def normalize_url(url: str) -> str:
    """PostgreSQL URLs without a driver mean psycopg 3 here (psycopg2 is not installed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs; one that does not parse with
    whatever stands between ``user:`` and ``@`` hidden (a typo must not echo the password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _LOOSE_PASSWORD.sub(r"\1***@", url)


# user:password@ in something that is not quite a URL; the password is everything to the last @.
_LOOSE_PASSWORD = re.compile(r"^([^:/]*://[^:/@]*:).*@")


# NOTE: keepalives and a TCP user timeout notice a database host that vanished from the network,
# which would otherwise hold a connection open for ever.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
    "keepalives_count": 3, "tcp_user_timeout": 15000,
}


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings the service relies on."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"RECORDING_DATABASE_URL {redact_url(url)!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("RECORDING_DATABASE_URL: an in-memory SQLite database cannot be shared; name a file")
        engine = create_engine(parsed, connect_args={"timeout": 10}, isolation_level=None)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError("RECORDING_DATABASE_URL: use postgresql+psycopg:// (psycopg 3)")
        return create_engine(
            parsed,
            pool_size=8,
            max_overflow=8,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args=POSTGRES_CONNECT_ARGS,
        )
    raise ConfigError(f"RECORDING_DATABASE_URL: {backend} is not supported (SQLite or PostgreSQL)")


def _sqlite_begin(conn: Connection) -> None:
    """Begins a SQLite transaction. A write takes the write lock up front: pysqlite's own BEGIN
    is deferred, so a transaction that reads before it writes could fail with SQLITE_BUSY when
    another process wrote meanwhile. A read (Store._read) does not: in WAL mode it sees a
    snapshot and neither waits for writers nor makes them wait."""
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


# The execution option that marks a connection as reading only (see _sqlite_begin).
READ_ONLY = "recording_read_only"


def _sqlite_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # NOTE: FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
    # STARTED reported to the dialplan must mean the leg is on disk.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class Store(Parts, Keeping, Leases):
    """The database of call records, recording legs, users and the apiKey hash."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._hot = HotPath(self.engine, self._batch)
        self._kept = threading.local()
        self._kept_lock = threading.Lock()
        self._kept_all: set[Connection] = set()

    def close(self) -> None:
        with self._kept_lock:
            kept, self._kept_all = self._kept_all, set()
        for conn in kept:
            try:
                conn.close()
            except SQLAlchemyError:
                pass
        self.engine.dispose()

    def _failure(self, exc: Exception) -> StorageUnavailable | StorageRefused:
        """The failure as the service sees it: the database is away (unavailable: try again
        later), or it refused this write (refused: trying again will not help)."""
        away = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
        if isinstance(exc, away) or getattr(exc, "connection_invalidated", False):
            return StorageUnavailable(f"database {redact_url(self.url)} unavailable: {first_line(exc)}",
                                      outage=_is_outage(exc))
        return StorageRefused(f"the database refused the write: {first_line(exc)}")

    # -- schema -------------------------------------------------------------------------

    def _alembic(self, connection: Connection):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(migrations_path()))
        config.attributes["connection"] = connection
        return config

    def schema_revision(self) -> str | None:
        """The migration the database is at; None for an empty database."""
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            raise self._failure(exc) from exc

    def head_revision(self) -> str:
        """The newest migration this version knows (from the scripts: no database needed)."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic(None)).get_current_head()

    def upgrade(self, revision: str = "head") -> None:
        """Applies the migrations up to ``revision``: the only way the schema is made."""
        from alembic import command

        with self.migrating() as conn:
            command.upgrade(self._alembic(conn), revision)

    def downgrade(self, revision: str) -> None:
        """Takes the migrations back down to ``revision``."""
        from alembic import command

        with self.migrating() as conn:
            command.downgrade(self._alembic(conn), revision)

    @contextmanager
    def migrating(self) -> Iterator[Connection]:
        """A transaction to migrate in. On SQLite, with foreign keys not enforced meanwhile:
        batch mode rebuilds a table by copying it and dropping the old one, and with
        enforcement on, dropping recording_legs deletes every row that refers to it by an ON
        DELETE CASCADE (each leg's pauses). The keys are checked before the commit instead.

        NOTE: SQLite ignores PRAGMA foreign_keys inside a transaction, so it is set on the
        driver's connection before SQLAlchemy begins one."""
        sqlite = self.dialect == "sqlite"
        try:
            with self.engine.connect() as conn:
                driver = conn.connection.dbapi_connection
                if sqlite:
                    driver.execute("PRAGMA foreign_keys=OFF")
                try:
                    with conn.begin():
                        yield conn
                        if sqlite:
                            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                            if broken:
                                raise StorageRefused(f"the migration would break {len(broken)} foreign keys, "
                                                     f"e.g. {tuple(broken[0])}: nothing was changed")
                finally:
                    if sqlite:
                        driver.execute("PRAGMA foreign_keys=ON")
        except SQLAlchemyError as exc:
            raise self._failure(exc) from exc

    # -- the apiKey and the directory -----------------------------------------------------

    def api_key_hash(self) -> str | None:
        with self._read() as conn:
            return conn.scalar(select(SystemVariable.value).where(SystemVariable.name == API_KEY_VARIABLE))

    def set_api_key_hash(self, value: str) -> None:
        stmt = self._insert(SystemVariable.__table__).values(name=API_KEY_VARIABLE, value=value, updated_at=utcnow())
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}
        )
        with self._write() as conn:
            conn.execute(stmt)

    def add_user(self, login: str, groups: Iterable[str] = ()) -> UserRef:
        """Creates the user if absent (logins match without regard to case) and adds it to
        ``groups``, creating those too. Returns the user with all its groups."""
        login = login.strip()
        if not login:
            raise Invalid("a login cannot be empty")
        with self._write() as conn:
            user_id = conn.scalar(select(User.id).where(func.lower(User.login) == login.lower()))
            if user_id is None:
                user_id = conn.scalar(
                    User.__table__.insert().values(login=login, created_at=utcnow()).returning(User.id)
                )
            for name in groups:
                group_id = conn.scalar(select(Group.id).where(Group.name == name))
                if group_id is None:
                    group_id = conn.scalar(Group.__table__.insert().values(name=name).returning(Group.id))
                stmt = self._insert(UserGroup.__table__).values(user_id=user_id, group_id=group_id)
                conn.execute(stmt.on_conflict_do_nothing())
            return self._user_by_id(conn, user_id)

    def attach_extension(self, extension: str, login: str) -> UserRef:
        """Attaches the user to the extension, replacing whoever was attached."""
        with self._write() as conn:
            user = self._user_by_login(conn, login)
            if user is None:
                raise Invalid(f"unknown user {login!r}")
            stmt = self._insert(ExtensionAttachment.__table__).values(
                extension=extension, user_id=user.id, attached_at=utcnow()
            )
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["extension"],
                set_={"user_id": stmt.excluded.user_id, "attached_at": stmt.excluded.attached_at},
            ))
            return user

    def detach_extension(self, extension: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute(
                ExtensionAttachment.__table__.delete().where(ExtensionAttachment.extension == extension)
            )
            return deleted.rowcount > 0

    def find_user(self, login: str) -> UserRef | None:
        with self._read() as conn:
            return self._user_by_login(conn, login)

    def directory(self) -> DirectorySnapshot:
        """The apiKey hash, every user with its groups, and the extension attachments, in one
        read."""
        with self._read() as conn:
            key = conn.scalar(select(SystemVariable.value).where(SystemVariable.name == API_KEY_VARIABLE))
            groups: dict[int, set[str]] = {}
            for user_id, name in conn.execute(
                select(UserGroup.user_id, Group.name).join(Group, Group.id == UserGroup.group_id)
            ):
                groups.setdefault(user_id, set()).add(name)
            users = {
                login.casefold(): UserRef(user_id, login, frozenset(groups.get(user_id, ())))
                for user_id, login in conn.execute(select(User.id, User.login))
            }
            attachments = dict(
                conn.execute(select(ExtensionAttachment.extension, ExtensionAttachment.user_id)).all()
            )
        return DirectorySnapshot(key, users, attachments)

    def _user_by_login(self, conn: Connection, login: str) -> UserRef | None:
        user_id = conn.scalar(select(User.id).where(func.lower(User.login) == login.strip().lower()))
        return None if user_id is None else self._user_by_id(conn, user_id)

    def _user_by_id(self, conn: Connection, user_id: int) -> UserRef:
        login = conn.scalar(select(User.login).where(User.id == user_id))
        groups = conn.scalars(
            select(Group.name).join(UserGroup, UserGroup.group_id == Group.id).where(UserGroup.user_id == user_id)
        )
        return UserRef(user_id, login, frozenset(groups))

    # -- the hot path: legs and tags --------------------------------------------------------

    def commit(self, writes: Sequence[NewLeg | TagUpdate], *, replay: bool = False) -> list:
        """Writes a batch in one transaction and returns one outcome per write, in order: a
        CommitResult, or the StorageRefused of a write the database would not take.

        If the batch is refused as a whole, each write is tried alone, so that one bad write
        cannot take the others down with it. ``replay``: the writes come from the journal, so
        their recordings exist whatever the database says now (see _resolve_conflict).
        Raises StorageUnavailable when the database is away.
        """
        try:
            if self._hot.takes(writes):
                return self._commit_hot(writes, replay)
            with self._batch() as conn:
                return self._commit(conn, writes, replay)
        except IntegrityError as exc:
            refused = StorageRefused(f"the database refused the write: {first_line(exc)}")
        except StorageRefused as exc:
            refused = exc
        if len(writes) == 1:
            raise refused
        log.warning("a batch of %d writes was refused (%s); writing them one by one", len(writes), refused)
        return [self._commit_alone(write, replay) for write in writes]

    def _commit_alone(self, write: NewLeg | TagUpdate, replay: bool):
        try:
            return self.commit([write], replay=replay)[0]
        except StorageRefused as exc:
            return exc

    def _commit_hot(self, writes: Sequence[NewLeg | TagUpdate], replay: bool) -> list:
        """The hot path's writes; a leg it could not insert (the call has an active leg
        already) is settled by the general path afterwards, in a transaction of its own."""
        results = self._hot.commit(writes)
        if None in results:
            with self._batch() as conn:
                for index, result in enumerate(results):
                    if result is None:
                        write = writes[index]
                        row = self.leg_row(conn, write)
                        results[index] = self._resolve_conflict(conn, write, row["call_record_id"], row, replay)
        return results

    def _commit(self, conn: Connection, writes: Sequence[NewLeg | TagUpdate | LegChange], replay: bool) -> list:
        call_ids = self._upsert_calls(conn, [w for w in writes if not isinstance(w, LegChange)])
        legs = [w for w in writes if isinstance(w, NewLeg)]
        owners = self._attached_owners(conn, [w.extension for w in legs if w.agent is None and not w.agent_login])
        agents = self._agents_by_login(conn, [w.agent_login for w in legs if w.agent is None and w.agent_login])
        rows = {leg.id: self._leg_row(leg, call_ids[leg.unique_id], owners, agents) for leg in legs}
        inserted: set[str] = set()
        if rows:
            stmt = self._insert(_legs).values(list(rows.values())).on_conflict_do_nothing().returning(_legs.c.id)
            inserted = set(conn.scalars(stmt))
        results = []
        for write in writes:
            if isinstance(write, LegChange):
                results.append(self._change(conn, write))
            elif isinstance(write, TagUpdate):
                results.append(CommitResult("TAGGED", write.unique_id))
            elif write.id in inserted:
                results.append(_result("STARTED", rows[write.id]))
            else:
                results.append(self._resolve_conflict(conn, write, call_ids[write.unique_id], rows[write.id], replay))
        return results

    def _upsert_calls(self, conn: Connection, writes: Sequence[NewLeg | TagUpdate]) -> dict[str, int]:
        if not writes:
            return {}
        tags: dict[str, str | None] = {}
        stamps: dict[str, datetime] = {}
        for write in writes:
            tags[write.unique_id] = write.tag or tags.get(write.unique_id)
            stamps[write.unique_id] = write.at if isinstance(write, TagUpdate) else write.started_at
        rows = [
            {"unique_id": uid, "external_reference": tags[uid], "created_at": stamps[uid], "updated_at": stamps[uid]}
            for uid in tags
        ]
        stmt = self._insert(_calls).values(rows)
        # NOTE: as the hot path's (hotpath._CALL_UPSERT): a start without a tag keeps the
        # reference a previous start wrote, and an older write does not replace a newer tag.
        newer = stmt.excluded.updated_at >= _calls.c.updated_at
        latest = func.greatest if self.dialect == "postgresql" else func.max
        stmt = stmt.on_conflict_do_update(
            index_elements=["unique_id"],
            set_={
                "external_reference": case(
                    (newer, func.coalesce(stmt.excluded.external_reference, _calls.c.external_reference)),
                    else_=func.coalesce(_calls.c.external_reference, stmt.excluded.external_reference),
                ),
                "updated_at": latest(stmt.excluded.updated_at, _calls.c.updated_at),
            },
        ).returning(_calls.c.id, _calls.c.unique_id)
        return {uid: call_id for call_id, uid in conn.execute(stmt)}

    def _attached_owners(self, conn: Connection, extensions: list[str]) -> dict[str, int]:
        if not extensions:
            return {}
        rows = conn.execute(
            select(ExtensionAttachment.extension, ExtensionAttachment.user_id).where(
                ExtensionAttachment.extension.in_(set(extensions))
            )
        )
        return dict(rows.all())

    def _agents_by_login(self, conn: Connection, logins: list[str]) -> dict[str, int]:
        if not logins:
            return {}
        folded = {login.lower() for login in logins}
        rows = conn.execute(select(func.lower(User.login), User.id).where(func.lower(User.login).in_(folded)))
        found = dict(rows.all())
        for login in folded - set(found):
            log.warning("agent %r was unknown when the database took its leg: DEFAULT ownership", login)
        return found

    @staticmethod
    def _leg_row(leg: NewLeg, call_id: int, owners: dict[str, int], agents: dict[str, int]) -> dict:
        if leg.agent is not None:
            owner_id, ownership = leg.agent.id, "AGENT"
        elif leg.agent_login and leg.agent_login.lower() in agents:
            owner_id, ownership = agents[leg.agent_login.lower()], "AGENT"
        elif leg.agent_login:
            owner_id, ownership = None, "DEFAULT"
        elif leg.extension in owners:
            owner_id, ownership = owners[leg.extension], "EXTENSION"
        else:
            owner_id, ownership = None, "DEFAULT"
        return {
            "id": leg.id,
            "call_record_id": call_id,
            "leg": leg.leg,
            "unique_id": leg.unique_id,
            "channel": leg.channel,
            "extension": leg.extension,
            "file": leg.file,
            "mixmonitor_id": leg.mixmonitor_id,
            "tag": leg.tag,
            "owner_id": owner_id,
            "ownership": ownership,
            "source": leg.source,
            "state": leg.state,
            "started_at": leg.started_at,
            "ended_at": leg.ended_at,
            "linkedid": leg.linkedid,
            "part": leg.part,
            "follows": leg.follows,
        }

    def leg_row(self, conn: Connection, leg: NewLeg) -> dict:
        """The row of a leg as the general path writes it (for a leg the hot path could not)."""
        call_id = conn.scalar(select(_calls.c.id).where(_calls.c.unique_id == leg.unique_id))
        owners = self._attached_owners(conn, [leg.extension] if leg.agent is None else [])
        return self._leg_row(leg, call_id, owners, {})

    def _resolve_conflict(self, conn: Connection, leg: NewLeg, call_id: int, row: dict, replay: bool) -> CommitResult:
        """Why a leg was not inserted: written before (a replay), another leg of the call is
        active, or its number is taken (a leg another process wrote): then it gets the next.

        A replayed leg is a recording that really ran, so it is written even when another leg
        of the call became active meanwhile: as ``lost``, since this service no longer tracks it.
        """
        for _ in range(5):
            same = conn.execute(select(_legs).where(_legs.c.id == leg.id)).mappings().first()
            if same is not None:
                return _result("APPLIED", same)
            active = conn.execute(
                select(_legs).where(_legs.c.unique_id == leg.unique_id, _legs.c.state.in_(ACTIVE_STATES))
            ).mappings().first()
            if active is not None and row["state"] in ACTIVE_STATES:
                if not replay:
                    return _result("ALREADY_RECORDING", active)
                log.warning("replayed leg %s of %s overlaps active leg %s: stored as lost", leg.id, leg.unique_id,
                            active["id"])
                row = row | {"state": "lost", "ended_at": row["ended_at"] or row["started_at"]}
            number = 1 + (conn.scalar(select(func.max(_legs.c.leg)).where(_legs.c.call_record_id == call_id)) or 0)
            row = row | {"leg": number}
            stmt = self._insert(_legs).values(row).on_conflict_do_nothing().returning(_legs.c.id)
            if conn.scalar(stmt) is not None:
                log.info("leg %s of %s renumbered %d -> %d (another process wrote leg %d)",
                         leg.id, leg.unique_id, leg.leg, number, leg.leg)
                return _result("STARTED", row)
        raise StorageUnavailable(f"could not find a free leg number for {leg.unique_id}")

    def _change(self, conn: Connection, change: LegChange) -> CommitResult:
        """Applies a pause, resume or end to a leg, as the database decides it: each step is an
        UPDATE whose condition is the state it changes from, so of two processes changing one
        leg at once exactly one does, and a change that no longer applies (a pause of an ended
        leg, a second end) says UNCHANGED.

        A change whose key was applied before (a journal replayed twice) says UNCHANGED too. A
        pause or resume older than the leg's last change is not applied over it (STALE: a
        journaled change replayed after a newer direct one); an end older than that is applied
        at the time of the last change, never before it (the channel did end).
        """
        leg = conn.execute(
            select(_legs.c.state, func.coalesce(_legs.c.changed_at, _legs.c.started_at).label("last"))
            .where(_legs.c.id == change.leg_id)
        ).first()
        if leg is None:
            return CommitResult("UNKNOWN_LEG", change.unique_id, leg_id=change.leg_id)
        unchanged = CommitResult("UNCHANGED", change.unique_id, leg_id=change.leg_id)
        if change.key and change.action in ("pause", "resume"):
            column = _pauses.c.pause_key if change.action == "pause" else _pauses.c.resume_key
            if conn.scalar(select(_pauses.c.id).where(column == change.key)) is not None:
                return unchanged
        if leg.state not in ACTIVE_STATES:
            return unchanged
        at = change.at
        if at < leg.last:
            if change.action != "end":
                log.warning("%s of leg %s at %s not applied: the leg changed later, at %s", change.action,
                            change.leg_id, at.isoformat(), leg.last.isoformat())
                return CommitResult("STALE", change.unique_id, leg_id=change.leg_id)
            at = leg.last
        if change.action == "pause":
            values, before = {"state": "paused"}, ("recording",)
        elif change.action == "resume":
            values, before = {"state": "recording"}, ("paused",)
        elif change.action == "end":
            values, before = {"state": change.state, "ended_at": at, "ended_by": change.by}, ACTIVE_STATES
        else:
            raise ValueError(f"unknown leg change {change.action!r}")
        if change.mixmonitor_id:
            values["mixmonitor_id"] = change.mixmonitor_id
        # NOTE: the pause row first, then the leg's state, in a savepoint taken back when the
        # state had changed meanwhile: what the state change sets off (the webhooks' triggers)
        # reads who paused or resumed, and how, from that row.
        open_pause = (_pauses.c.leg_id == change.leg_id) & _pauses.c.resumed_at.is_(None)
        with conn.begin_nested() as step:
            if change.action == "pause":
                conn.execute(_pauses.insert().values(
                    leg_id=change.leg_id, paused_at=at, method=change.method, paused_by=change.by,
                    pause_key=change.key,
                ))
            else:
                resumed = {"resumed_at": at, "resumed_by": change.by}
                if change.action == "resume":
                    resumed["resume_key"] = change.key
                conn.execute(update(_pauses).where(open_pause).values(**resumed))
            changed = conn.execute(
                update(_legs).where(_legs.c.id == change.leg_id, _legs.c.state.in_(before))
                .values(seen_at=at, changed_at=at, **values)
            ).rowcount
            if changed != 1:
                step.rollback()
                return unchanged
        return CommitResult("CHANGED", change.unique_id, leg_id=change.leg_id)

    def touch(self, leg_ids: Sequence[str], at: datetime) -> None:
        """Notes that these legs' channels were seen alive at ``at``."""
        if leg_ids:
            with self._write() as conn:
                conn.execute(update(_legs).where(_legs.c.id.in_(leg_ids)).values(seen_at=at))

    # -- reading legs -------------------------------------------------------------------------

    @staticmethod
    def _leg_query():
        return (
            select(_legs, _calls.c.external_reference, User.login.label("owner"))
            .join(_calls, _calls.c.id == _legs.c.call_record_id)
            .outerjoin(User, User.id == _legs.c.owner_id)
        )

    @staticmethod
    def _views(conn: Connection, rows) -> list[LegView]:
        rows = list(rows)
        pauses: dict[str, list[Pause]] = {}
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            query = select(_pauses).where(_pauses.c.leg_id.in_(chunk)).order_by(_pauses.c.paused_at)
            for pause in conn.execute(query):
                pauses.setdefault(pause.leg_id, []).append(Pause(pause.paused_at, pause.resumed_at, pause.method))
        return [
            LegView(
                id=row.id, unique_id=row.unique_id, leg=row.leg, call_record_id=row.call_record_id,
                tag=row.tag, external_reference=row.external_reference, owner=row.owner,
                ownership=row.ownership, file=row.file, channel=row.channel, extension=row.extension,
                mixmonitor_id=row.mixmonitor_id, source=row.source, state=row.state,
                start=row.started_at, end=row.ended_at, ended_by=row.ended_by,
                pauses=tuple(pauses.get(row.id, ())), owner_id=row.owner_id,
                file_size=row.file_size, file_sha256=row.file_sha256, hashed_at=row.hashed_at,
                held_at=row.held_at, held_by=row.held_by, hold_reason=row.hold_reason,
                purge_started_at=row.purge_started_at, purge_reason=row.purge_reason, purged_at=row.purged_at,
                state_before_purge=row.state_before_purge, linkedid=row.linkedid, part=row.part,
                follows=row.follows,
            )
            for row in rows
        ]

    def find_legs(self, *, tag: str | None = None, unique_id: str | None = None) -> list[LegView]:
        """Legs whose tag (or whose call's external reference) is ``tag`` and/or whose unique
        id is ``unique_id``, oldest first."""
        query = self._leg_query()
        if tag is not None:
            query = query.where(or_(_legs.c.tag == tag, _calls.c.external_reference == tag))
        if unique_id is not None:
            query = query.where(_legs.c.unique_id == unique_id)
        query = query.order_by(_legs.c.started_at, _legs.c.unique_id, _legs.c.leg)
        with self._read() as conn:
            return self._views(conn, conn.execute(query))

    def active_legs(self, unique_id: str | None = None) -> list[LegView]:
        """Legs still recording or paused (of one call, if ``unique_id`` is given)."""
        query = self._leg_query().where(_legs.c.state.in_(ACTIVE_STATES))
        if unique_id is not None:
            query = query.where(_legs.c.unique_id == unique_id)
        with self._read() as conn:
            return self._views(conn, conn.execute(query))

    def active_leg_keys(self, started_before: datetime | None = None) -> list[tuple[str, str, datetime]]:
        """``(leg id, unique id, start)`` of each leg still recording or paused, whichever
        process started it (of those started before ``started_before``, if given): what the
        sweeper compares with Asterisk's channels. Three columns of one table, not whole legs:
        it runs every minute over every call being recorded, in a thread that shares the GIL
        with the event loop."""
        query = select(_legs.c.id, _legs.c.unique_id, _legs.c.started_at).where(_legs.c.state.in_(ACTIVE_STATES))
        if started_before is not None:
            query = query.where(_legs.c.started_at < started_before)
        with self._read() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def last_seen(self, leg_ids: Sequence[str]) -> dict[str, datetime]:
        """When each leg's channel was last known alive (its start if never checked since)."""
        with self._read() as conn:
            rows = conn.execute(select(_legs.c.id, func.coalesce(_legs.c.seen_at, _legs.c.started_at))
                                .where(_legs.c.id.in_(leg_ids)))
            return dict(rows.all())

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction; connection failures come out as StorageUnavailable, integrity errors
        pass through so that callers can tell a conflict from an outage."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise self._failure(exc) from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A transaction that only reads: on SQLite it does not take the write lock."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{READ_ONLY: True})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise self._failure(exc) from exc

    @contextmanager
    def _batch(self, autocommit: bool = False) -> Iterator[Connection]:
        """A transaction on a connection the calling thread keeps between batches (the writer
        thread commits hundreds of batches a second; a pool checkout each time showed in
        profiles). A connection that failed is dropped, and the next batch opens a new one.

        ``autocommit``: a second kept connection on which each statement is its own
        transaction, for the hot path's single statement (no BEGIN and COMMIT round trips)."""
        slot = "auto" if autocommit else "conn"
        try:
            conn = getattr(self._kept, slot, None)
            now = time.monotonic()
            used, self._kept.__dict__[f"{slot}_used"] = self._kept.__dict__.get(f"{slot}_used"), now
            if (conn is not None and not (conn.closed or conn.invalidated) and used is not None
                    and now - used >= KEPT_IDLE and self._stale(conn, now - used)):
                self._drop_kept(slot)
                conn = None
            if conn is None or conn.closed or conn.invalidated:
                conn = self.engine.connect()
                if autocommit:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                setattr(self._kept, slot, conn)
                with self._kept_lock:
                    self._kept_all.add(conn)
            if autocommit:
                yield conn
            else:
                with conn.begin():
                    yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            self._drop_kept(slot)
            raise self._failure(exc) from exc

    def _stale(self, conn: Connection, idle: float) -> bool:
        """True when a kept connection that sat unused for ``idle`` seconds no longer answers
        (the server restarted meanwhile): checked before it is used again, so the first batch
        after a restart does not fail (and journal) for a connection nobody was using. One round
        trip, only after KEPT_IDLE seconds without a batch: a busy writer never pays it."""
        if self.dialect != "postgresql":
            return False
        try:
            conn.exec_driver_sql("SELECT 1")
            if not autocommitting(conn):
                conn.rollback()
            return False
        except SQLAlchemyError as exc:
            log.info("a kept database connection idle for %.0fs no longer answers (%s); opening a new one",
                     idle, first_line(exc))
            return True

    def _drop_kept(self, slot: str) -> None:
        conn = getattr(self._kept, slot, None)
        setattr(self._kept, slot, None)
        if conn is not None:
            with self._kept_lock:
                self._kept_all.discard(conn)
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:
                pass


def _result(status: str, row) -> CommitResult:
    return CommitResult(
        status, row["unique_id"], leg_id=row["id"], leg=row["leg"], file=row["file"],
        ownership=row["ownership"], owner_id=row["owner_id"],
    )


# What a PostgreSQL server says when it turns a connection away for now rather than for good:
# it is starting, stopping, recovering, or full.
_PASSING_REFUSALS = (
    "starting up", "shutting down", "in recovery mode", "not yet accepting connections",
    "too many clients", "remaining connection slots", "administrator command",
)


def _is_outage(exc: Exception) -> bool:
    """False when the server answered the connection with a FATAL error of its own (a wrong
    password, an unknown database or role): those do not pass by waiting.

    NOTE: psycopg gives no SQLSTATE for a failed connection, only the server's text; a server
    whose messages are translated (lc_messages) makes every refusal count as an outage, the
    side that keeps recording.
    """
    text = str(getattr(exc, "orig", exc))
    return "FATAL:" not in text or any(reason in text for reason in _PASSING_REFUSALS)


# Seconds a kept connection may sit unused before it is checked before its next batch.
KEPT_IDLE = 5.0


def autocommitting(conn: Connection) -> bool:
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"



def first_line(exc: BaseException) -> str:
    """The first line of a database error's message (the driver's own, under SQLAlchemy's)."""
    text = str(getattr(exc, "orig", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
