"""The values the service, the store and the front doors pass between them.

The ones made for every session are slotted, not frozen, dataclasses (a frozen one costs three
times as much to make); they are treated as immutable all the same.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import ContextManager, Mapping, Protocol


# The group whose members may access every leg, whoever owns it (the vendor's name).
RECORDING_MANAGER = "Recording Manager"
# Who owns a leg, by the rule that decided it (README, "Ownership of the recording leg").
OWNERSHIP_RULES = ("AGENT", "EXTENSION", "DEFAULT")
# A leg is written as "recording" before its MixMonitor answers (the write overlaps the AGI
# round trips); one whose MixMonitor then did not start is settled as "failed". An ended leg
# whose audio was deleted (retention) stays, as "purged", with when and why.
LEG_STATES = ("recording", "paused", "stopped", "ended", "lost", "failed", "purged")
ACTIVE_STATES = ("recording", "paused")
# The states of a leg whose MixMonitor ran and has ended: its file is there to keep or delete.
ENDED_STATES = ("stopped", "ended", "lost")


def utcnow() -> datetime:
    """Now, in UTC: the time every leg, pause, purge and lease is stamped with."""
    return datetime.now(timezone.utc)


def mixmonitor_variable(leg_id: str, run: str = "") -> str:
    """The channel variable MixMonitor's ``i()`` option stores a leg's recording id in, whichever
    door started it (over AMI the same id also comes back as MixMonitorID in the answer).

    NOTE: one name per leg (and per restart of its MixMonitor, ``run``): a name used once cannot
    hold a stale id from an earlier MixMonitor on the channel, so it needs no clearing before
    MixMonitor runs (MixMonitor answers 0 even when its thread did not start, app_mixmonitor.c),
    and anyone who knows the leg can read the id from the channel while the recording runs.
    """
    return f"RECORDING_MIXMON_{leg_id}_{run}" if run else f"RECORDING_MIXMON_{leg_id}"


class LegIds:
    """Random leg ids in uuid4's hex form, drawn from the OS 256 at a time: one getrandom()
    per leg showed in profiles of the start path (a system call per session)."""

    __slots__ = ("_pool",)

    def __init__(self):
        self._pool: list[str] = []

    def __call__(self) -> str:
        pool = self._pool
        if not pool:
            raw = os.urandom(16 * 256)
            pool.extend(uuid.UUID(bytes=raw[i:i + 16], version=4).hex for i in range(0, len(raw), 16))
        return pool.pop()


new_leg_id = LegIds()
# A forked child must not hand out the ids its parent drew.
os.register_at_fork(after_in_child=new_leg_id._pool.clear)


def system_of(unique_id: str) -> str:
    """The Asterisk system name a unique id carries: ``pbx1-1795825765.3`` gives ``pbx1``, and
    ``1795825765.3`` (an Asterisk without ``systemname`` in asterisk.conf) gives ''. Several
    Asterisks sharing one database must each have their own (their unique ids would collide)."""
    system, dash, number = unique_id.rpartition("-")
    return system if dash and _SEQUENCE.fullmatch(number) else ""


_SEQUENCE = re.compile(r"[0-9]+\.[0-9]+")


@functools.lru_cache(maxsize=16384)  # NOTE: asked for every AMI event's channels; names repeat
def channel_extension(channel: str) -> str:
    """The extension of a channel name: the part between the technology and the last ``-``
    (``PJSIP/410-0000001a`` gives ``410``); for a Local channel its ``@context`` and ``;N``
    half go too (``Local/410@ctx-00000001;2`` gives ``410``). '' if there is none."""
    _, _, device = channel.partition("/")
    device = device.split(";", 1)[0]
    if "-" in device:
        device = device.rpartition("-")[0]
    return device.split("@", 1)[0]


@dataclass(frozen=True)
class UserRef:
    id: int
    login: str
    groups: frozenset[str] = frozenset()

    @property
    def is_manager(self) -> bool:
        return RECORDING_MANAGER in self.groups


@dataclass(frozen=True)
class DirectorySnapshot:
    """What the service keeps in memory: the apiKey hash, the users by folded login, and the
    extension attachments (extension -> user id)."""

    api_key_hash: str | None
    users: Mapping[str, UserRef] = field(default_factory=dict)
    attachments: Mapping[str, int] = field(default_factory=dict)

    def user(self, login: str) -> UserRef | None:
        return self.users.get(login.casefold())

    def attached(self, extension: str) -> int | None:
        """The id of the user attached to ``extension``, or None."""
        return self.attachments.get(extension)


@dataclass(slots=True)
class NewLeg:
    """A leg to write: everything about a MixMonitor that was started.

    ``agent`` set means the AGENT rule; ``agent_login`` set instead means AGENT by a login
    that could not be looked up when the recording started (the database was away): the store
    resolves it when the write reaches the database. Neither means the store resolves the user
    attached to ``extension`` inside the write's transaction (EXTENSION), or DEFAULT.
    """

    id: str
    unique_id: str
    leg: int
    channel: str
    extension: str
    file: str
    mixmonitor_id: str | None
    tag: str | None
    agent: UserRef | None
    source: str
    state: str
    started_at: datetime
    ended_at: datetime | None = None
    agent_login: str | None = None
    # A leg of a call followed through a transfer or a queue: the call (Asterisk's Linkedid), the
    # part of the call it records (numbered by the call tracker, the same in every process that
    # heard the call's events), and the leg it took over from (see Store.take_over). None for a
    # leg a request started.
    linkedid: str | None = None
    part: int | None = None
    follows: str | None = None


@dataclass(slots=True)
class TagUpdate:
    """A new tag for a call already being recorded: written to its call record."""

    unique_id: str
    tag: str
    at: datetime


@dataclass(slots=True)
class LegChange:
    """A change to a leg that exists: ``pause``, ``resume``, or ``end`` (with ``state``
    stopped, ended or lost). ``by`` says who or what: a login, ``dialplan``, ``hangup``,
    ``sweeper``. A pause has its ``method`` (mute or restart); a resume by restart carries the
    new MixMonitor's id.

    ``key`` names this change once and for all (made where it was decided): the store applies
    a key once, so a journal replayed twice (a crash in the middle of a replay) changes
    nothing the second time. A change older than the leg's last change is not applied over it
    (see Store._change). Changes journaled by an older version have no key."""

    leg_id: str
    unique_id: str
    action: str
    at: datetime
    state: str | None = None
    by: str | None = None
    method: str | None = None
    mixmonitor_id: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Pause:
    paused_at: datetime
    resumed_at: datetime | None
    method: str


@dataclass(frozen=True)
class LegView:
    """A leg as read back from the store."""

    id: str
    unique_id: str
    leg: int
    call_record_id: int
    tag: str | None
    external_reference: str | None
    owner: str | None
    ownership: str
    file: str
    channel: str
    extension: str
    mixmonitor_id: str | None
    source: str
    state: str
    start: datetime
    end: datetime | None
    ended_by: str | None = None
    pauses: tuple[Pause, ...] = ()
    owner_id: int | None = None
    # The file once complete: its size and SHA-256, and when they were taken (None: not yet).
    file_size: int | None = None
    file_sha256: str | None = None
    hashed_at: datetime | None = None
    # A legal hold: while set, the leg's audio is never purged.
    held_at: datetime | None = None
    held_by: str | None = None
    hold_reason: str | None = None
    # A purge begins by recording its intent (when, why), deletes the file, then marks the leg
    # purged, keeping the state it ended in.
    purge_started_at: datetime | None = None
    purge_reason: str | None = None
    purged_at: datetime | None = None
    state_before_purge: str | None = None
    # A leg of a followed call: its Linkedid, its part and the leg it took over from (see NewLeg).
    linkedid: str | None = None
    part: int | None = None
    follows: str | None = None

    @property
    def held(self) -> bool:
        return self.held_at is not None

    @property
    def has_audio(self) -> bool:
        """Whether the leg ever had a file and it was not purged (a failed start recorded nothing)."""
        return self.state not in ("failed", "purged")

    def duration(self, now: datetime) -> float:
        """Seconds from start to end (to ``now`` while the leg is still recording)."""
        return max(0.0, ((self.end or now) - self.start).total_seconds())

    def recorded(self, now: datetime) -> float:
        """:meth:`duration` less the paused spans: the seconds of the call that are heard."""
        stop = self.end or now
        paused = sum(
            max(0.0, (min(p.resumed_at or stop, stop) - p.paused_at).total_seconds()) for p in self.pauses
        )
        return max(0.0, self.duration(now) - paused)

    def visible_to(self, user: UserRef) -> bool:
        """Owners see their own legs; 'Recording Manager' members see every leg, including
        DEFAULT ones, which have no owner."""
        return user.is_manager or (self.owner is not None and self.owner.casefold() == user.login.casefold())

    def as_json(self, now: datetime) -> dict:
        return {
            "id": self.id,
            "uniqueId": self.unique_id,
            "leg": self.leg,
            "tag": self.tag,
            "externalReference": self.external_reference,
            "owner": self.owner,
            "ownership": self.ownership,
            "file": self.file,
            "channel": self.channel,
            "extension": self.extension,
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "state": self.state,
            "endedBy": self.ended_by,
            "duration": round(self.duration(now), 3),
            "recorded": round(self.recorded(now), 3),
            "pauses": [
                {"paused": p.paused_at.isoformat(), "resumed": p.resumed_at.isoformat() if p.resumed_at else None,
                 "method": p.method}
                for p in self.pauses
            ],
            "fileSize": self.file_size,
            "sha256": self.file_sha256,
            "hashedAt": _iso(self.hashed_at),
            "held": self.held,
            "heldAt": _iso(self.held_at),
            "heldBy": self.held_by,
            "holdReason": self.hold_reason,
            "purgeStarted": _iso(self.purge_started_at),
            "purgedAt": _iso(self.purged_at),
            "purgeReason": self.purge_reason,
            "linkedid": self.linkedid,
            "part": self.part,
            "follows": self.follows,
        }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


@dataclass(slots=True)
class CommitResult:
    """What became of one write.

    ``status`` is STARTED (the leg was written), ALREADY_RECORDING (another leg of that call
    is active, and the other fields describe that one), APPLIED (this very leg was written
    before: a replay) or TAGGED (a TagUpdate, which has no leg fields).
    """

    status: str
    unique_id: str
    leg_id: str | None = None
    leg: int | None = None
    file: str | None = None
    ownership: str | None = None
    owner_id: int | None = None


@dataclass(slots=True)
class StartRequest:
    unique_id: str
    channel: str
    agent_login: str | None
    tag: str | None
    source: str


@dataclass(slots=True)
class StartOutcome:
    """STARTED or ALREADY_RECORDING, with the leg the caller should know about. ``deferred``:
    the leg is in the local journal, on its way to the database."""

    status: str
    leg_id: str
    file: str
    leg: int
    deferred: bool = False
    # The channel the leg records, when it is not the one the request named (a call followed
    # through a transfer is recorded on its caller's channel): its unique id and name.
    unique_id: str = ""
    channel: str = ""


@dataclass(slots=True)
class MixMonitorStart:
    """What a channel says after being asked to record: the MixMonitor id (None if Asterisk
    gave none), and whether the channel was found hung up on the way."""

    mixmonitor_id: str | None
    hung_up: bool = False


class Channel(Protocol):
    """The live channel a recording is started on (over FastAGI or AMI)."""

    unique_id: str
    name: str

    async def start_mixmonitor(self, file: str, options: str, id_variable: str) -> MixMonitorStart:
        """Starts MixMonitor writing ``file``, its id stored in the channel variable
        ``id_variable``; raises AsteriskFailure when Asterisk refuses or gives no id."""

    async def read_variable(self, name: str) -> str | None:
        """A channel variable's value, None when unset (the id of a leg's MixMonitor that this
        process did not start). Raises AsteriskFailure or AsteriskUnavailable."""

    async def stop_mixmonitor(self, mixmonitor_id: str) -> None:
        """Stops the MixMonitor with that id (never 'the most recent one')."""

    def hold(self) -> ContextManager:
        """A context in which the request's own deadline waits: the work in it must finish
        once begun (a MixMonitor started must get its leg written)."""
