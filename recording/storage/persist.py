"""Where a write goes: to the database within a time budget, else to the journal, and back to
the database by replay as soon as it answers. The audio cannot be made again later, so a
recording never waits on, or fails for, a database that is away.

Writes keep their order: once anything is journaled, later writes are journaled too, until the
replay has emptied the journal; only then do sessions write to the database directly again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

from .batching import BatchThread
from ..domain import CommitResult, LegChange, NewLeg, TagUpdate
from ..errors import StorageRefused, StorageUnavailable
from .journal import Journal, JournalError
from .hotpath import takes
from .pgwriter import LoopWriter
from .store import Store

log = logging.getLogger("recording.persist")

REPLAY_BATCH = 200
# The budget is kept to within a fifth of itself, checked at least this often apart (seconds).
BUDGET_TICK_MIN = 0.01
RETRY_MIN, RETRY_MAX = 0.5, 5.0


@dataclass(slots=True)
class Pending:
    """A write begun by :meth:`Persister.begin`: its database commit under way (``future``),
    or None when it goes to the journal, which :meth:`Persister.finish` does."""

    write: NewLeg | TagUpdate | LegChange
    future: asyncio.Future | None
    started: float = 0.0


@dataclass(slots=True)
class Persisted:
    """``result`` of the database write, or None when the write was ``deferred`` to the
    journal (then it is durable on local disk and will be replayed)."""

    result: CommitResult | None
    deferred: bool = False


def _storage_failure(exc: Exception) -> BaseException:
    if isinstance(exc, (StorageUnavailable, StorageRefused)):
        return exc
    log.error("unexpected failure writing to storage", exc_info=exc)
    return StorageUnavailable(f"the write failed unexpectedly: {exc}")


class Persister:
    def __init__(
        self, store: Store, journal: Journal, *, budget: float, executor: Executor | None = None,
        on_commit=None,
    ):
        self.store = store
        self.journal = journal
        self.budget = budget
        # Told the seconds each direct database write took (for the metrics).
        self.on_commit = on_commit
        # Entries in the journal waiting for replay, counted here rather than read from disk.
        self.backlog = 0
        self.journal_broken = False
        self._executor = executor
        self._commits = BatchThread("recording-writer", store.commit, _storage_failure)
        # On PostgreSQL recording/start's writes are committed from the event loop (no thread
        # hop); everything else, and what that path hands back, on the writer thread.
        self._loop_writer = LoopWriter(store.url, self._commits.enqueue) if store.dialect == "postgresql" else None
        self._appends = BatchThread("recording-journal", journal.append, _storage_failure)
        self._journaling = False
        self._database_away = False
        self._appending = 0
        self._wake: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # The database writes waiting for their commit, with their deadlines, oldest first.
        self._in_flight: deque[tuple[float, asyncio.Future]] = deque()
        self._budget_task: asyncio.Task | None = None
        self.journal_peak = 0

    @property
    def database_away(self) -> bool:
        """True from the first failed write until a replay succeeds."""
        return self._database_away

    @property
    def journaling(self) -> bool:
        """True while writes go to the journal (the database is away, slow, or the journal
        still holds writes that must reach the database first)."""
        return self._journaling

    async def start(self, *, hold: bool = False) -> None:
        """Opens the journal and starts the writers. ``hold``: no replay until :meth:`release`
        (the database's schema must be checked first)."""
        self.journal.open()
        self._commits.start()
        if self._loop_writer is not None:
            await self._loop_writer.start()
        self._appends.start()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        if not hold:
            self._ready.set()
        pending = await self._run(self.journal.pending)
        self.backlog = pending
        if pending:
            log.warning("%d journaled writes from an earlier run wait for the database", pending)
            self._journaling = True
            self.journal_peak = pending
            self._wake.set()
        self._task = asyncio.create_task(self._replayer(), name="journal-replay")
        self._budget_task = asyncio.create_task(self._keep_budget(), name="database-budget")

    def assume_away(self) -> None:
        """The database could not be reached at the start: every write goes to the journal
        until it answers, :meth:`release` is called and the replay has emptied the journal."""
        self._database_away = True
        self._journaling = True

    def release(self) -> None:
        """Lets the replay begin: the database answers and its schema is current."""
        self._ready.set()
        self._wake.set()

    async def stop(self) -> None:
        """Ends replay, commits what is queued, and closes the journal with everything in it
        fsynced (it was, entry by entry, before any session reported it stored)."""
        for task in (self._task, self._budget_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._loop_writer is not None:
            await self._loop_writer.stop()
        await self._run(self._commits.stop)
        await self._run(self._appends.stop)
        self.journal.close()

    async def write(self, write: NewLeg | TagUpdate | LegChange) -> Persisted:
        """Stores ``write`` durably. Raises StorageRefused when the database rejects this
        write itself (retrying cannot help), and StorageUnavailable when neither the database
        nor the journal can take it."""
        return await self.finish(self.begin(write))

    def begin(self, write: NewLeg | TagUpdate | LegChange) -> Pending:
        """Starts storing ``write`` now, so that its commit runs while the caller does other
        work (a start talks to Asterisk meanwhile); :meth:`finish` gives the outcome, and
        must be awaited."""
        if self._journaling:
            return Pending(write, None)
        started = time.monotonic()
        writer = self._loop_writer
        future = writer.enqueue(write) if writer is not None and takes(write) else self._commits.enqueue(write)
        # NOTE: a commit past the budget still completes (the writer does not look at a future
        # already settled), and its journaled twin is then replayed as APPLIED.
        self._in_flight.append((started + self.budget, future))
        return Pending(write, future, started)

    async def finish(self, pending: Pending) -> Persisted:
        """The outcome of a write begun: its database result, or, when the database is away or
        slower than the budget from :meth:`begin` on, the write journaled (deferred). Raises as
        :meth:`write` does."""
        if pending.future is None and not self._journaling:
            # NOTE: begun while journaling, but the replay has emptied the journal since and
            # writes go to the database again: appended now, it would sit behind that switch
            # with nothing to replay it (and later writes would overtake it).
            pending = self.begin(pending.write)
        if pending.future is not None:
            try:
                result = await pending.future
                if self.on_commit is not None:
                    self.on_commit(time.monotonic() - pending.started)
                return Persisted(result)
            except StorageUnavailable as exc:
                self._went_away(exc)
            except TimeoutError:
                log.info("database slower than %gs: journaling until the journal is replayed", self.budget)
            self._journaling = True
        self._appending += 1
        try:
            await self._appends.submit(pending.write)
        except StorageUnavailable:
            self.journal_broken = True
            raise
        finally:
            self._appending -= 1
        self.journal_broken = False
        self.backlog += 1
        self._wake.set()
        return Persisted(None, deferred=True)

    async def _keep_budget(self) -> None:
        """Fails with TimeoutError the writes whose commit has taken longer than the budget.
        One task ticking for all of them: an asyncio timeout per write (a timer handle made,
        pushed on the heap and cancelled for every session) showed in profiles."""
        in_flight = self._in_flight
        while True:
            await asyncio.sleep(max(BUDGET_TICK_MIN, self.budget / 5))
            now = time.monotonic()
            while in_flight and (in_flight[0][1].done() or in_flight[0][0] <= now):
                _, future = in_flight.popleft()
                if not future.done():
                    future.set_exception(TimeoutError())

    def _went_away(self, exc: Exception) -> None:
        if not self._database_away:
            self._database_away = True
            log.warning("database unavailable, journaling to %s: %s", self.journal.directory, exc)

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _replayer(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._wake.wait()
            await self._ready.wait()
            self._wake.clear()
            while self._journaling:
                try:
                    replayed = await self._run(self._replay_sealed)
                except JournalError as exc:
                    # NOTE: the journal's own disk, not the database: said as it is, and tried
                    # again (a disk made writable again, a file put back).
                    log.error("journal replay stopped by the journal's own files, not the database: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                except StorageUnavailable as exc:
                    self._went_away(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_MIN
                self.backlog = max(0, self.backlog - replayed)
                if self._database_away:
                    self._database_away = False
                    log.warning("database available again; replayed %d journaled writes", replayed)
                # NOTE: decided on the event loop, where sessions decide to append: with no
                # append in flight and no open file, nothing can slip behind the switch.
                if self._appending == 0 and not self.journal.has_open_segment():
                    self._journaling = False
                    self.backlog = 0
                    log.info("journal empty: writing to the database directly again")
                else:
                    await asyncio.sleep(0.05)

    def _replay_sealed(self) -> int:
        replayed = 0
        segments = self.journal.seal()
        if segments:
            self.journal_peak = max(self.journal_peak, self.journal.pending())
        for segment in segments:
            writes = self.journal.read(segment)
            for start in range(0, len(writes), REPLAY_BATCH):
                chunk = writes[start:start + REPLAY_BATCH]
                for write, outcome in zip(chunk, self.store.commit(chunk, replay=True)):
                    if isinstance(outcome, StorageUnavailable):
                        raise outcome
                    if isinstance(outcome, StorageRefused):
                        # Retrying cannot help and must not block the writes behind it.
                        self.journal.reject(write, str(outcome))
            self.journal.remove(segment)
            replayed += len(writes)
        return replayed
