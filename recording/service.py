"""The recording service: the rules for starting a recording, whichever door the request came in
by. It knows a channel only through :class:`~recording.domain.Channel` and the database only
through the persister and the directory, so FastAGI and HTTP/AMI share every rule here."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from agi.protocol import is_clean_text

from .config import Settings, render_file
from .directory import Directory
from .domain import Channel, CommitResult, NewLeg, StartOutcome, StartRequest, TagUpdate, UserRef, channel_extension
from .errors import Invalid, StorageRefused, StorageUnavailable
from .persist import Persister

log = logging.getLogger("recording.service")

MAX_TAG = 255
MAX_LOGIN = 128
# How many calls the service remembers legs of; past it the database constraint still holds.
REMEMBERED_CALLS = 100_000


@dataclass(frozen=True)
class ActiveLeg:
    leg_id: str
    leg: int
    file: str
    tag: str | None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    def __init__(self, settings: Settings, directory: Directory, persister: Persister):
        self.settings = settings
        self.directory = directory
        self.persister = persister
        self._active: OrderedDict[str, ActiveLeg] = OrderedDict()
        self._last_leg: OrderedDict[str, int] = OrderedDict()
        self._starting: dict[str, asyncio.Future] = {}

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

    # -- start -----------------------------------------------------------------------------

    async def start(self, request: StartRequest, channel: Channel) -> StartOutcome:
        """Starts recording ``channel`` unless this service already records it.

        Raises Invalid for a bad request, AsteriskFailure when MixMonitor does not start and
        StorageUnavailable when the leg cannot be stored (the MixMonitor keeps running, and the
        error says so). The caller must have checked the apiKey.
        """
        tag = check_text("tag", request.tag, MAX_TAG) or None
        agent = await self.agent(request.agent_login)
        unique_id = request.unique_id
        while unique_id in self._starting:
            # NOTE: two starts racing for one call: the second waits for the first's answer.
            await asyncio.shield(self._starting[unique_id])
        active = self._active.get(unique_id)
        if active is not None:
            return await self._already(unique_id, active, tag)
        done = asyncio.get_running_loop().create_future()
        self._starting[unique_id] = done
        try:
            return await self._start_new(request, channel, agent, tag)
        finally:
            del self._starting[unique_id]
            done.set_result(None)

    async def _already(self, unique_id: str, active: ActiveLeg, tag: str | None) -> StartOutcome:
        deferred = False
        if tag is not None and tag != active.tag:
            deferred = (await self.persister.write(TagUpdate(unique_id, tag, utcnow()))).deferred
            self.remember(unique_id, active.leg, ActiveLeg(active.leg_id, active.leg, active.file, tag))
        return StartOutcome("ALREADY_RECORDING", active.leg_id, active.file, active.leg, deferred)

    async def _start_new(
        self, request: StartRequest, channel: Channel, agent: tuple[UserRef | None, str | None], tag: str | None
    ) -> StartOutcome:
        unique_id = request.unique_id
        extension = channel_extension(request.channel)
        number = self._last_leg.get(unique_id, 0) + 1
        started = utcnow()
        file = render_file(
            self.settings.monitor_template, uniqueid=unique_id, leg=number, extension=extension, when=started
        )
        mixmonitor = await channel.start_mixmonitor(file, self.settings.mixmonitor_options)
        # From here on the recording exists, so the leg is written whatever happens next.
        state = "ended" if mixmonitor.hung_up else "recording"
        leg = NewLeg(
            id=uuid.uuid4().hex, unique_id=unique_id, leg=number, channel=request.channel,
            extension=extension, file=file, mixmonitor_id=mixmonitor.mixmonitor_id, tag=tag,
            agent=agent[0], agent_login=agent[1], source=request.source, state=state, started_at=started,
            ended_at=utcnow() if mixmonitor.hung_up else None,
        )
        try:
            persisted = await self.persister.write(leg)
        except (StorageRefused, StorageUnavailable) as exc:
            # No recording without its record: a file nobody can find by its tag is lost.
            if mixmonitor.mixmonitor_id:
                await channel.stop_mixmonitor(mixmonitor.mixmonitor_id)
            raise type(exc)(f"the recording was stopped because it could not be stored: {exc}") from exc
        if persisted.deferred:
            self.remember(unique_id, number, ActiveLeg(leg.id, number, file, tag) if state == "recording" else None)
            return StartOutcome("STARTED", leg.id, file, number, deferred=True)
        result = persisted.result
        if result.status == "ALREADY_RECORDING":
            return await self._lost_race(unique_id, channel, leg, result, tag)
        active = ActiveLeg(result.leg_id, result.leg, result.file, tag) if state == "recording" else None
        self.remember(unique_id, result.leg, active)
        return StartOutcome("STARTED", result.leg_id, result.file, result.leg)

    async def _lost_race(
        self, unique_id: str, channel: Channel, leg: NewLeg, winner: CommitResult, tag: str | None
    ) -> StartOutcome:
        """Another process recorded this call first: stop the MixMonitor just started (by its
        id, so the winner's keeps running) and answer with the winner's leg."""
        log.info("%s is already recorded by leg %s; stopping the duplicate MixMonitor", unique_id, winner.leg_id)
        if leg.mixmonitor_id:
            await channel.stop_mixmonitor(leg.mixmonitor_id)
        active = ActiveLeg(winner.leg_id, winner.leg, winner.file, tag)
        self.remember(unique_id, winner.leg, active)
        return StartOutcome("ALREADY_RECORDING", winner.leg_id, winner.file, winner.leg)
