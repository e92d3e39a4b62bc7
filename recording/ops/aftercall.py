"""What `serve` does with recordings after the call, in the background: it stores the size and
SHA-256 of each complete file (every RECORDING_HASH_INTERVAL) and, when RECORDING_RETENTION is
set, purges once a day. Among the processes sharing one database (``serve --workers``, several
hosts) one at a time does each: the hashing under a lease, the daily purge by taking the day's
turn (see :meth:`Store.lease` and :meth:`Store.take_turn`).

The work runs in a thread of its own, so a long purge or a large file never holds up the
database writes of the calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from ..domain import utcnow
from ..errors import StorageUnavailable
from ..storage.audio import MonitorDirectory
from ..storage.integrity import Hasher
from ..storage.retention import Purger, lease_owner
from ..storage.store import Store
from .config import Settings

log = logging.getLogger("recording.aftercall")

PURGE_EVERY = timedelta(days=1)
# Seconds between asking whether the day's purge is due (a process that took the turn and died
# leaves the day to the next one).
PURGE_CHECK = 3600.0


class AfterCall:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.owner = lease_owner()
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-aftercall")
        self._hasher = Hasher(store, quiet=settings.file_quiet, stop=self._stopping)
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._said: str | None = None
        self.turns_asked = 0  # times this process asked whether the day's purge was its turn
        self.purges = 0  # daily purges this process ran
        self.rounds = 0  # rounds of the background loop done
        self.recovered = False  # whether the purges found half done at start-up were finished

    def monitor(self) -> MonitorDirectory:
        return MonitorDirectory.of(self.settings)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="after-call")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # A purge or a hash in flight ends at its next leg (each leg's steps are crash-safe).
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    def wake(self) -> None:
        self._wake.set()

    async def _call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        # Purges left half done are finished first; again each round until that could be done
        # (the service may start while the database is away, or before the files can be seen).
        next_purge = 0.0
        while not self._stopping.is_set():
            if not self.recovered:
                self.recovered = await self._guarded(self._finish_interrupted)
            await self._guarded(self._hash)
            if self.settings.retention and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_CHECK
                await self._guarded(self._daily_purge)
            self.rounds += 1
            try:
                async with asyncio.timeout(self.settings.hash_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _guarded(self, work) -> bool:
        """Runs ``work`` in the after-call thread; False (and a log line) if it did not finish."""
        try:
            return await self._call(work) is not False
        except StorageUnavailable as exc:
            log.debug("after-call work skipped: %s", exc)
        except Exception:
            log.exception("after-call work failed")
        return False

    def _visible(self, monitor: MonitorDirectory) -> bool:
        """Whether the files can be seen; says so in the log when that changes."""
        problem = monitor.problem()
        if problem != self._said:
            # A warning when a retention cannot be kept; else this host is simply not the one
            # that sees the files (an HTTP-only host), which is worth one line, not an alarm.
            level = logging.WARNING if self.settings.retention else logging.INFO
            if problem:
                log.log(level, "recordings' files are not visible from this host, so none are hashed or purged: %s",
                        problem)
            elif self._said is not None:
                log.log(level, "recordings' files are visible again in %s", monitor.local_root)
            self._said = problem
        return problem is None

    def _finish_interrupted(self) -> bool:
        monitor = self.monitor()
        if not self._visible(monitor):
            return False
        report = Purger(self.store, monitor, stop=self._stopping).finish_interrupted()
        if report.finished:
            log.warning("finished %d purges that had been interrupted", report.finished)
        return report.problem is None and not self._stopping.is_set()

    def _hash(self) -> None:
        monitor = self.monitor()
        if not self._visible(monitor):
            return
        ttl = timedelta(seconds=max(3 * self.settings.hash_interval, 60.0))
        if self.store.lease("integrity.hasher", self.owner, ttl, utcnow()):
            self._hasher.quiet = self.settings.file_quiet
            self._hasher.run(monitor)

    def _daily_purge(self) -> None:
        period = self.settings.retention_period
        monitor = self.monitor()
        if period is None or not self._visible(monitor):
            return
        self.turns_asked += 1
        if not self.store.take_turn("retention.purge", PURGE_EVERY, utcnow()):
            log.debug("the day's purge was done by another process (or this one) less than a day ago")
            return
        reason = f"older than {self.settings.retention} (RECORDING_RETENTION)"
        report = Purger(self.store, monitor, stop=self._stopping).run(period, reason)
        self.purges += 1
        level = logging.INFO if report.ok else logging.WARNING
        log.log(level, "daily purge: %s", report.summary())
        for leg, why in report.failed:
            log.warning("leg %s was not purged: %s", leg.id, why)
