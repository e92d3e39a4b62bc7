"""recording/start's writes on PostgreSQL, committed from the event loop itself.

The store's writer thread costs every write two thread hops: the session's loop hands the write
to the thread, and the thread hands the result back through the loop's self-pipe, each side
waiting to be scheduled and for the GIL. At one call at a time that was 0.6 ms of a 1.5 ms
commit (measured on uvloop, the same statement either way). Here the hot path's one statement
(hotpath.PG_START) goes out on psycopg's AsyncConnection from the loop, so a start's commit is
one round trip to the database, under way while the session talks to Asterisk.

Group commit as the thread does it: writes that arrive while a statement is in flight go out
together in the next one. A write this path cannot finish (its call already has an active leg,
or a batch the database refused) goes to the store's general path on the writer thread, and its
outcome comes from there.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Callable, Sequence

import psycopg
from sqlalchemy.engine import make_url

from ..domain import CommitResult, NewLeg, TagUpdate
from ..errors import StorageRefused, StorageUnavailable
from .hotpath import PG_START, postgres_parameters, results
from .batching import settle
from .store import POSTGRES_CONNECT_ARGS, first_line, redact_url

log = logging.getLogger("recording.persist")

Write = NewLeg | TagUpdate


def takes(write) -> bool:
    """True for a write this path can do (as hotpath.HotPath.takes, for one write)."""
    return type(write) is TagUpdate or (type(write) is NewLeg and write.agent_login is None)


class LoopWriter:
    """Commits hot-path writes on one autocommit AsyncConnection; ``fallback(write)`` queues a
    write on the store's writer thread and returns the future of its outcome."""

    def __init__(self, url: str, fallback: Callable[[Write], asyncio.Future], *, max_batch: int = 256):
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._shown = redact_url(url)
        self._fallback = fallback
        self._max_batch = max_batch
        self._queue: list[tuple[Write, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.batches = 0
        self.items = 0

    def enqueue(self, write: Write) -> asyncio.Future:
        """Queues ``write`` and returns the future of its CommitResult (StorageUnavailable or
        StorageRefused set on it when it fails)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        self._wake.set()
        return future

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="database-writer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Commits what is queued (for at most ``timeout`` seconds), then closes."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._queue:
            if not future.done():
                future.set_exception(StorageUnavailable("the service stopped before this write was committed"))
        self._queue.clear()
        await self._close()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                await self._commit(batch)
            if self._stopping:
                return

    async def _commit(self, batch: Sequence[tuple[Write, asyncio.Future]]) -> None:
        writes = [write for write, _ in batch]
        conn = self._conn
        try:
            conn = conn or await self._connect()
            cursor = await conn.execute(PG_START, postgres_parameters(writes))
            rows = await cursor.fetchall()
        except (psycopg.Error, OSError) as exc:
            # NOTE: a server that goes away mid-statement does not always say so with an
            # OperationalError; a connection left broken or closed is the sign that counts.
            away = not isinstance(exc, psycopg.Error) or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
            if away or conn is None or conn.broken or conn.closed:
                await self._close()
                failure = StorageUnavailable(f"database {self._shown} unavailable: {first_line(exc)}")
                for _, future in batch:
                    settle(future, failure)
                return
            refused = StorageRefused(f"the database refused the write: {first_line(exc)}")
            if len(batch) == 1:
                settle(batch[0][1], refused)
                return
            # One bad write must not take the others down: the store writes them one by one.
            log.warning("a batch of %d writes was refused (%s); writing them one by one", len(batch), refused)
            for write, future in batch:
                self._hand_over(write, future)
            return
        self.batches += 1
        self.items += len(batch)
        for (write, future), result in zip(batch, results(writes, rows)):
            if result is None:
                # Its call has an active leg: the store's general path tells which, or stores
                # this leg as lost when it is a replay.
                self._hand_over(write, future)
            else:
                settle(future, result)

    def _hand_over(self, write: Write, future: asyncio.Future) -> None:
        if not future.done():
            self._fallback(write).add_done_callback(partial(_forward, future))

    async def _connect(self) -> psycopg.AsyncConnection:
        self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **POSTGRES_CONNECT_ARGS)
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except (psycopg.Error, OSError):
                pass


def _forward(future: asyncio.Future, source: asyncio.Future) -> None:
    if source.cancelled():
        settle(future, StorageUnavailable("the write was cancelled"))
    elif source.exception() is not None:
        settle(future, source.exception())
    else:
        settle(future, source.result())
