"""The call tracker: AMI events in, the transitions of each call out (``transitions.py``).

``CallTracker.feed(event, at)`` takes one AMI event as the AMI client hands it to subscribers
(a dict of str to str) and the time it arrived, updates the model (``model.py``), and returns
what changed in the calls the event concerns: parts that began or ended, a peer swapped within
a part, a call that ended. One log line per change (``call <linkedid>: <from> -> <cause> ->
<to>``). It acts on nothing: the acting (MixMonitor, legs) reads the transitions.

How a change is decided: after each event the anchor's bridge peer is compared with the current
part's agent. A new agent (or an agent where there was none) changes the part at once, its
cause taken from what recent events said (``Hints``). The anchor left alone or outside any
bridge ends the agent's part only once an event says why (a transfer, the agent's or the
caller's hangup, a Redirect, a hold): until then the call waits (``left_at``), because with SIP
phones the caller's BridgeLeave comes *before* the BlindTransfer event, and a Local channel
optimisation takes the caller out of a bridge and into another. The part still ends at the time
the anchor left. ``settle()`` closes what still waits (the acting side calls it after a quiet
spell). Facts behind each rule: ``../shared/asterisk/transfers/README.md``.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

from .model import Call, Channel, Hints, Model, Part
from .transitions import (
    CallEnded, PartBegan, PartEnded, PeerChanged, Transition, describe_part, printable,
)

log = logging.getLogger("recording.calls")

# Transfer, redirect and pickup events come within milliseconds of the bridge changes they
# explain (about 2 ms in the captures); one older than this explains nothing any more.
HINT_WINDOW = 2.0
# The keys of an event naming the bridges whose channels it concerns.
BRIDGE_KEYS = ("BridgeUniqueid", "ToBridgeUniqueid", "FromBridgeUniqueid", "OrigBridgeUniqueid",
               "SecondBridgeUniqueid", "DestBridgeUniqueid")
# Dialplan activity of the anchor.
DIALPLAN_EVENTS = ("Newexten", "DialBegin", "QueueCallerJoin")


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


class CallTracker:
    """See the module docstring. ``model`` is the state, readable (``find_anchor``) and
    rebuilt from Asterisk's listings by ``rebuild.rebuild``."""

    def __init__(self, model: Model | None = None, hint_window: float = HINT_WINDOW) -> None:
        self.model = model if model is not None else Model()
        self.hint_window = hint_window

    # --- input ---

    def feed(self, event: Mapping[str, str], at: float) -> list[Transition]:
        """Applies one AMI event received at ``at`` (seconds, the caller's clock) and returns
        the transitions it caused, in order (empty for most events)."""
        out: list[Transition] = []
        touched: dict[str, Call] = {}
        self._hung_up: list[Channel] = []
        self._now = at
        name = event.get("Event", "")
        created = self._apply_snapshots(event, touched, at)
        for bridge_id in (event.get(key) for key in BRIDGE_KEYS):
            self._touch_bridge(bridge_id, touched)
        handler = getattr(self, f"_on_{name.lower()}", None)
        if handler is not None:
            handler(event, at, touched)
        for call in touched.values():
            self._evaluate(call, at, out, created)
        for channel in self._hung_up:
            self.model.remove_channel(channel)
        for call in touched.values():
            self.model.forget_if_done(call)
        return out

    def settle(self, at: float) -> list[Transition]:
        """Ends every agent's part that waits for a cause (the anchor left its agent and no
        event said why) with the best guess: ``hangup`` if the agent's channel is gone or going,
        else ``left``. The acting side calls it after a quiet spell (say a second) so a missing
        event cannot keep the agent's leg open."""
        out: list[Transition] = []
        self._now = at
        for call in list(self.model.calls.values()):
            if call.left_at is not None and not call.ended and call.part is not None:
                anchor = self.model.channels.get(call.anchor or "")
                if anchor is not None:
                    peer = self.model.channels.get(call.part.peer_uniqueid or "")
                    cause = "hangup" if peer is None or self._going(peer) else "left"
                    self._leave_agent(call, anchor, cause, out)
        return out

    def waiting(self) -> list[str]:
        """The Linkedids of the calls whose anchor left its agent for a reason not known yet."""
        return [c.linkedid for c in self.model.calls.values() if c.left_at is not None and not c.ended]

    # --- the model from each event ---

    def _apply_snapshots(self, event: Mapping[str, str], touched: dict[str, Call], at: float) -> set[str]:
        created = set()
        model = self.model
        for uniqueid, name, linkedid in snapshots(event):
            channel, new = model.add_channel(uniqueid, name, linkedid)
            if channel is None:
                continue
            if new:
                created.add(uniqueid)
            if channel.name != name:
                model.rename(channel, name)
            if channel.linkedid != linkedid and self._older(linkedid, channel.linkedid):
                old = model.relink(channel, linkedid)
                if old is not None:
                    touched[old.linkedid] = old
            touched.setdefault(channel.linkedid, model.calls[channel.linkedid])
            if channel.bridge:
                self._touch_bridge(channel.bridge, touched)
        return created

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
        into, source = event.get("ToBridgeUniqueid"), event.get("FromBridgeUniqueid")
        if into and source:
            # NOTE: the merge of an attended transfer's bridges (capture 3) is the transfer.
            for call in touched.values():
                self._hint_transfer(call, at, None)
            self.model.merge(into, source)
            self._touch_bridge(into, touched)

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

    # --- deciding what changed ---

    def _evaluate(self, call: Call, at: float, out: list[Transition], created: set[str]) -> None:
        """Compares the anchor's situation with the call's part and records the change."""
        if call.ended:
            return
        if call.anchor is None:
            anchor = self.model.anchor_of(call)
            if anchor is None or anchor.gone:
                return
            call.anchor = anchor.uniqueid
            self._begin(call, anchor, "start" if anchor.uniqueid in created else "seen", at, out)
        anchor = self.model.channels.get(call.anchor)
        if anchor is None:
            return
        if anchor.linkedid != call.linkedid:
            self._end(call, anchor, "merged", at, out)
            return
        if anchor.gone:
            self._end(call, anchor, "hangup", at, out)
            return
        if call.part is None:
            return  # the anchor is hanging up after its last part
        peer = self.model.peer_of(anchor)
        if peer is not None and peer.extension is not None:
            self._with_agent(call, anchor, peer, at, out)
        elif call.part.extension is not None:
            if call.left_at is None:
                call.left_at = at
            cause = self._departure(call, anchor)
            if cause is not None:
                self._leave_agent(call, anchor, cause, out)

    def _with_agent(self, call: Call, anchor: Channel, peer: Channel, at: float, out: list[Transition]) -> None:
        part = call.part
        if part.extension == peer.extension:
            call.left_at = None
            call.hints.continued = False
            if part.peer_uniqueid != peer.uniqueid:
                cause = "optimisation" if call.hints.optimising else (
                    "transfer" if self._fresh(call.hints.transfer) else "answer")
                before = part.peer_channel
                part.peer_uniqueid, part.peer_channel = peer.uniqueid, peer.name
                out.append(PeerChanged(call.linkedid, part.seq, anchor.uniqueid, anchor.name, peer.uniqueid,
                                       peer.name, part.extension, cause, at))
                self._log(call, part.seq, part.extension, before, cause, part.seq, part.extension, peer.name)
            return
        self._change(call, anchor, peer, self._arrival(call), call.left_at or at, at, out)

    def _arrival(self, call: Call) -> str:
        """Why the anchor is now with a (new) agent."""
        hints = call.hints
        if hints.optimising and call.part.extension is not None:
            return "optimisation"
        if self._fresh(hints.pickup):
            return "pickup"
        if self._fresh(hints.transfer):
            return "transfer"
        # NOTE: straight from one agent to another with no transfer event yet: the caller
        # moved from bridge to bridge, which only a transfer does (with SIP phones the
        # AttendedTransfer event comes after the move).
        return "answer" if call.part.extension is None else "transfer"

    def _departure(self, call: Call, anchor: Channel) -> str | None:
        """Why the anchor is no longer with its agent, or None while no event has said it."""
        hints = call.hints
        if anchor.hanging_up:
            return None  # the call ends at the anchor's Hangup, with this part
        if hints.optimising:
            return None  # a Local channel pair is being swapped: the anchor is on its way
        if self._fresh(hints.transfer):
            if hints.transfer_bridge and anchor.bridge != hints.transfer_bridge:
                return None  # an attended transfer is moving the anchor into that bridge
            return "transfer"
        peer = self.model.channels.get(call.part.peer_uniqueid or "")
        if peer is None or self._going(peer):
            return "hangup"
        if self._fresh(hints.redirect):
            return "redirect"
        if hints.hold and anchor.bridge is not None:
            return "hold"
        if hints.continued:
            return "left"
        return None

    def _going(self, channel: Channel) -> bool:
        """Whether a channel hung up or is hanging up (for a Local half, either half)."""
        if channel.gone or channel.hanging_up:
            return True
        twin = self.model.by_name(channel.twin) if channel.twin else None
        return twin is not None and (twin.gone or twin.hanging_up)

    def _fresh(self, when: float | None) -> bool:
        return when is not None and self._now - when <= self.hint_window

    # --- recording a change ---

    def _begin(self, call: Call, anchor: Channel, cause: str, at: float, out: list[Transition]) -> None:
        """The call's first part (as we see it)."""
        peer = self.model.peer_of(anchor)
        if peer is not None and peer.extension is None:
            peer = None
        call.part = Part(1, peer.extension if peer else None, peer.uniqueid if peer else None,
                         peer.name if peer else None)
        out.append(PartBegan(call.linkedid, 1, anchor.uniqueid, anchor.name, call.part.peer_uniqueid,
                             call.part.peer_channel, call.part.extension, cause, at))
        self._log(call, None, None, None, cause, 1, call.part.extension, call.part.peer_channel)

    def _leave_agent(self, call: Call, anchor: Channel, cause: str, out: list[Transition]) -> None:
        """The agent's part ends where the anchor left it; a part with no agent follows
        (none when the anchor itself is hanging up)."""
        left_at = call.left_at if call.left_at is not None else self._now
        if anchor.hanging_up:
            part = call.part
            out.append(PartEnded(call.linkedid, part.seq, anchor.uniqueid, anchor.name, part.peer_uniqueid,
                                 part.peer_channel, part.extension, cause, left_at))
            self._log(call, part.seq, part.extension, part.peer_channel, cause, None, None, None)
            call.part, call.left_at = None, None
            return
        self._change(call, anchor, None, cause, left_at, left_at, out)

    def _change(self, call: Call, anchor: Channel, peer: Channel | None, cause: str, ended_at: float,
                began_at: float, out: list[Transition]) -> None:
        old = call.part
        out.append(PartEnded(call.linkedid, old.seq, anchor.uniqueid, anchor.name, old.peer_uniqueid,
                             old.peer_channel, old.extension, cause, ended_at))
        new = call.part = Part(old.seq + 1, peer.extension if peer else None, peer.uniqueid if peer else None,
                               peer.name if peer else None)
        out.append(PartBegan(call.linkedid, new.seq, anchor.uniqueid, anchor.name, new.peer_uniqueid,
                             new.peer_channel, new.extension, cause, began_at))
        self._log(call, old.seq, old.extension, old.peer_channel, cause, new.seq, new.extension, new.peer_channel)
        call.left_at = None
        call.hints = Hints(optimising=call.hints.optimising)

    def _end(self, call: Call, anchor: Channel, cause: str, at: float, out: list[Transition]) -> None:
        part = call.part
        if part is not None:
            ended_at = call.left_at if call.left_at is not None else at
            out.append(PartEnded(call.linkedid, part.seq, anchor.uniqueid, anchor.name, part.peer_uniqueid,
                                 part.peer_channel, part.extension, cause, ended_at))
        out.append(CallEnded(call.linkedid, anchor.uniqueid, anchor.name, cause, at))
        log.info("call %s: %s -> %s -> ended", printable(call.linkedid),
                 describe_part(part.seq, part.extension, part.peer_channel) if part else "-", cause)
        call.part, call.left_at, call.ended = None, None, True

    @staticmethod
    def _log(call: Call, old_seq, old_extension, old_peer, cause, new_seq, new_extension, new_peer) -> None:
        log.info("call %s: %s -> %s -> %s", printable(call.linkedid), describe_part(old_seq, old_extension, old_peer),
                 cause, describe_part(new_seq, new_extension, new_peer))
