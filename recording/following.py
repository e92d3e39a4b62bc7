"""The recording follows the call: one leg per part of a call (each agent's talk with the caller,
and the spans with no agent between), through transfers, queues, Redirect, pickup and Local
channel optimisation (README, "Transfers and queues"; docs/transfers.md).

The call tracker (``recording/calls``) says when a call's part changes; this module acts on it:
the database decides which process records the new part (Store.take_over ends the call's active
leg and writes the next one in one transaction, each leg taken over at most once), and that
process starts the new part's MixMonitor on the call's anchor (the caller's channel, which every
transfer keeps), then stops the previous part's. The process running the previous part's
MixMonitor mutes it as soon as it hears of the change, before the database decides: meanwhile
the anchor may already talk with the next agent, who must not be heard in the previous agent's
leg (seen on a real Asterisk, tests/real_asterisk/test_following.py). The caller's audio between
the change and the new MixMonitor, one database write and an AMI round trip, is in neither leg.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from datetime import datetime, timezone

from .calls import PartBegan, PartEnded
from .domain import Channel, LegView, NewLeg, mixmonitor_variable, new_leg_id
from .errors import AsteriskFailure, RecordingFailure, StorageRefused, StorageUnavailable
from .ops.config import render_file
from .service import ActiveLeg, RecordingService

log = logging.getLogger("recording.following")


def moment(at: float) -> datetime:
    """A transition's time (seconds since the epoch, as the follower stamps events) in UTC."""
    return datetime.fromtimestamp(at, timezone.utc)


class Following:
    """Acts on a call's part changes for ``service``; ``channel(unique_id, name)`` gives the
    live channel (over AMI) to run MixMonitor on."""

    def __init__(self, service: RecordingService, channel):
        self.service = service
        self._channel = channel
        self.taken = 0  # part changes this process recorded (for tests and metrics)
        self.asked = 0  # part changes the database was asked about

    async def part_changed(self, ended: PartEnded, began: PartBegan) -> LegView | None:
        """The call moved from part ``ended`` to part ``began``: if it is being recorded, the
        new part gets its own leg (its owner by the usual rules: the user attached to the new
        agent's extension, else DEFAULT) and the old one ends by the part's cause. Returns the
        new leg's previous leg when this process recorded the change, else None (the call is
        not recorded, or another process recorded it)."""
        service = self.service
        anchor = began.anchor_uniqueid
        channels = [anchor] + ([ended.peer_uniqueid] if ended.peer_uniqueid else [])
        started = moment(began.at)
        extension = began.extension or ""
        leg_id = new_leg_id()
        number = service.proposed_number(anchor)
        leg = NewLeg(
            id=leg_id, unique_id=anchor, leg=number, channel=began.anchor_channel, extension=extension,
            file=render_file(service.settings.file_template, uniqueid=anchor, leg=number, extension=extension,
                             when=started, leg_id=leg_id),
            mixmonitor_id=None, tag=None, agent=None, source="follow", state="recording", started_at=started,
            linkedid=began.call, part=began.part,
        )
        async with service.call_turn(anchor):
            self.asked += 1
            # NOTE: the mute runs beside the database's decision, not before it: it must not
            # delay this process's claim (the process running the recording would otherwise
            # always lose it to another one, and the legs' times come from different clocks).
            muting = asyncio.ensure_future(self._mute_running(channels))
            try:
                taken = await service.read(partial(service.store.take_over, channels, leg, cause=ended.cause,
                                                   key=new_leg_id(), from_agent=ended.extension))
            except (StorageUnavailable, StorageRefused) as exc:
                muted = await muting
                log.error("call %s: part %d (%s) not recorded: its leg could not be written: %s", began.call,
                          began.part, extension or "no agent", exc)
                # NOTE: nobody can decide who records the next part: the running recording goes
                # on recording it (README, "Transfers and queues").
                await self._unmute(muted)
                return None
            except BaseException:
                muting.cancel()
                raise
            muted = await muting
            if taken is None:
                await self._unmute_unless_taken_over(muted)
                return None
            before, result = taken
            if result is None:
                # The leg goes on into the new part: its recording is heard again.
                await self._unmute(muted)
                log.info("call %s: leg %s goes on into part %d (%s): it has the same owner, or the agent it was "
                         "given for answered", began.call, before.id, began.part, extension or "no agent")
                return None
            self.taken += 1
            paused = before.state == "paused"
            log.info("call %s: leg %s (%s) ended by %s; leg %s of %s for %s%s", began.call, before.id,
                     before.extension or "no agent", ended.cause, leg_id, anchor, extension or "no agent",
                     " (paused, as the leg before it)" if paused else "")
            mixmonitor_id = None
            if not paused:
                mixmonitor_id = await self._start(leg, result.file or leg.file)
            await self._stop_before(before)
            active = ActiveLeg(leg_id, result.leg or number, result.file or leg.file, before.external_reference,
                               began.anchor_channel, mixmonitor_id, result.owner_id,
                               "paused" if paused else "recording", "restart" if paused else None)
            service.remember(anchor, active.leg, active if mixmonitor_id or paused else None)
            return before

    async def _mute_running(self, unique_ids: list[str]) -> ActiveLeg | None:
        """Mutes the MixMonitor this process runs for the part that just ended (on the anchor,
        or on the agent's channel a request recorded); returns its leg, or None when there is
        none to mute here (another process runs it, the leg is paused, no AMI, or its channel
        is gone and took it along)."""
        muter = self.service.muter
        if muter is None or not muter.connected:
            return None
        for unique_id in unique_ids:
            running = self.service.active(unique_id)
            if running is not None and running.state == "recording" and running.mixmonitor_id:
                try:
                    await muter.mute(running.channel, running.mixmonitor_id, True)
                except AsteriskFailure:
                    return None
                return running
        return None

    async def _unmute(self, muted: ActiveLeg | None) -> None:
        if muted is not None:
            try:
                await self.service.muter.mute(muted.channel, muted.mixmonitor_id, False)
            except AsteriskFailure as exc:
                log.warning("the recording of leg %s on %s stays muted: %s", muted.leg_id, muted.channel, exc)

    async def _unmute_unless_taken_over(self, muted: ActiveLeg | None) -> None:
        """No leg was written for the new part here: if another process took the muted leg
        over, it stops it; otherwise (the call is not followed, or the leg's start has not
        reached the database yet) the leg goes on as it was."""
        if muted is None:
            return
        try:
            now = await self.service.read(self.service.store.leg, muted.leg_id)
        except RecordingFailure:
            now = None
        if now is None or now.state in ("recording", "paused"):
            await self._unmute(muted)

    async def _start(self, leg: NewLeg, file: str) -> str | None:
        """Starts the new part's MixMonitor on the anchor; a leg whose MixMonitor did not start
        is settled as failed (it recorded nothing), and logged."""
        channel: Channel = self._channel(leg.unique_id, leg.channel)
        try:
            started = await channel.start_mixmonitor(file, self.service.settings.mixmonitor_options,
                                                     mixmonitor_variable(leg.id))
        except AsteriskFailure as exc:
            log.error("call %s: the MixMonitor of leg %s on %s did not start: %s", leg.linkedid, leg.id,
                      leg.channel, exc)
            await self.service.settle_failed(leg)
            return None
        return started.mixmonitor_id

    async def _stop_before(self, before: LegView) -> None:
        """Stops the previous part's MixMonitor (by its id, read from its channel when this
        process did not start it). It runs on the anchor, or on an agent's channel that a
        request recorded: a recording there would follow the agent into a consultation, and a
        followed call is recorded on its anchor only. A channel gone already took it along."""
        if before.state == "paused" and before.pauses and before.pauses[-1].method == "restart":
            return  # nothing records while a leg is paused by a stop
        channel: Channel = self._channel(before.unique_id, before.channel)
        remembered = self.service.active(before.unique_id)
        mixmonitor_id = before.mixmonitor_id or (
            remembered.mixmonitor_id if remembered is not None and remembered.leg_id == before.id else None)
        try:
            if not mixmonitor_id:
                mixmonitor_id = await channel.read_variable(mixmonitor_variable(before.id))
            if mixmonitor_id:
                await channel.stop_mixmonitor(mixmonitor_id)
        except AsteriskFailure as exc:
            log.info("the MixMonitor of leg %s on %s was not stopped (%s): its channel took it along", before.id,
                     before.channel, exc)
