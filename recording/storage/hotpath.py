"""The writes of recording/start, the hot path: one statement per batch on PostgreSQL, two
on SQLite.

SQLAlchemy compiles a multi-row INSERT anew for every batch size and processes every bound
value in Python; at a few thousand sessions a second that was a quarter of the service's CPU.
Here the SQL text is fixed (PostgreSQL: arrays through unnest) or built once per batch size
(SQLite), values go to the driver as they are, and the extension rule is resolved by a join
inside the same INSERT. On PostgreSQL the call records are upserted in a CTE of the legs'
INSERT, and that one statement runs in autocommit: a batch is one round trip, where BEGIN, two
INSERTs and COMMIT were four (each one psycopg's overhead and a wait). A leg this path could not
insert (its call has an active leg) comes back as None for the store's general path to settle.
The store runs it on its writer thread; on PostgreSQL, pgwriter.py runs the same statement from
the event loop.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Callable, ContextManager, Sequence

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ..domain import CommitResult, NewLeg, TagUpdate
from .models import RecordingLeg

# The store's transaction, as Store._batch gives it: (autocommit=False) -> a connection whose
# errors come out translated.
Batch = Callable[..., ContextManager[Connection]]

_LEG_COLUMNS = (
    "id, call_record_id, leg, unique_id, channel, extension, file, mixmonitor_id, tag, owner_id, ownership, "
    "source, state, started_at, ended_at, linkedid"
)
# NOTE: a start without a tag keeps the reference an earlier start wrote, and a write older
# than the call record's last one (a journal replayed after a newer direct write) does not
# replace its tag. The row is updated either way, so that RETURNING gives it to the legs.
_CALL_UPSERT = (
    "ON CONFLICT (unique_id) DO UPDATE SET "
    "external_reference = CASE WHEN excluded.updated_at >= call_records.updated_at "
    "THEN COALESCE(excluded.external_reference, call_records.external_reference) "
    "ELSE COALESCE(call_records.external_reference, excluded.external_reference) END, "
    "updated_at = {latest}(excluded.updated_at, call_records.updated_at)"
)
_OWNERSHIP = (
    "CASE WHEN {agent} IS NOT NULL THEN 'AGENT' WHEN a.user_id IS NOT NULL THEN 'EXTENSION' ELSE 'DEFAULT' END"
)


# NOTE: on PostgreSQL the rows go as two JSON texts (one per table), made by the json module's
# C encoder: one short SQL text for every batch size, which psycopg parses once and the server
# prepares once. Arrays through unnest() did the same with one parameter per column, but
# psycopg dumps arrays element by element in Python: 50 us of the writer's CPU per row, against
# 20 us with JSON (measured, batches of 6 to 20 rows).
PG_START = (
    "WITH c AS ("
    "INSERT INTO call_records (unique_id, external_reference, created_at, updated_at) "
    "SELECT r->>0, r->>1, (r->>2)::timestamptz, (r->>3)::timestamptz FROM json_array_elements(%s::json) r "
    + _CALL_UPSERT.format(latest="GREATEST") + " "
    # NOTE: the FK of recording_legs is checked at the end of the statement, so a leg may point
    # at the call record this CTE inserts; RETURNING of ON CONFLICT DO UPDATE gives the rows
    # updated as well as those inserted, so every leg finds its call.
    "RETURNING id, unique_id) "
    f"INSERT INTO recording_legs ({_LEG_COLUMNS}) "
    "SELECT v.id, c.id, v.leg, v.unique_id, v.channel, v.extension, v.file, v.mixmonitor_id, "
    "v.tag, COALESCE(v.agent_id, a.user_id), " + _OWNERSHIP.format(agent="v.agent_id") + ", "
    "v.source, v.state, v.started_at, v.ended_at, v.linkedid "
    "FROM (SELECT r->>0 AS id, (r->>1)::integer AS leg, r->>2 AS unique_id, r->>3 AS channel, "
    "r->>4 AS extension, r->>5 AS file, r->>6 AS mixmonitor_id, r->>7 AS tag, (r->>8)::integer AS agent_id, "
    "r->>9 AS source, r->>10 AS state, (r->>11)::timestamptz AS started_at, (r->>12)::timestamptz AS ended_at, "
    "r->>13 AS linkedid "
    "FROM json_array_elements(%s::json) r) v "
    "JOIN c ON c.unique_id = v.unique_id "
    "LEFT JOIN extension_attachments a ON v.agent_id IS NULL AND a.extension = v.extension "
    "ON CONFLICT DO NOTHING RETURNING id, leg, ownership, owner_id"
)
_to_json = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


def _stamp(value: datetime) -> str:
    """A time as PostgreSQL reads a timestamptz; a naive one is UTC, as the ORM stores it."""
    return value.isoformat() if value.tzinfo is not None else value.isoformat() + "+00:00"


@lru_cache(maxsize=512)
def _sqlite_calls(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO call_records (unique_id, external_reference, created_at, updated_at) VALUES {values} "
        + _CALL_UPSERT.format(latest="MAX")
    )


@lru_cache(maxsize=512)
def _sqlite_legs(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    # NOTE: SQLite names VALUES columns column1..columnN, and needs a WHERE before ON CONFLICT
    # in INSERT ... SELECT to tell the upsert clause from a join's ON.
    return (
        f"INSERT INTO recording_legs ({_LEG_COLUMNS}) "
        "SELECT v.column1, c.id, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, "
        "COALESCE(v.column9, a.user_id), " + _OWNERSHIP.format(agent="v.column9") + ", "
        "v.column10, v.column11, v.column12, v.column13, v.column14 "
        f"FROM (VALUES {values}) AS v "
        "JOIN call_records c ON c.unique_id = v.column3 "
        "LEFT JOIN extension_attachments a ON v.column9 IS NULL AND a.extension = v.column5 "
        "WHERE true ON CONFLICT DO NOTHING RETURNING id, leg, ownership, owner_id"
    )


def takes(write) -> bool:
    """True for a write this path can do: a tag update, or a leg a request started without an
    agent login still to resolve (a followed call's next leg is Store.take_over's)."""
    return type(write) is TagUpdate or (type(write) is NewLeg and write.agent_login is None and write.follows is None)


class HotPath:
    def __init__(self, engine: Engine, batch: Batch):
        self._batch = batch
        self._dialect = engine.dialect.name
        # The same conversion the ORM applies (UTC, and SQLite's text format), done once here.
        processor = RecordingLeg.__table__.c.started_at.type._cached_bind_processor(engine.dialect)
        self._time = processor or (lambda value: value)
        self._dbapi_error = engine.dialect.loaded_dbapi.Error

    def _run(self, conn: Connection, sql: str, params: tuple) -> list:
        """Executes on the driver's own cursor, in the connection's transaction: no result
        metadata is built for these two statements. Driver errors come out as SQLAlchemy's."""
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        except self._dbapi_error as exc:
            raise DBAPIError.instance(sql, params, exc, self._dbapi_error) from exc
        finally:
            cursor.close()

    @staticmethod
    def takes(writes: Sequence) -> bool:
        """True when every write is one this path can do (see :func:`takes`)."""
        return all(map(takes, writes))

    def commit(self, writes: Sequence[NewLeg | TagUpdate]) -> list:
        """Writes the batch, durably, and returns a CommitResult per write, in order, or None
        for a leg that was not inserted. Raises as Store._batch does."""
        if self._dialect == "postgresql":
            with self._batch(autocommit=True) as conn:
                rows = self._run(conn, PG_START, postgres_parameters(writes))
            return results(writes, rows)
        call_rows, leg_rows = _rows(writes, self._time)
        with self._batch() as conn:
            self._run(conn, _sqlite_calls(len(call_rows)), tuple(v for row in call_rows for v in row))
            rows = self._run(conn, _sqlite_legs(len(leg_rows)), tuple(v for row in leg_rows for v in row)) if leg_rows else []
        return results(writes, rows)


def postgres_parameters(writes: Sequence[NewLeg | TagUpdate]) -> tuple[str, str]:
    """The two parameters of :data:`PG_START` for a batch: its call records and its legs as
    JSON texts."""
    call_rows, leg_rows = _rows(writes, _stamp)
    return _to_json(call_rows), _to_json(leg_rows)


def _rows(writes: Sequence[NewLeg | TagUpdate], time) -> tuple[list[tuple], list[tuple]]:
    """The batch as rows: one call record per unique id (its newest tag, first and last times)
    and one row per leg, times converted by ``time`` (once per write: a leg's start is also its
    call record's first and last time)."""
    calls: dict[str, list] = {}
    leg_rows = []
    for write in writes:
        if type(write) is TagUpdate:
            at = time(write.at)
        else:
            at = time(write.started_at)
            leg_rows.append((
                write.id, write.leg, write.unique_id, write.channel, write.extension, write.file, write.mixmonitor_id,
                write.tag, write.agent.id if write.agent is not None else None, write.source, write.state, at,
                time(write.ended_at) if write.ended_at is not None else None, write.linkedid,
            ))
        entry = calls.get(write.unique_id)
        if entry is None:
            calls[write.unique_id] = [write.unique_id, write.tag, at, at]
        else:
            entry[1] = write.tag or entry[1]
            entry[3] = at
    return [tuple(entry) for entry in calls.values()], leg_rows


def results(writes: Sequence[NewLeg | TagUpdate], rows: Sequence[tuple]) -> list[CommitResult | None]:
    """A CommitResult per write from the rows the legs' INSERT returned (``id, leg, ownership,
    owner_id``); None for a leg that was not inserted (its call has an active leg)."""
    inserted = {row[0]: row for row in rows}
    found: list[CommitResult | None] = []
    for write in writes:
        if type(write) is TagUpdate:
            found.append(CommitResult("TAGGED", write.unique_id))
            continue
        row = inserted.get(write.id)
        found.append(None if row is None else CommitResult(
            "STARTED", write.unique_id, leg_id=write.id, leg=row[1], file=write.file,
            ownership=row[2], owner_id=row[3],
        ))
    return found
