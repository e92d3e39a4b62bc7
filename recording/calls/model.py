"""The calls Asterisk is carrying, as plain data: channels by Uniqueid, bridges by their id, and
calls by Linkedid, each call with its anchor and its current part. The tracker
(``tracker.py``) keeps it up to date from AMI events; nothing here reads a socket or a database.

NOTE: what identifies what (``../shared/asterisk/transfers/README.md``): a channel's Uniqueid
never changes and transfers create new channels rather than rename them; a bridge id changes at
every transfer; a channel's Linkedid can change (with SIP phones an attended transfer's target
takes the caller's Linkedid, and a channel joining a bridge takes the oldest Linkedid in it), so
it is taken from every event that carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..domain import channel_extension


@dataclass(slots=True)
class Channel:
    """A live channel. ``bridge`` is the id of the bridge it is in, None when in none;
    ``hanging_up`` is set by HangupRequest / SoftHangupRequest, before its Hangup; ``gone``
    by its Hangup (it leaves the model once the event is applied)."""

    uniqueid: str
    name: str
    linkedid: str
    bridge: str | None = None
    hanging_up: bool = False
    gone: bool = False

    @property
    def extension(self) -> str | None:
        """The extension of its name (``PJSIP/410-0000001a`` and ``Local/410@ctx-0001;1``
        give ``410``); None when the name has none."""
        return channel_extension(self.name) or None

    @property
    def twin(self) -> str | None:
        """For a half of a Local channel, the name of its other half (``;1`` <-> ``;2``)."""
        if self.name.startswith("Local/") and self.name[-2:] in (";1", ";2"):
            return self.name[:-1] + ("2" if self.name.endswith("1") else "1")
        return None


@dataclass(slots=True)
class Bridge:
    """A bridge and the unique ids of its channels, in the order they entered."""

    id: str
    members: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Part:
    """The part a call is in: its number, the agent (None: nobody), the agent's channel."""

    seq: int
    extension: str | None
    peer_uniqueid: str | None
    peer_channel: str | None


@dataclass(slots=True)
class Hints:
    """What recent events said about the current part, read when it changes.

    ``transfer``, ``redirect`` and ``pickup`` hold the time of the event that said it (they go
    stale after the tracker's hint window); ``transfer_bridge`` is where an attended transfer
    takes the caller; ``hold`` is set by the agent's Hold and cleared by Unhold;
    ``optimising`` holds the unique ids of Local channels being optimised away next to the
    anchor; ``continued`` says the anchor ran dialplan after leaving the agent."""

    transfer: float | None = None
    transfer_bridge: str | None = None
    redirect: float | None = None
    pickup: float | None = None
    hold: bool = False
    continued: bool = False
    optimising: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Call:
    """A call: every channel with its Linkedid. ``anchor`` is the unique id of the channel
    the call's recordings run on (see ``anchor_of``), None until it is known. ``part`` is the
    current part (None before the first and after the last); ``left_at`` is set while the
    anchor has left its agent and the tracker waits to learn why."""

    linkedid: str
    channels: set[str] = field(default_factory=set)
    anchor: str | None = None
    part: Part | None = None
    hints: Hints = field(default_factory=Hints)
    left_at: float | None = None
    ended: bool = False


class Model:
    """Every channel, bridge and call we know of. Channels go at their Hangup, bridges at
    their BridgeDestroy, calls once ended and without channels, so it holds only what is live."""

    # How many hung-up channels are remembered, so that an event carrying one after its Hangup
    # (a NewCallerid does, in the captures) does not bring it back.
    REMEMBERED_HANGUPS = 10_000

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.calls: dict[str, Call] = {}
        self._names: dict[str, str] = {}
        self._hung_up: dict[str, None] = {}

    # --- reading ---

    def by_name(self, name: str) -> Channel | None:
        uniqueid = self._names.get(name)
        return self.channels.get(uniqueid) if uniqueid is not None else None

    def call_of(self, channel: Channel) -> Call | None:
        return self.calls.get(channel.linkedid)

    def peer_of(self, channel: Channel) -> Channel | None:
        """The channel ``channel`` talks with: the other one in its bridge, the one that
        entered last when there are several; None when alone or in no bridge."""
        bridge = self.bridges.get(channel.bridge) if channel.bridge else None
        if bridge is None:
            return None
        for uniqueid in reversed(bridge.members):
            if uniqueid != channel.uniqueid and uniqueid in self.channels:
                return self.channels[uniqueid]
        return None

    def anchor_of(self, call: Call) -> Channel | None:
        """The channel a call's recordings run on: the caller's channel on the PBX side, which
        stays through blind and attended transfers, queues, Redirect and Local optimisation.
        That is the call's first channel (its Unique id is the Linkedid), or, when that is
        the ``;1`` half of a Local channel (an Originate, the captures' outside caller), its
        ``;2`` half, the one that runs the dialplan. None while not known."""
        origin = self.channels.get(call.linkedid)
        if origin is None:
            return None
        twin = origin.twin
        if twin is None or origin.name.endswith(";2"):
            return origin
        other = self.by_name(twin)
        return other if other is not None and other.linkedid == call.linkedid else None

    # --- changing ---

    def add_channel(self, uniqueid: str, name: str, linkedid: str) -> tuple[Channel | None, bool]:
        """The channel with that unique id, made if new (True when made); None for a channel
        that hung up."""
        channel = self.channels.get(uniqueid)
        if channel is not None:
            return channel, False
        if uniqueid in self._hung_up:
            return None, False
        channel = self.channels[uniqueid] = Channel(uniqueid, name, linkedid)
        self._names[name] = uniqueid
        self._call(linkedid).channels.add(uniqueid)
        return channel, True

    def rename(self, channel: Channel, name: str) -> None:
        if self._names.get(channel.name) == channel.uniqueid:
            del self._names[channel.name]
        channel.name = name
        self._names[name] = channel.uniqueid

    def relink(self, channel: Channel, linkedid: str) -> Call | None:
        """Moves a channel to the call ``linkedid``; returns the call it left."""
        old = self.calls.get(channel.linkedid)
        if old is not None:
            old.channels.discard(channel.uniqueid)
        channel.linkedid = linkedid
        self._call(linkedid).channels.add(channel.uniqueid)
        return old

    def enter(self, channel: Channel, bridge_id: str) -> None:
        if channel.bridge and channel.bridge != bridge_id:
            self.leave(channel)
        bridge = self.bridges.setdefault(bridge_id, Bridge(bridge_id))
        if channel.uniqueid not in bridge.members:
            bridge.members.append(channel.uniqueid)
        channel.bridge = bridge_id

    def leave(self, channel: Channel, bridge_id: str | None = None) -> None:
        """Takes the channel out of its bridge (only if that is ``bridge_id``, when given: a
        BridgeLeave from a bridge it already left by a merge changes nothing)."""
        if channel.bridge is None or (bridge_id is not None and channel.bridge != bridge_id):
            return
        bridge = self.bridges.get(channel.bridge)
        if bridge is not None and channel.uniqueid in bridge.members:
            bridge.members.remove(channel.uniqueid)
        channel.bridge = None

    def destroy_bridge(self, bridge_id: str) -> None:
        bridge = self.bridges.pop(bridge_id, None)
        for uniqueid in bridge.members if bridge else ():
            channel = self.channels.get(uniqueid)
            if channel is not None and channel.bridge == bridge_id:
                channel.bridge = None

    def remove_channel(self, channel: Channel) -> None:
        """The channel hung up: out of its bridge, its call and the tables; a call that
        ended and has no channel left goes too."""
        self.leave(channel)
        self.channels.pop(channel.uniqueid, None)
        self._hung_up[channel.uniqueid] = None
        if len(self._hung_up) > self.REMEMBERED_HANGUPS:
            del self._hung_up[next(iter(self._hung_up))]
        if self._names.get(channel.name) == channel.uniqueid:
            del self._names[channel.name]
        call = self.calls.get(channel.linkedid)
        if call is not None:
            call.channels.discard(channel.uniqueid)
            self.forget_if_done(call)

    def forget_if_done(self, call: Call) -> None:
        if not call.channels and (call.ended or call.anchor is None):
            self.calls.pop(call.linkedid, None)

    def _call(self, linkedid: str) -> Call:
        call = self.calls.get(linkedid)
        if call is None:
            call = self.calls[linkedid] = Call(linkedid)
        return call
