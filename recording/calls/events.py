"""AMI events applied to the model (``model.py``): channels made, renamed and moved between
calls from every snapshot an event carries, bridges entered, left, merged and destroyed, and the
hints that later say why a part changed (``model.Hints``). Deciding what changed in a call is
the tracker's (``tracker.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .model import Call, Channel, Model

# The keys of an event naming the bridges whose channels it concerns.
BRIDGE_KEYS = ("BridgeUniqueid", "ToBridgeUniqueid", "FromBridgeUniqueid", "OrigBridgeUniqueid",
               "SecondBridgeUniqueid", "DestBridgeUniqueid")


def snapshots(event: Mapping[str, str]) -> Iterable[tuple[str, str, str]]:
    """Every channel an event describes, as (Uniqueid, Channel, Linkedid): the plain snapshot
    and the prefixed ones (``Dest``, ``Transferer``, ``Transferee``, ``OrigTransferer``,
    ``SecondTransferer``, ``TransferTarget``, ``LocalOne``, ``LocalTwo``, ``Source``,
    ``Target``...): a prefix counts when its Channel, Uniqueid and Linkedid are all there."""
    for key, uniqueid in event.items():
        if not key.endswith("Uniqueid") or not uniqueid:
            continue
        prefix = key[:-8]
        name, linkedid = event.get(f"{prefix}Channel"), event.get(f"{prefix}Linkedid")
        if name and linkedid:
            yield uniqueid, name, linkedid


def linkedid_age(linkedid: str) -> tuple[int, int] | None:
    """(epoch, sequence) of a Uniqueid/Linkedid (``[system-]1796434729.260``), None if not in
    that form. A smaller value is an older call."""
    epoch, dot, sequence = linkedid.rpartition("-")[2].partition(".")
    if not dot or not epoch.isdigit() or not sequence.isdigit():
        return None
    return int(epoch), int(sequence)


@dataclass
class Applied:
    """What one event did: the calls it concerns (by Linkedid), the channels it made, the
    channels that hung up (still in the model, marked ``gone``, until the tracker has looked)."""

    touched: dict[str, Call] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    hung_up: list[Channel] = field(default_factory=list)
    # False when the event changed nothing a part depends on (a VarSet, a Newstate, a DTMF of
    # channels already known): most events, which the tracker then need not weigh.
    relevant: bool = False


class EventApplier:
    """Applies AMI events to a model (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def apply(self, event: Mapping[str, str], at: float) -> Applied:
        applied = Applied()
        self._hung_up = applied.hung_up
        name = event.get("Event", "").lower()
        handler = getattr(self, f"_on_{name}", None)
        if name == "varset" and not (event.get("Variable") == "BLINDTRANSFER" and event.get("Value")):
            handler = None  # the one variable a part depends on; the others are most events
        channels = self._apply_snapshots(event, applied)
        applied.relevant = applied.relevant or handler is not None
        if not applied.relevant:
            return applied
        touched = applied.touched
        for channel in channels:
            touched.setdefault(channel.linkedid, self.model.calls[channel.linkedid])
            self._touch_bridge(channel.bridge, touched)
        for bridge_id in (event.get(key) for key in BRIDGE_KEYS):
            self._touch_bridge(bridge_id, touched)
        if handler is not None:
            handler(event, at, touched)
        return applied

    def _apply_snapshots(self, event: Mapping[str, str], applied: Applied) -> list[Channel]:
        """Makes, renames and relinks the channels the event describes; returns them. A made or
        relinked channel makes the event relevant (the call it left is touched)."""
        model = self.model
        channels = []
        for uniqueid, name, linkedid in snapshots(event):
            channel, new = model.add_channel(uniqueid, name, linkedid)
            if channel is None:
                continue
            channels.append(channel)
            if new:
                applied.created.add(uniqueid)
                applied.relevant = True
            if channel.name != name:
                model.rename(channel, name)
            if channel.linkedid != linkedid and self._older(linkedid, channel.linkedid):
                old = model.relink(channel, linkedid)
                applied.relevant = True
                if old is not None:
                    applied.touched[old.linkedid] = old
        return channels

    @staticmethod
    def _older(new: str, old: str) -> bool:
        """Whether a Linkedid may replace another: only by an older call's (a channel joining a
        bridge takes the oldest Linkedid in it, bridge_channel.c), so a stale snapshot cannot
        move a channel back; ids not in epoch.sequence form are taken as they come."""
        new_age, old_age = linkedid_age(new), linkedid_age(old)
        return new_age is None or old_age is None or new_age < old_age

    def _touch_bridge(self, bridge_id: str | None, touched: dict[str, Call]) -> None:
        bridge = self.model.bridges.get(bridge_id) if bridge_id else None
        for uniqueid in bridge.members if bridge else ():
            channel = self.model.channels.get(uniqueid)
            call = self.model.call_of(channel) if channel else None
            if call is not None:
                touched.setdefault(call.linkedid, call)

    def _channel(self, event: Mapping[str, str], prefix: str = "") -> Channel | None:
        return self.model.channels.get(event.get(f"{prefix}Uniqueid", ""))

    def _on_rename(self, event, at, touched) -> None:
        channel = self._channel(event)
        if channel is not None and event.get("Newname"):
            self.model.rename(channel, event["Newname"])

    def _on_bridgeenter(self, event, at, touched) -> None:
        channel = self._channel(event)
        if channel is not None and event.get("BridgeUniqueid"):
            self.model.enter(channel, event["BridgeUniqueid"])
            self._touch_bridge(event["BridgeUniqueid"], touched)
            if event.get("BridgeType", "basic") == "basic":
                self._share_oldest_linkedid(event["BridgeUniqueid"], touched)

    def _share_oldest_linkedid(self, bridge_id: str, touched: dict[str, Call]) -> None:
        """NOTE: a channel entering a basic bridge (Dial's, a transfer's) gives every channel
        in it the oldest Linkedid among them (bridge_basic_push, bridge_channel.c), and no event
        says so: a call picker that entered first keeps showing its own Linkedid until its
        BridgeLeave (tests/captures/pickup). Done here as Asterisk does it."""
        members = [self.model.channels[u] for u in self.model.bridges[bridge_id].members if u in self.model.channels]
        ages = [(linkedid_age(c.linkedid), c.linkedid) for c in members]
        if len(members) < 2 or any(age is None for age, _ in ages):
            return
        oldest = min(ages)[1]
        for channel in members:
            if channel.linkedid != oldest:
                old = self.model.relink(channel, oldest)
                if old is not None:
                    touched[old.linkedid] = old
                touched.setdefault(oldest, self.model.calls[oldest])

    def _on_bridgeleave(self, event, at, touched) -> None:
        channel = self._channel(event)
        if channel is not None:
            self.model.leave(channel, event.get("BridgeUniqueid") or None)

    def _on_bridgedestroy(self, event, at, touched) -> None:
        self.model.destroy_bridge(event.get("BridgeUniqueid", ""))

    def _on_bridgemerge(self, event, at, touched) -> None:
        # NOTE: the merge of an attended transfer's bridges (capture 3) is the transfer. The
        # channels it moves each get their BridgeLeave and BridgeEnter after this event, and a
        # channel already leaving (the transferer that hung up) is not moved at all: its
        # BridgeLeave may come after the others' (bridge.c bridge_do_merge; seen on a real
        # Asterisk 22.10.1). So the model moves nobody here.
        if event.get("ToBridgeUniqueid") and event.get("FromBridgeUniqueid"):
            for call in touched.values():
                self._hint_transfer(call, at, None)

    def _on_hanguprequest(self, event, at, touched) -> None:
        channel = self._channel(event)
        if channel is not None:
            channel.hanging_up = True

    _on_softhanguprequest = _on_hanguprequest

    def _on_hangup(self, event, at, touched) -> None:
        channel = self._channel(event)
        if channel is None:
            return
        channel.hanging_up = channel.gone = True
        self._hung_up.append(channel)

    def _on_blindtransfer(self, event, at, touched) -> None:
        if event.get("Result", "Success") == "Success":
            for call in touched.values():
                # NOTE: the event may come after the caller's Newexten and BridgeLeave (seen on
                # a real Asterisk 22.10.1, as with SIP phones): a part the transfer already
                # ended (told by BLINDTRANSFER) is not hinted again, or the next agent's
                # answer would read as a transfer.
                if call.part is not None and call.part.extension is not None:
                    self._hint_transfer(call, at, None)

    def _on_varset(self, event, at, touched) -> None:
        # NOTE: BLINDTRANSFER is set on the transferee and the transferer before the goto that
        # takes the caller out of the bridge (bridge_basic.c), so before the caller's Newexten
        # and BridgeLeave, which the BlindTransfer event may follow: it tells a blind transfer
        # from an AMI Redirect (which sets nothing) in time. It is set to '' when the caller
        # enters its next bridge (not passed here).
        for call in touched.values():
            if call.part is not None and call.part.extension is not None:
                self._hint_transfer(call, at, None)

    def _on_attendedtransfer(self, event, at, touched) -> None:
        if event.get("Result", "Success") != "Success":
            return
        destination = event.get("DestBridgeUniqueid") if event.get("DestType") == "Bridge" else None
        transferee = event.get("TransfereeUniqueid")
        for call in touched.values():
            # NOTE: only the transferee is taken into the destination bridge; the transferers'
            # calls (with SIP phones the consultation is a call of its own) just lose them.
            self._hint_transfer(call, at, destination if call.anchor == transferee else None)

    def _on_hold(self, event, at, touched) -> None:
        self._set_hold(event, True)

    def _on_unhold(self, event, at, touched) -> None:
        self._set_hold(event, False)

    def _on_localoptimizationbegin(self, event, at, touched) -> None:
        # NOTE: DestUniqueId and LocalOptimizationEnd's Success are wrong in Asterisk 22 (the
        # captures' README); the Local pair's ids and BridgeEnter's SwapUniqueid are right.
        pair = {event.get("LocalOneUniqueid", ""), event.get("LocalTwoUniqueid", "")} - {""}
        for call in touched.values():
            call.hints.optimising |= pair

    def _on_localoptimizationend(self, event, at, touched) -> None:
        pair = {event.get("LocalOneUniqueid", ""), event.get("LocalTwoUniqueid", "")}
        for call in touched.values():
            call.hints.optimising -= pair

    def _on_pickup(self, event, at, touched) -> None:
        call = self.model.calls.get(event.get("TargetLinkedid", ""))
        if call is not None:
            call.hints.pickup = at

    def _on_newexten(self, event, at, touched) -> None:
        channel = self._channel(event)
        call = self.model.call_of(channel) if channel else None
        if call is None or call.anchor != channel.uniqueid or call.part is None:
            return
        if call.left_at is not None:
            call.hints.continued = True
        elif call.part.extension is not None and self.model.peer_of(channel) is not None:
            # NOTE: the anchor runs dialplan while bridged: it is being taken out of the
            # bridge by a goto (AMI Redirect; a blind transfer says so itself, first).
            call.hints.redirect = at

    def _on_dialbegin(self, event, at, touched) -> None:
        channel = self._channel(event)
        call = self.model.call_of(channel) if channel else None
        if call is not None and call.anchor == channel.uniqueid and call.left_at is not None:
            call.hints.continued = True

    _on_queuecallerjoin = _on_dialbegin

    def _hint_transfer(self, call: Call, at: float, destination: str | None) -> None:
        call.hints.transfer = at
        call.hints.transfer_bridge = destination

    def _set_hold(self, event: Mapping[str, str], state: bool) -> None:
        channel = self._channel(event)
        if channel is None:
            return
        for call in self._calls_with_peer(channel):
            call.hints.hold = state

    def _calls_with_peer(self, channel: Channel) -> list[Call]:
        """The calls whose current part's agent is on ``channel``."""
        found = []
        bridge = self.model.bridges.get(channel.bridge) if channel.bridge else None
        for uniqueid in bridge.members if bridge else ():
            other = self.model.channels.get(uniqueid)
            call = self.model.call_of(other) if other else None
            if call is not None and call.anchor == uniqueid and call.part is not None \
                    and call.part.peer_uniqueid == channel.uniqueid:
                found.append(call)
        return found
