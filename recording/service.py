"""The recording service: the rules of a recording leg's life (start, stop, pause, resume, end),
whichever door the request came in by. It knows a channel only through
:class:`~recording.domain.Channel`, the database only through the persister, the directory and
reads in worker threads, and Asterisk's manager only as an optional muter, so FastAGI and
HTTP/AMI share every rule here."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from agi.protocol import is_clean_text

from .ops.config import Settings, render_file
from .storage.directory import Directory
from .domain import (
    ACTIVE_STATES,
    Channel,
    CommitResult,
    LegChange,
    LegView,
    NewLeg,
    StartOutcome,
    StartRequest,
    TagUpdate,
    UserRef,
    channel_extension,
    mixmonitor_variable,
    new_leg_id,
    utcnow,
)
from .errors import AsteriskFailure, AsteriskUnavailable, Denied, Invalid, StorageRefused, StorageUnavailable
from .storage.persist import Pending, Persister
from .storage.reads import Reads
from .storage.store import Store

log = logging.getLogger("recording.service")

MAX_TAG = 255
MAX_LOGIN = 128
# How many calls the service remembers legs of. Memory is a cache: what a route answers is read
# from the database (see _find_active), and memory stands in only while the database is away.
REMEMBERED_CALLS = 100_000
APPEND = "a"  # MixMonitor's option to append to the file instead of overwriting it


@dataclass(slots=True)
class ActiveLeg:
    """What the service remembers of a leg that records (or is paused)."""

    leg_id: str
    leg: int
    file: str
    tag: str | None
    channel: str = ""
    mixmonitor_id: str | None = None
    owner_id: int | None = None
    state: str = "recording"
    pause_method: str | None = None

    @classmethod
    def of(cls, view: LegView) -> "ActiveLeg":
        method = view.pauses[-1].method if view.state == "paused" and view.pauses else None
        return cls(view.id, view.leg, view.file, view.external_reference, view.channel, view.mixmonitor_id,
                   view.owner_id, view.state, method)


class _ActiveLegs(OrderedDict):
    """The active legs remembered, by unique id, each kept as a plain tuple of its fields and
    handed out as an :class:`ActiveLeg`. The garbage collector stops tracking a tuple of
    strings, numbers and None, so the legs remembered (up to REMEMBERED_CALLS, one per call
    that never said it hung up) are not walked by every full collection on the event loop: as
    objects, 100,000 of them added 10 ms to each (bench/README.md, "What stalled the loop")."""

    def __setitem__(self, unique_id: str, leg: ActiveLeg) -> None:
        super().__setitem__(unique_id, tuple(getattr(leg, name) for name in ActiveLeg.__slots__))

    def get(self, unique_id: str, default=None) -> ActiveLeg | None:
        fields = super().get(unique_id)
        return default if fields is None else ActiveLeg(*fields)


@dataclass(slots=True)
class LegRequest:
    """stop, pause or resume of the active leg of ``unique_id``; ``actor`` is the
    agentLoginName given (who must be allowed to), ``by`` what is written as the doer."""

    unique_id: str
    channel: str
    actor: str | None
    by: str


@dataclass(slots=True)
class LegOutcome:
    """STOPPED, PAUSED, RESUMED, ENDED or NOT_RECORDING, with the leg concerned (if any)."""

    status: str
    leg_id: str = ""
    file: str = ""
    leg: int = 0
    deferred: bool = False
    # The channel the leg records (see StartOutcome).
    unique_id: str = ""
    channel: str = ""


class Muter(Protocol):
    """Mutes a MixMonitor without stopping it (AMI's MixMonitorMute). Raises
    AsteriskUnavailable when it cannot reach Asterisk, AsteriskFailure when Asterisk refuses."""

    @property
    def connected(self) -> bool: ...

    async def mute(self, channel: str, mixmonitor_id: str, state: bool) -> None: ...


class CallDirectory(Protocol):
    """The calls as AMI tells them (doors/follower.py): the anchor of a channel's call (the
    caller's channel, where a followed call's recordings run), and a live channel to act on."""

    def anchor_of(self, unique_id: str) -> tuple[str, str] | None:
        """``(unique id, channel name)`` of the anchor of the call ``unique_id`` is on; None
        when the call is not known."""

    def call_of(self, unique_id: str) -> str | None:
        """The Linkedid of the call ``unique_id`` is on; None when the channel is not known."""

    def channel(self, unique_id: str, name: str) -> Channel: ...


class _CallTurn:
    """``async with``: holds the call's lock, made when first needed and dropped when no one
    holds or waits for it (a class, not an asynccontextmanager: this runs for every session)."""

    __slots__ = ("_locks", "_unique_id", "_lock")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], unique_id: str):
        self._locks = locks
        self._unique_id = unique_id

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._unique_id) or (asyncio.Lock(), 0)
        self._locks[self._unique_id] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._unique_id]
        if users == 1:
            del self._locks[self._unique_id]
        else:
            self._locks[self._unique_id] = (lock, users - 1)


def check_text(name: str, value: str | None, limit: int) -> str | None:
    """``value`` if it is usable text within ``limit`` characters (None stays None); raises
    Invalid with a sentence naming the argument otherwise."""
    if value is None:
        return None
    if not is_clean_text(value):
        raise Invalid(f"{name} must be UTF-8 text without control characters")
    if len(value) > limit:
        raise Invalid(f"{name} is longer than {limit} characters")
    return value


class RecordingService:
    def __init__(
        self,
        settings: Settings,
        directory: Directory,
        persister: Persister,
        store: Store,
        *,
        executor: Executor | None = None,
        muter: Muter | None = None,
        reads: Reads | None = None,
        calls: "CallDirectory | None" = None,
    ):
        self.settings = settings
        self.directory = directory
        self.persister = persister
        self.store = store
        self.muter = muter
        self._executor = executor
        # The call path's reads: their own threads, each within the database budget.
        self.reads = reads or Reads(settings.database_budget)
        # The calls followed over AMI (doors/follower.py), when there is a manager: which
        # channel of a call its recordings run on.
        self.calls = calls
        self._active = _ActiveLegs()
        self._last_leg: OrderedDict[str, int] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- memory of the calls being recorded ---------------------------------------------

    def remember(self, unique_id: str, leg: int, active: ActiveLeg | None) -> None:
        self._last_leg[unique_id] = max(leg, self._last_leg.get(unique_id, 0))
        self._last_leg.move_to_end(unique_id)
        if active is not None:
            self._active[unique_id] = active
            self._active.move_to_end(unique_id)
        else:
            self._active.pop(unique_id, None)
        for memory in (self._last_leg, self._active):
            while len(memory) > REMEMBERED_CALLS:
                memory.popitem(last=False)

    def active(self, unique_id: str) -> ActiveLeg | None:
        return self._active.get(unique_id)

    def _owner(self, agent: UserRef | None, agent_login: str | None, extension: str) -> int | None:
        """The owner the store will give a leg written later (README, "Ownership"), from the
        directory in memory: an agent, else whoever is attached to the extension."""
        if agent is not None:
            return agent.id
        return None if agent_login else self.directory.attached(extension)

    def recall(self, writes: list[NewLeg | TagUpdate | LegChange]) -> int:
        """Remembers the legs that journaled writes (of an earlier process, oldest first) leave
        active, so that their stop, pause or hangup works before the database answers. Returns
        how many legs that is."""
        active: dict[str, ActiveLeg] = {}
        for write in writes:
            if isinstance(write, NewLeg):
                self.remember(write.unique_id, write.leg, None)
                if write.state in ACTIVE_STATES:
                    active[write.unique_id] = ActiveLeg(
                        write.id, write.leg, write.file, write.tag, write.channel, write.mixmonitor_id,
                        self._owner(write.agent, write.agent_login, write.extension), write.state,
                    )
                else:
                    active.pop(write.unique_id, None)
                continue
            leg = active.get(write.unique_id)
            if leg is None:
                continue
            if isinstance(write, TagUpdate):
                active[write.unique_id] = replace(leg, tag=write.tag)
            elif not isinstance(write, LegChange) or write.leg_id != leg.leg_id:
                continue
            elif write.action == "end":
                del active[write.unique_id]
            elif write.action == "pause":
                active[write.unique_id] = replace(leg, state="paused", pause_method=write.method)
            elif write.action == "resume":
                active[write.unique_id] = replace(leg, state="recording", pause_method=None,
                                                  mixmonitor_id=write.mixmonitor_id or leg.mixmonitor_id)
        for unique_id, leg in active.items():
            self.remember(unique_id, leg.leg, leg)
        return len(active)

    def _call(self, unique_id: str) -> "_CallTurn":
        """One operation at a time per call: a stop racing a start or a pause waits for it."""
        return _CallTurn(self._locks, unique_id)

    async def read(self, function, *args):
        """Runs a blocking store read in a worker thread (for what is not on a call's path:
        retrieval, downloads, holds)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _find_active(self, unique_id: str, *, ask: bool = True) -> ActiveLeg | None:
        """The active leg of the call, as the database has it: a leg another process (or this
        one before a restart) started, stopped, paused or resumed is seen as it is now.

        Memory answers instead while writes are being journaled (this process's own latest
        changes may not have reached the database yet) and when the database does not answer
        within the budget; with nothing in memory the database's silence is raised
        (StorageUnavailable). ``ask=False``: when memory knows no active leg, the database is
        not asked (a start, whose write itself finds out).
        """
        remembered = self._active.get(unique_id)
        if remembered is None and not ask:
            return None
        if remembered is not None and self.persister.journaling:
            return remembered
        try:
            views = await self.reads(self.store.active_legs, unique_id)
        except StorageUnavailable:
            if remembered is None:
                raise
            log.info("the database did not say whether %s records; answering from memory", unique_id)
            return remembered
        if not views:
            if remembered is not None:
                self.remember(unique_id, remembered.leg, None)
            return None
        found = ActiveLeg.of(views[0])
        if not found.mixmonitor_id and remembered is not None and remembered.leg_id == found.leg_id:
            # NOTE: a start's MixMonitor id is not written to the database (the channel keeps
            # it); the one this process started is still the running one.
            found = replace(found, mixmonitor_id=remembered.mixmonitor_id)
        self.remember(unique_id, found.leg, found)
        return found

    # -- checks ---------------------------------------------------------------------------

    async def authorize(self, api_key: str | None) -> None:
        """Raises Denied unless ``api_key`` is the configured key."""
        await self.directory.check_key(api_key)

    async def agent(self, login: str | None) -> tuple[UserRef | None, str | None]:
        """The user named by agentLoginName, as ``(user, None)``; ``(None, None)`` when none was
        given; ``(None, login)`` when the login cannot be looked up now (the database is away
        and the user is not in memory): the store resolves it when the leg reaches it.
        Raises Invalid for a login nobody has: no leg is recorded for an owner who does not exist.
        """
        login = check_text("agentLoginName", login, MAX_LOGIN)
        if not login:
            return None, None
        try:
            user = await self.directory.user(login)
        except StorageUnavailable:
            return None, login
        if user is None:
            raise Invalid(f"unknown agent {login!r}: no user has that agentLoginName")
        return user, None

    async def _check_actor(self, leg: ActiveLeg, actor: str | None, verb: str) -> None:
        """An agentLoginName given for stop/pause/resume must be the leg's owner or a
        'Recording Manager'; without one, the apiKey alone is enough."""
        user, unresolved = await self.agent(actor)
        if unresolved:
            raise StorageUnavailable(f"cannot check whether {unresolved!r} may {verb} this recording now")
        if user is None or user.is_manager or (leg.owner_id is not None and leg.owner_id == user.id):
            return
        raise Denied(f"{user.login} may not {verb} this recording: only its owner or a Recording Manager may")

    # -- start -----------------------------------------------------------------------------

    async def start(self, request: StartRequest, channel: Channel) -> StartOutcome:
        """Starts recording ``channel`` unless this service already records it.

        Raises Invalid for a bad request, AsteriskFailure when MixMonitor does not start,
        StorageRefused/StorageUnavailable when the leg cannot be stored anywhere (then the
        MixMonitor just started is stopped again). The caller must have checked the apiKey.
        """
        tag = check_text("tag", request.tag, MAX_TAG) or None
        agent = await self.agent(request.agent_login)
        async with self._call(request.unique_id):
            active = await self._find_active(request.unique_id, ask=False)
            if active is not None:
                return await self._already(request.unique_id, active, tag)
            on_call = await self._recorded_call(request.unique_id)
            if on_call is not None:
                return await self._already(*on_call, tag)
            return await self._start_new(request, channel, agent, tag)

    async def _recorded_call(self, unique_id: str) -> tuple[str, ActiveLeg] | None:
        """The active leg of the call ``unique_id`` is on, when the calls are followed and it
        runs on another channel (the CRM names the agent of a call whose caller is recorded):
        the call is recorded already. None when it is not, or the database cannot say (a
        recording started twice beats none)."""
        anchor = self.calls.anchor_of(unique_id) if self.calls is not None else None
        if anchor is None or anchor[0] == unique_id:
            return None
        try:
            active = await self._find_active(anchor[0])
        except StorageUnavailable:
            return None
        return None if active is None else (anchor[0], active)

    async def _already(self, unique_id: str, active: ActiveLeg, tag: str | None) -> StartOutcome:
        deferred = False
        if tag is not None and tag != active.tag:
            deferred = (await self.persister.write(TagUpdate(unique_id, tag, utcnow()))).deferred
            self.remember(unique_id, active.leg, replace(active, tag=tag))
        return StartOutcome("ALREADY_RECORDING", active.leg_id, active.file, active.leg, deferred, unique_id,
                            active.channel)

    async def _start_new(
        self, request: StartRequest, channel: Channel, agent: tuple[UserRef | None, str | None], tag: str | None
    ) -> StartOutcome:
        # NOTE: the number is proposed here and decided by the database, which gives the next
        # free one if another process (or this one before a restart) numbered a leg of the call;
        # the file name holds the leg's id, so it is the leg's own whatever its number.
        number = self._last_leg.get(request.unique_id, 0) + 1
        started = utcnow()
        extension = channel_extension(request.channel)
        leg_id = new_leg_id()
        file = render_file(
            self.settings.file_template, uniqueid=request.unique_id, leg=number, extension=extension, when=started,
            leg_id=leg_id,
        )
        leg = NewLeg(
            id=leg_id, unique_id=request.unique_id, leg=number, channel=request.channel, extension=extension,
            file=file, mixmonitor_id=None, tag=tag, agent=agent[0], agent_login=agent[1], source=request.source,
            state="recording", started_at=started,
            linkedid=self.calls.call_of(request.unique_id) if self.calls is not None else None,
        )
        # NOTE: held: once MixMonitor has been asked for, its leg is settled even if the
        # session's deadline comes meanwhile (each reply keeps its own deadline).
        with channel.hold():
            return await self._record(leg, channel)

    async def _record(self, leg: NewLeg, channel: Channel) -> StartOutcome:
        """Writes the leg while MixMonitor starts: the commit runs during the round trips to
        Asterisk instead of after them, and the caller hears STARTED only once both are done
        (the leg and its tag durable, or journaled and fsynced). The leg's MixMonitor id is not
        written: the channel keeps it in the leg's own variable (domain.mixmonitor_variable)
        for as long as the recording runs. A leg whose MixMonitor did not start is settled as
        failed, one whose channel hung up meanwhile as ended."""
        pending = self.persister.begin(leg)
        try:
            mixmonitor = await channel.start_mixmonitor(
                leg.file, self.settings.mixmonitor_options, mixmonitor_variable(leg.id)
            )
        except Exception:
            await self._settle(pending, leg, "failed", by="mixmonitor")
            raise
        try:
            persisted = await self.persister.finish(pending)
        except (StorageRefused, StorageUnavailable) as exc:
            # No recording without its record: a file nobody can find by its tag is lost.
            if mixmonitor.mixmonitor_id:
                await self._stop_quietly(channel, mixmonitor.mixmonitor_id)
            raise type(exc)(f"the recording was stopped because it could not be stored: {exc}") from exc
        result = persisted.result
        if result is not None and result.status == "ALREADY_RECORDING":
            return await self._lost_race(leg.unique_id, channel, mixmonitor.mixmonitor_id, result)
        deferred = persisted.deferred
        if mixmonitor.hung_up:
            deferred = await self._settle(None, leg, "ended", by="hangup") or deferred
        if result is None:
            # Deferred: the owner as the store will give it at replay, so that the owner may
            # stop, pause and resume meanwhile.
            number, owner_id = leg.leg, self._owner(leg.agent, leg.agent_login, leg.extension)
        else:
            number, owner_id = result.leg, result.owner_id
        active = ActiveLeg(leg.id, number, leg.file, leg.tag, leg.channel, mixmonitor.mixmonitor_id, owner_id)
        self.remember(leg.unique_id, number, None if mixmonitor.hung_up else active)
        return StartOutcome("STARTED", leg.id, leg.file, number, deferred)

    async def _settle(self, pending: Pending | None, leg: NewLeg, state: str, *, by: str) -> bool:
        """Ends a leg written as recording whose MixMonitor did not start (``failed``) or whose
        channel is gone (``ended``), once its own write is done. True when that went to the
        journal. A write that failed left nothing to settle; it is only logged here, since the
        caller is told of the failure that brought it here."""
        if pending is not None:
            try:
                persisted = await self.persister.finish(pending)
            except (StorageRefused, StorageUnavailable) as exc:
                log.warning("leg %s of %s was not stored (%s), and its MixMonitor did not start", leg.id,
                            leg.unique_id, exc)
                return False
            if persisted.result is not None and persisted.result.status == "ALREADY_RECORDING":
                return False
        change = LegChange(leg.id, leg.unique_id, "end", utcnow(), state=state, by=by, key=new_leg_id())
        try:
            return (await self.persister.write(change)).deferred
        except (StorageRefused, StorageUnavailable) as exc:
            log.error("leg %s of %s stays recording in the database although %s: %s", leg.id, leg.unique_id,
                      "its MixMonitor did not start" if state == "failed" else "its channel hung up", exc)
            return False

    async def _lost_race(
        self, unique_id: str, channel: Channel, mixmonitor_id: str | None, winner: CommitResult
    ) -> StartOutcome:
        """Another process recorded this call first: stop the MixMonitor just started (by its
        id, so the winner's keeps running) and answer with the winner's leg."""
        log.info("%s is already recorded by leg %s; stopping the duplicate MixMonitor", unique_id, winner.leg_id)
        if mixmonitor_id:
            await self._stop_quietly(channel, mixmonitor_id)
        self.remember(unique_id, winner.leg, None)
        return StartOutcome("ALREADY_RECORDING", winner.leg_id, winner.file, winner.leg)

    async def _stop_quietly(self, channel: Channel, mixmonitor_id: str) -> None:
        try:
            await channel.stop_mixmonitor(mixmonitor_id)
        except AsteriskFailure as exc:
            log.warning("could not stop MixMonitor %s on %s: %s", mixmonitor_id, channel.name, exc)

    # -- stop, pause, resume ----------------------------------------------------------------

    async def stop(self, request: LegRequest, channel: Channel) -> LegOutcome:
        """Stops the call's active leg (its own MixMonitor, by id) and closes it as stopped.
        NOT_RECORDING when this service records nothing on that call."""
        request, channel = await self._on_the_call(request, channel)
        async with self._call(request.unique_id):
            leg = await self._find_active(request.unique_id)
            if leg is None:
                return LegOutcome("NOT_RECORDING")
            await self._check_actor(leg, request.actor, "stop")
            # A leg paused by restarting has no MixMonitor running to stop.
            if leg.pause_method != "restart":
                leg = await self._with_id(leg, channel)
                if leg.mixmonitor_id:
                    await channel.stop_mixmonitor(leg.mixmonitor_id)
            change = LegChange(leg.leg_id, request.unique_id, "end", utcnow(), state="stopped", by=request.by,
                               key=new_leg_id())
            deferred = await self._apply(change)
            self.remember(request.unique_id, leg.leg, None)
            return LegOutcome("STOPPED", leg.leg_id, leg.file, leg.leg, deferred, request.unique_id, leg.channel)

    async def pause(self, request: LegRequest, channel: Channel) -> LegOutcome:
        """Pauses the call's active leg: muted over AMI when the manager is connected (the file
        keeps its timeline, silence while paused), else stopped, to be restarted appending to
        the same file. Pausing a paused leg changes nothing."""
        request, channel = await self._on_the_call(request, channel)
        async with self._call(request.unique_id):
            leg = await self._find_active(request.unique_id)
            if leg is None:
                return LegOutcome("NOT_RECORDING")
            await self._check_actor(leg, request.actor, "pause")
            if leg.state == "paused":
                return LegOutcome("PAUSED", leg.leg_id, leg.file, leg.leg, False, request.unique_id, leg.channel)
            leg = await self._with_id(leg, channel)
            method = await self._silence(leg, channel)
            change = LegChange(leg.leg_id, request.unique_id, "pause", utcnow(), by=request.by, method=method,
                               key=new_leg_id())
            deferred = await self._apply(change)
            self.remember(request.unique_id, leg.leg, replace(leg, state="paused", pause_method=method))
            return LegOutcome("PAUSED", leg.leg_id, leg.file, leg.leg, deferred, request.unique_id, leg.channel)

    async def resume(self, request: LegRequest, channel: Channel) -> LegOutcome:
        """Resumes a paused leg the way it was paused (unmute, or a new MixMonitor appending to
        the file). If a muted leg cannot be unmuted because the manager is away, its muted
        MixMonitor is stopped and a new one appends instead. Resuming a recording leg changes
        nothing."""
        request, channel = await self._on_the_call(request, channel)
        async with self._call(request.unique_id):
            leg = await self._find_active(request.unique_id)
            if leg is None:
                return LegOutcome("NOT_RECORDING")
            await self._check_actor(leg, request.actor, "resume")
            if leg.state != "paused":
                return LegOutcome("RESUMED", leg.leg_id, leg.file, leg.leg, False, request.unique_id, leg.channel)
            new_id = await self._sound(leg, channel)
            change = LegChange(leg.leg_id, request.unique_id, "resume", utcnow(), by=request.by,
                               mixmonitor_id=new_id, key=new_leg_id())
            deferred = await self._apply(change)
            resumed = replace(leg, state="recording", pause_method=None, mixmonitor_id=new_id or leg.mixmonitor_id)
            self.remember(request.unique_id, leg.leg, resumed)
            return LegOutcome("RESUMED", leg.leg_id, leg.file, leg.leg, deferred, request.unique_id, leg.channel)

    async def _on_the_call(self, request: LegRequest, channel: Channel) -> tuple[LegRequest, Channel]:
        """Where a stop, pause or resume acts when the calls are followed: the named channel's
        own leg if it has one (a request recorded an agent's channel), else the leg of its
        call, which runs on the call's anchor, whichever channel of the call was named (the
        caller's, the old or the new agent's)."""
        if self.calls is None:
            return request, channel
        anchor = self.calls.anchor_of(request.unique_id)
        if anchor is None or anchor[0] == request.unique_id:
            return request, channel
        if await self._find_active(request.unique_id) is not None:
            return request, channel
        return replace(request, unique_id=anchor[0], channel=anchor[1]), self.calls.channel(*anchor)

    def proposed_number(self, unique_id: str) -> int:
        """The number a new leg of this unique id is written with; the database gives the
        next free one if it is taken."""
        return self._last_leg.get(unique_id, 0) + 1

    def call_turn(self, unique_id: str) -> "_CallTurn":
        """``async with``: one operation at a time on the legs of ``unique_id`` in this process."""
        return self._call(unique_id)

    async def settle_failed(self, leg: NewLeg) -> None:
        """Ends a leg written as recording whose MixMonitor did not start, as failed."""
        await self._settle(None, leg, "failed", by="mixmonitor")

    async def _apply(self, change: LegChange) -> bool:
        """Writes a change decided on what the database said a moment ago; True when it went to
        the journal. The database applies it only if the leg is still in the state it was read
        in: one that another process changed in between is left as that process made it, and
        said in the log."""
        persisted = await self.persister.write(change)
        result = persisted.result
        if result is not None and result.status != "CHANGED":
            log.warning("%s of leg %s of %s not applied (%s): another process changed the leg meanwhile",
                        change.action, change.leg_id, change.unique_id, result.status)
        return persisted.deferred

    async def _with_id(self, leg: ActiveLeg, channel: Channel) -> ActiveLeg:
        """``leg`` with the id of its running MixMonitor: a leg this process did not start (or
        remember) has it only on the channel, in the leg's own variable. Unchanged when the
        channel does not have it either (no MixMonitor of this leg runs there)."""
        if leg.mixmonitor_id:
            return leg
        mixmonitor_id = await channel.read_variable(mixmonitor_variable(leg.leg_id))
        if not mixmonitor_id:
            return leg
        found = replace(leg, mixmonitor_id=mixmonitor_id)
        self.remember(channel.unique_id, leg.leg, found)
        return found

    async def _mute(self, leg: ActiveLeg, state: bool) -> bool:
        """Mutes or unmutes over AMI; False when the manager is not there to do it."""
        if self.muter is None or not self.muter.connected or not leg.mixmonitor_id:
            return False
        try:
            await self.muter.mute(leg.channel, leg.mixmonitor_id, state)
        except AsteriskUnavailable as exc:
            log.warning("MixMonitorMute on %s failed (%s); stopping and restarting instead", leg.channel, exc)
            return False
        return True

    async def _silence(self, leg: ActiveLeg, channel: Channel) -> str:
        if await self._mute(leg, True):
            return "mute"
        if not leg.mixmonitor_id:
            raise AsteriskFailure("the leg has no MixMonitor id, so it cannot be paused")
        await channel.stop_mixmonitor(leg.mixmonitor_id)
        return "restart"

    async def _sound(self, leg: ActiveLeg, channel: Channel) -> str | None:
        if leg.pause_method == "mute":
            # The id first, as pause does: unmuting needs it as much as stopping does.
            leg = await self._with_id(leg, channel)
            if await self._mute(leg, False):
                return None
            if leg.mixmonitor_id:
                await channel.stop_mixmonitor(leg.mixmonitor_id)
        options = APPEND + self.settings.mixmonitor_options.replace(APPEND, "")
        # A new name for each restart: the leg's first variable still holds the stopped id.
        started = await channel.start_mixmonitor(leg.file, options, mixmonitor_variable(leg.leg_id, new_leg_id()[:8]))
        if started.mixmonitor_id is None:
            raise AsteriskFailure("MixMonitor did not restart: Asterisk gave no MixMonitor id")
        return started.mixmonitor_id

    # -- the end of a channel -------------------------------------------------------------

    async def channel_gone(self, unique_id: str, *, by: str = "hangup", known_only: bool = False) -> LegOutcome:
        """Closes the call's active leg as ended: its channel hung up. ``known_only`` looks
        only in memory (for the manager's Hangup events, which come for every channel)."""
        async with self._call(unique_id):
            leg = self._active.get(unique_id) if known_only else await self._find_active(unique_id)
            if leg is None:
                return LegOutcome("NOT_RECORDING")
            change = LegChange(leg.leg_id, unique_id, "end", utcnow(), state="ended", by=by, key=new_leg_id())
            deferred = (await self.persister.write(change)).deferred
            self.remember(unique_id, leg.leg, None)
            return LegOutcome("ENDED", leg.leg_id, leg.file, leg.leg, deferred)

    async def close_lost(self, leg: LegView, last_seen: datetime) -> bool:
        """Closes a leg whose channel no longer exists as ``lost``, at the last time it was
        known alive. False if it had been closed meanwhile (by a hangup, another process)."""
        async with self._call(leg.unique_id):
            change = LegChange(leg.id, leg.unique_id, "end", last_seen, state="lost", by="sweeper", key=new_leg_id())
            persisted = await self.persister.write(change)
            remembered = self._active.get(leg.unique_id)
            if remembered is not None and remembered.leg_id == leg.id:
                self.remember(leg.unique_id, leg.leg, None)
            return persisted.deferred or persisted.result.status == "CHANGED"
