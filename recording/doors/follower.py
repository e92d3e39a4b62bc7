"""The door AMI events come in by: every event goes to the call tracker, in the order Asterisk
sent it, and each part change of a call goes to the following rules (``recording/following``);
the Hangup of a recorded channel ends its leg.

Every process connected to Asterisk's manager hears every event (``serve --workers``, several
hosts): each tracks every call, and the database decides which of them records a new part
(Store.take_over). Events are handled one at a time by one task: a transfer's part change is
decided before the Hangup of the agent's channel that comes after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from ..asterisk.manager import AMIChannel, LiveChannel, Manager
from ..calls import CallEnded, CallTracker, NoAnchor, PartBegan, PartEnded, find_anchor, rebuild
from ..errors import RecordingFailure, StorageUnavailable
from ..following import Following
from ..service import RecordingService

log = logging.getLogger("recording.follower")

# The variable MixMonitor's i() sets for every leg (domain.mixmonitor_variable): its VarSet
# event says which channel has a recording, whichever process started it. A leg handed on
# paused runs no MixMonitor: the process that wrote it sets FOLLOWED on the channel instead.
_ID_VARIABLE = "RECORDING_MIXMON_"
FOLLOWED = "RECORDING_FOLLOWED"
# Events waiting to be handled past which the follower stops queueing them, drops what waits,
# and reads the calls again from Asterisk: memory stays bounded, and no call is followed from a
# picture older than what Asterisk lists.
MAX_PENDING = 50_000
# Seconds after which a call whose caller left its agent with no event saying why is settled.
SETTLE_AFTER = 1.0
_REBUILD = object()


class Follower:
    """Starts with :meth:`start`; ``manager`` must be configured."""

    def __init__(self, service: RecordingService, manager: Manager, *, settle_after: float = SETTLE_AFTER):
        self.service = service
        self.manager = manager
        self.tracker = CallTracker()
        self.following = Following(service, self.channel)
        self.settle_after = settle_after
        # The unique ids of channels that have a recording: a leg's MixMonitor id variable was
        # set on them (every process sees that VarSet), or the database had a leg active on
        # them at the last connection. Their Hangup ends their leg.
        self.recorded: set[str] = set()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._busy = False
        self.overflows = 0
        self._tasks: list[asyncio.Task] = []
        # The work of each call (its part changes and hangups) in the order heard, one task per
        # call at a time: the calls' work runs side by side (see _in_turn).
        self._turns: dict[str, asyncio.Task] = {}
        self._unsubscribe = None
        self.handled = 0

    # -- what the service asks (service.CallDirectory) -----------------------------------

    def anchor_of(self, unique_id: str) -> tuple[str, str] | None:
        # NOTE: by unique id only: every FastAGI start asks this, and the extension's search
        # (a scan of every channel heard) cost a start 20 % of its time with 8,000 channels
        # tracked (bench, --ami-transfers 100).
        try:
            anchor = find_anchor(self.tracker.model, unique_id, by_extension=False)
        except NoAnchor:
            return None
        return anchor.uniqueid, anchor.name

    def call_of(self, unique_id: str) -> str | None:
        channel = self.tracker.model.channels.get(unique_id)
        return channel.linkedid if channel is not None else None

    def channel(self, unique_id: str, name: str) -> AMIChannel:
        return AMIChannel(self.manager.client, LiveChannel(name, unique_id))

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.manager.client.subscribe(self._heard)
        self.manager.client.on_connect(self._connected)
        self._tasks = [asyncio.create_task(self._consume(), name="call-follower"),
                       asyncio.create_task(self._settler(), name="call-follower-settle")]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        # NOTE: cancelled again until they end: a cancellation that lands as an awaited read
        # completes can be lost in a library's wait, and the task would wait for events for ever.
        pending = set(self._tasks) | set(self._turns.values())
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)

    @property
    def pending(self) -> int:
        """Events heard and not handled yet, and calls whose part change or hangup is in hand."""
        return self._queue.qsize() + (1 if self._busy else 0) + len(self._turns)

    def _heard(self, event: dict) -> None:
        if self._queue.qsize() < MAX_PENDING:
            self._queue.put_nowait((event, time.time()))
            return
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            dropped += 1
        self.overflows += 1
        log.warning("the call follower fell %d AMI events behind: they are dropped and the calls read again from "
                    "Asterisk (part changes meanwhile are seen as they are then)", dropped)
        self._queue.put_nowait((_REBUILD, time.time()))

    def _connected(self) -> None:
        # NOTE: events may have been missed while the connection was down: the calls are read
        # again from Asterisk's own listing before the next event is handled.
        self._queue.put_nowait((_REBUILD, time.time()))

    async def _consume(self) -> None:
        while True:
            event, at = await self._queue.get()
            self._busy = True
            try:
                if event is _REBUILD:
                    await self._rebuild(at)
                else:
                    await self._handle(event, at)
            except Exception:
                log.exception("an AMI event could not be followed; going on with the next")
            finally:
                self._busy = False
                self.handled += 1
                self._queue.task_done()

    async def _settler(self) -> None:
        while True:
            await asyncio.sleep(self.settle_after / 2)
            if self.tracker.waiting():
                self._queue.put_nowait(({"Event": "_Settle"}, time.time()))

    async def _handle(self, event: dict, at: float) -> None:
        name = event.get("Event")
        if name == "_Settle":
            await self._act(self.tracker.settle(at - self.settle_after))
            return
        if name == "VarSet" and event.get("Value") and event.get("Variable", "").startswith((_ID_VARIABLE, FOLLOWED)):
            self.recorded.add(event.get("Uniqueid", ""))
        call = None
        if name == "Hangup":
            known = self.tracker.model.channels.get(event.get("Uniqueid", ""))
            call = known.linkedid if known is not None else event.get("Linkedid") or event.get("Uniqueid", "")
        await self._act(self.tracker.feed(event, at))
        if call is not None:
            self._in_turn(call, partial(self._hung_up, event.get("Uniqueid", "")))

    def _in_turn(self, call: str, work) -> None:
        """Runs ``work()`` once the work queued before it for ``call`` is done. A part change
        takes tens of milliseconds (the database's decision, MixMonitor started and stopped):
        done one after another for every call, a transfer heard behind other calls' changes
        waited for all of them while the old recording went on hearing the new agent (0.5 s
        with 7 calls transferred at once on the real Asterisk), and a process managed about 20
        changes a second. Within a call the order is kept (a hangup after the part change
        before it); the service's per-channel turn (call_turn) still orders two calls that share
        a channel."""
        previous = self._turns.get(call)
        task = asyncio.create_task(self._after(previous, work), name=f"call-follower {call}")
        self._turns[call] = task
        task.add_done_callback(lambda done, call=call: self._turns.pop(call, None)
                               if self._turns.get(call) is done else None)

    @staticmethod
    async def _after(previous: asyncio.Task | None, work) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            await work()
        except Exception:
            log.exception("an AMI event could not be followed; going on with the next")

    async def settled(self) -> None:
        """Waits until the work of every call heard so far is done."""
        while self._turns:
            await asyncio.wait(list(self._turns.values()))

    async def _act(self, transitions, *, known: bool = False) -> None:
        """Acts on the part changes of recorded calls. ``known``: the calls are known to be
        recorded (read from the database), whatever this process heard."""
        ended = None
        for transition in transitions:
            if isinstance(transition, PartEnded):
                ended = transition
            elif isinstance(transition, PartBegan) and ended is not None and ended.call == transition.call:
                self._in_turn(ended.call, partial(self._maybe_changed, ended, transition, known))
                ended = None
            elif isinstance(transition, CallEnded):
                self._in_turn(transition.call, partial(self._hung_up, transition.anchor_uniqueid))

    async def _maybe_changed(self, ended: PartEnded, began: PartBegan, known: bool) -> None:
        # NOTE: asked in the call's turn, after its changes before this one: the leg the first
        # of two quick changes starts on the caller's channel makes the second one recorded.
        if known or self._recorded(ended, began):
            await self._part_changed(ended, began)

    def _recorded(self, ended: PartEnded, began: PartBegan) -> bool:
        """Whether a channel of the part that ended has a recording, as every process hears it
        (or this one remembers): most calls have none, and their part changes cost nothing."""
        channels = (began.anchor_uniqueid, ended.peer_uniqueid)
        return any(c in self.recorded or (c and self.service.active(c) is not None) for c in channels)

    async def _part_changed(self, ended: PartEnded, began: PartBegan) -> None:
        before = await self.following.part_changed(ended, began)
        if before is not None and before.state == "paused":
            # NOTE: handed on paused, the new leg runs no MixMonitor whose id variable would tell
            # the other processes that the caller's channel is recorded: this does.
            try:
                await self.manager.client.action("Setvar", Channel=began.anchor_channel, Variable=FOLLOWED,
                                                 Value="1")
            except Exception as exc:  # noqa: BLE001 - AMI gone: the next connection reads the database
                log.info("%s was not marked as followed (%s)", began.anchor_channel, exc)

    def _orphans(self, active, live: set, changed: set, at: float) -> list:
        """For each call still going whose recording ran on a channel that is gone now (an
        agent's channel a request recorded, which hung up at a transfer nobody heard), the part
        change that gives the part in progress a leg of its own from now."""
        out = []
        for leg in active:
            call = self.tracker.model.calls.get(leg.linkedid or "")
            if leg.unique_id in live or call is None or call.linkedid in changed or call.part is None:
                continue
            anchor = self.tracker.model.channels.get(call.anchor or "")
            if anchor is None:
                continue
            part = call.part
            out.append(PartEnded(call.linkedid, part.seq, anchor.uniqueid, anchor.name, leg.unique_id, leg.channel,
                                 leg.extension or None, "left", at))
            out.append(PartBegan(call.linkedid, part.seq, anchor.uniqueid, anchor.name, part.peer_uniqueid,
                                 part.peer_channel, part.extension, "seen", at))
            changed.add(call.linkedid)
        return out

    async def _hung_up(self, unique_id: str) -> None:
        """A recorded channel hung up: its leg ends (decided by the database: of several
        processes that hear it, one writes the end)."""
        if unique_id in self.recorded or self.service.active(unique_id) is not None:
            self.recorded.discard(unique_id)
            try:
                await self.service.channel_gone(unique_id, by="hangup")
            except (RecordingFailure, StorageUnavailable) as exc:
                log.warning("the leg of %s was not ended at its hangup (%s); the sweeper will", unique_id, exc)

    async def _rebuild(self, at: float) -> None:
        """Reads every live channel (CoreShowChannels) and makes the model of the calls anew,
        and the channels that have a recording from the database."""
        await self.settled()
        try:
            listed = await self.manager.client.core_show_channels()
        except Exception as exc:  # noqa: BLE001 - AMI gone again: the next connection rebuilds
            log.info("the calls were not read again from Asterisk (%s)", exc)
            return
        store = self.service.store
        try:
            active = await self.service.reads(store.active_legs)
            parts = await self.service.reads(store.last_parts, sorted({item.get("Linkedid", "") for item in listed}))
        except StorageUnavailable as exc:
            log.info("the recorded calls were not read from the database (%s): following from what Asterisk "
                     "lists alone", exc)
            active, parts = [], {}
        # NOTE: the database's last part of each followed call, so that this process numbers the
        # parts as the others do; a part whose agent changed while nobody heard goes to a leg of
        # its own from now (PartEnded "left", PartBegan "seen").
        self.tracker, changed = rebuild(listed, at=at, parts=parts)
        live = {item.get("Uniqueid") for item in listed}
        self.recorded = {leg.unique_id for leg in active if leg.unique_id in live}
        taken = {t.call for t in changed if isinstance(t, PartEnded)}
        recorded_calls = {leg.linkedid for leg in active if leg.linkedid}
        await self._act([t for t in changed if t.call in recorded_calls], known=True)
        await self._act(self._orphans(active, live, taken, at), known=True)
        await self.settled()
        log.info("following %d calls (%d channels with a recording) after connecting to Asterisk",
                 len(self.tracker.model.calls), len(self.recorded))
