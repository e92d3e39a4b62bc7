"""Closes legs whose channel is gone without anyone saying so (no ``h`` extension, a Hangup
event missed while the manager connection was down, a process that died): a leg never stays
"recording" after its channel is gone."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from ..errors import AsteriskUnavailable, StorageUnavailable
from ..asterisk.manager import Manager
from ..domain import system_of
from ..service import RecordingService, utcnow

log = logging.getLogger("recording.sweeper")

# A leg younger than this is left alone, in case another process's clock runs ahead of ours.
GRACE = timedelta(seconds=10)


class Sweeper:
    def __init__(self, service: RecordingService, manager: Manager | None, *, interval: float, max_age: float):
        self.service = service
        self.manager = manager
        self.interval = interval
        self.max_age = timedelta(seconds=max_age)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._sweeping = asyncio.Lock()
        self.closed = 0
        self.sweeps = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leg-sweeper")

    def wake(self) -> None:
        """Sweeps now (the manager just connected: events may have been missed)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except (StorageUnavailable, AsteriskUnavailable) as exc:
                log.debug("sweep skipped: %s", exc)
            except Exception:
                log.exception("sweeping lost legs failed")
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def sweep(self) -> int:
        """Closes the active legs whose channel Asterisk no longer has, as ``lost`` at the
        last time they were seen alive; without the manager, the legs older than the maximum
        age. Returns how many were closed (sweeps never overlap)."""
        async with self._sweeping:
            try:
                return await self._sweep()
            finally:
                self.sweeps += 1

    async def _sweep(self) -> int:
        store = self.service.store
        asked = utcnow()
        if self.manager is not None and self.manager.connected:
            # NOTE: legs first, channels second: a leg's channel existed when the leg was
            # written, so if it is missing from a later list it is really gone. Only this
            # Asterisk's legs: another one sharing the database (its own systemname, so its
            # unique ids differ) has its channels elsewhere, and its own service sweeps them.
            system = await self.manager.system_name()
            legs = [leg for leg in await self.service.read(store.active_legs) if system_of(leg.unique_id) == system]
            live = {channel.unique_id for channel in await self.manager.channels()}
            await self.service.read(store.touch, [leg.id for leg in legs if leg.unique_id in live], asked)
            gone = [leg for leg in legs if leg.unique_id not in live and leg.start < asked - GRACE]
        else:
            legs = await self.service.read(store.active_legs)
            gone = [leg for leg in legs if leg.start < asked - self.max_age]
        if not gone:
            return 0
        seen = await self.service.read(store.last_seen, [leg.id for leg in gone])
        closed = 0
        for leg in gone:
            closed += await self.service.close_lost(leg, seen.get(leg.id, leg.start))
        if closed:
            log.warning("closed %d legs whose channel is gone as lost", closed)
        self.closed += closed
        return closed
