"""Closes legs whose channel is gone without anyone saying so (no ``h`` extension, a Hangup
event missed while the manager connection was down, a process that died): a leg never stays
"recording" after its channel is gone."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from ..domain import ACTIVE_STATES, LegView, system_of
from ..errors import AsteriskUnavailable, StorageUnavailable
from ..asterisk.manager import Manager
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
        # NOTE: the legs are read from the database, not from this process's memory: the
        # processes sharing it (serve --workers, other hosts) sweep each other's legs too, so a
        # leg whose process died is closed by another.
        store = self.service.store
        asked = utcnow()
        if self.manager is not None and self.manager.connected:
            # NOTE: legs first, channels second: a leg's channel existed when the leg was
            # written, so if it is missing from a later list it is really gone. Only this
            # Asterisk's legs: another one sharing the database (its own systemname, so its
            # unique ids differ) has its channels elsewhere, and its own service sweeps them.
            legs = await self.service.read(store.active_leg_keys)
            if not legs:
                # No leg records, in any process: a channel list (every channel of the PBX,
                # one event each) could close nothing.
                return 0
            system = await self.manager.system_name()
            legs = [(leg_id, call, start) for leg_id, call, start in legs if system_of(call) == system]
            live = {channel.unique_id for channel in await self.manager.channels()}
            await self.service.read(store.touch, [leg_id for leg_id, call, _ in legs if call in live], asked)
            gone = [leg_id for leg_id, call, start in legs if call not in live and start < asked - GRACE]
        else:
            gone = [leg_id for leg_id, _, _ in await self.service.read(store.active_leg_keys, asked - self.max_age)]
        if not gone:
            return 0
        legs = await self.service.read(self._still_active, gone)
        seen = await self.service.read(store.last_seen, [leg.id for leg in legs])
        closed = 0
        for leg in legs:
            closed += await self.service.close_lost(leg, seen.get(leg.id, leg.start))
        if closed:
            log.warning("closed %d legs whose channel is gone as lost", closed)
        self.closed += closed
        return closed

    def _still_active(self, leg_ids: list[str]) -> list[LegView]:
        """The legs of ``leg_ids`` that are still active, read whole (in a worker thread)."""
        legs = (self.service.store.leg(leg_id) for leg_id in leg_ids)
        return [leg for leg in legs if leg is not None and leg.state in ACTIVE_STATES]
