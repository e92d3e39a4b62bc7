"""The recording follows the call: one leg per part of a call (each agent's talk with the caller,
and the spans with no agent between), through transfers, queues, Redirect, pickup and Local
channel optimisation (README, "Transfers and queues"; docs/transfers.md).

The call tracker (``recording/calls``) says when a call's part changes; this module acts on it:
the database decides which process records the new part (Store.take_over ends the call's active
leg and writes the next one in one transaction, each leg taken over at most once), and that
process starts the new part's MixMonitor on the call's anchor (the caller's channel, which every
transfer keeps) before it stops the previous part's, so the two overlap rather than leave a gap.
"""

from __future__ import annotations

import logging
from functools import partial
from datetime import datetime, timezone

from .calls import PartBegan, PartEnded
from .domain import Channel, LegView, NewLeg, mixmonitor_variable, new_leg_id
from .errors import AsteriskFailure, StorageRefused, StorageUnavailable
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
            try:
                taken = await service.read(partial(service.store.take_over, channels, leg, cause=ended.cause,
                                                   key=new_leg_id(), from_agent=ended.extension))
            except (StorageUnavailable, StorageRefused) as exc:
                log.error("call %s: part %d (%s) not recorded: its leg could not be written: %s", began.call,
                          began.part, extension or "no agent", exc)
                return None
            if taken is None:
                return None
            before, result = taken
            if result is None:
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
