"""recording/start's writes on PostgreSQL, committed from the event loop itself.

The store's writer thread costs every write two thread hops: the session's loop hands the write
to the thread, and the thread hands the result back through the loop's self-pipe, each side
waiting to be scheduled and for the GIL (at one call at a time, 1.5 ms for a commit that takes
0.86 ms from the loop). Here the hot path's one statement (hotpath.PG_START), prepared once per
connection, goes out on libpq (psycopg's ``pq`` wrapper of it) from the loop, and its answer is
read when the socket is readable: no thread, no cursor, no per-query adaptation. When no
statement is in flight, a write goes out at once, inside :meth:`LoopWriter.enqueue`, so a
start's commit is under way before its ``EXEC MixMonitor`` is even sent (the commit is the
longer of the two); writes that arrive while a statement is in flight go out together in the
next one (group commit).

A write this path cannot finish goes to the store's general path on the writer thread, and its
outcome comes from there: a leg whose call already has an active leg, and each write of a batch
the database refused.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Callable, Sequence

import psycopg
from psycopg import pq
from sqlalchemy.engine import make_url

from ..domain import NewLeg, TagUpdate
from ..errors import StorageRefused, StorageUnavailable
from .batching import settle
from .hotpath import PG_START, postgres_parameters, results
from .store import POSTGRES_CONNECT_ARGS, first_line, redact_url

log = logging.getLogger("recording.persist")

Write = NewLeg | TagUpdate
STATEMENT = b"recording_start"
_PREPARE = f"PREPARE recording_start (text, text) AS {PG_START.replace('%s', '$1', 1).replace('%s', '$2', 1)}"
# SQLSTATE classes that say the server, not the write, is the trouble: connection exception,
# insufficient resources, operator intervention (shutting down), system error.
_AWAY_CLASSES = ("08", "53", "57", "58")


class LoopWriter:
    """Commits hot-path writes on one autocommit connection; ``fallback(write)`` queues a
    write on the store's writer thread and returns the future of its outcome. Everything runs
    on the event loop that calls :meth:`start`."""

    def __init__(self, url: str, fallback: Callable[[Write], asyncio.Future], *, max_batch: int = 256):
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._shown = redact_url(url)
        self._fallback = fallback
        self._max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[tuple[Write, asyncio.Future]] = []
        # The batch whose statement is out, and what its answer brought so far.
        self._flight: list[tuple[Write, asyncio.Future]] | None = None
        self._rows: list[tuple] = []
        self._error: pq.PGresult | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._connecting: asyncio.Task | None = None
        self._fd: int | None = None
        self._writing = False
        self._idle = asyncio.Event()
        self.batches = 0
        self.items = 0

    def enqueue(self, write: Write) -> asyncio.Future:
        """Queues ``write`` (sending it at once when nothing is in flight) and returns the
        future of its CommitResult (StorageUnavailable or StorageRefused set on it when it
        fails)."""
        future = self._loop.create_future()
        self._queue.append((write, future))
        self._idle.clear()
        if self._flight is None:
            self._send()
        return future

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Commits what is queued (for at most ``timeout`` seconds), then closes."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        self._fail_all(StorageUnavailable("the service stopped before this write was committed"))
        await self._close()

    # -- one batch at a time ------------------------------------------------------------

    def _send(self) -> None:
        """Sends the next batch when the connection is ready; connects first when not."""
        if self._flight is not None:
            return
        if not self._queue:
            self._idle.set()
            return
        if self._conn is None:
            if self._connecting is None:
                self._connecting = self._loop.create_task(self._connect(), name="database-writer-connect")
            return
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
        self._flight, self._rows, self._error = batch, [], None
        pgconn = self._conn.pgconn
        try:
            calls, legs = postgres_parameters([write for write, _ in batch])
            pgconn.send_query_prepared(STATEMENT, [calls.encode(), legs.encode()])
        except psycopg.Error:
            # NOTE: the connection died while idle (the server restarted): nothing went out, so
            # the batch waits for a new connection rather than failing. (Sent twice all the
            # same, a leg comes back APPLIED: its id is made before the write.)
            self._flight = None
            self._queue[:0] = batch
            self._drop()
            self._send()
            return
        try:
            self._flush()
        except psycopg.Error as exc:
            self._lost(exc)

    def _flush(self) -> None:
        """Sends what libpq still holds; the rest when the socket can take it."""
        pgconn = self._conn.pgconn
        if pgconn.flush() and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._writable)
        elif self._writing and not pgconn.flush():
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _writable(self) -> None:
        try:
            self._flush()
        except psycopg.Error as exc:
            self._lost(exc)

    def _readable(self) -> None:
        if self._conn is None:
            return
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
            if pgconn.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError("the server closed the connection")
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    self._answered()
                    return
                if result.status == pq.ExecStatus.TUPLES_OK:
                    self._rows += [
                        tuple(result.get_value(row, column) for column in range(result.nfields))
                        for row in range(result.ntuples)
                    ]
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    self._error = result
        except psycopg.Error as exc:
            self._lost(exc)

    def _answered(self) -> None:
        batch, self._flight = self._flight, None
        if batch is None:
            return  # something the server said while no statement was out (a notice)
        error, self._error = self._error, None
        if error is not None:
            self._refused(batch, error)
        else:
            self.batches += 1
            self.items += len(batch)
            rows = [(leg_id.decode(), int(leg), ownership.decode(), None if owner is None else int(owner))
                    for leg_id, leg, ownership, owner in self._rows]
            for (write, future), result in zip(batch, results([write for write, _ in batch], rows)):
                if result is None:
                    # Its call has an active leg: the store's general path tells which, or
                    # stores this leg as lost when it is a replay.
                    self._hand_over(write, future)
                else:
                    settle(future, result)
        self._send()

    def _refused(self, batch: Sequence[tuple[Write, asyncio.Future]], error: pq.PGresult) -> None:
        text = _message(error)
        state = (error.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
        if state[:2] in _AWAY_CLASSES or self._conn.pgconn.status == pq.ConnStatus.BAD:
            self._flight = batch
            self._lost(text)
            return
        refused = StorageRefused(f"the database refused the write: {text}")
        if len(batch) == 1:
            settle(batch[0][1], refused)
            return
        # One bad write must not take the others down: the store writes them one by one.
        log.warning("a batch of %d writes was refused (%s); writing them one by one", len(batch), refused)
        for write, future in batch:
            self._hand_over(write, future)

    def _hand_over(self, write: Write, future: asyncio.Future) -> None:
        if not future.done():
            self._fallback(write).add_done_callback(partial(_forward, future))

    # -- the connection -----------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **POSTGRES_CONNECT_ARGS)
            try:
                await conn.execute(_PREPARE)
            except BaseException:
                await conn.close()
                raise
        except (psycopg.Error, OSError) as exc:
            self._connecting = None
            self._fail_all(StorageUnavailable(f"database {self._shown} unavailable: {first_line(exc)}"))
            self._idle.set()
            return
        self._connecting = None
        self._conn = conn
        # NOTE: from here on this connection is driven through libpq alone; psycopg's own
        # methods are not called on it again until it is closed.
        self._fd = conn.pgconn.socket
        self._loop.add_reader(self._fd, self._readable)
        self._send()

    def _lost(self, reason: Exception | str) -> None:
        """The connection failed: the batch in flight fails as unavailable (its sessions
        journal it) and the next batch connects again. ``reason``: the error, or the server's
        message already cut to its first line."""
        failure = StorageUnavailable(f"database {self._shown} unavailable: {first_line(reason)}")
        batch, self._flight = self._flight, None
        for _, future in batch or ():
            settle(future, failure)
        self._drop()
        self._send()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._forget()
            self._loop.create_task(conn.close())

    def _forget(self) -> None:
        """Stops watching the connection's socket. By the number it had when registered: once
        libpq has closed a dead connection it no longer tells it, and a socket left registered
        would take the events of the next connection, which the kernel gives the same number."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._loop.remove_reader(fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(fd)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._forget()
            try:
                await conn.close()
            except (psycopg.Error, OSError):
                pass

    def _fail_all(self, failure: Exception) -> None:
        queued, self._queue = self._queue, []
        batch, self._flight = self._flight, None
        for _, future in [*(batch or ()), *queued]:
            settle(future, failure)


def _message(result: pq.PGresult) -> str:
    text = (result.error_message or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "no message"


def _forward(future: asyncio.Future, source: asyncio.Future) -> None:
    if source.cancelled():
        settle(future, StorageUnavailable("the write was cancelled"))
    elif source.exception() is not None:
        settle(future, source.exception())
    else:
        settle(future, source.result())
