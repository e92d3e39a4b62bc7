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
from typing import Mapping

from .events import EventApplier
from .model import Call, Channel, Hints, Model, Part
from .transitions import (
    CallEnded, PartBegan, PartEnded, PeerChanged, Transition, describe_part, printable,
)

log = logging.getLogger("recording.calls")

# Transfer, redirect and pickup events come within milliseconds of the bridge changes they
# explain (about 2 ms in the captures); one older than this explains nothing any more.
HINT_WINDOW = 2.0


class CallTracker:
    """See the module docstring. ``model`` is the state, readable (``find_anchor``) and
    rebuilt from Asterisk's listings by ``rebuild.rebuild``."""

    def __init__(self, model: Model | None = None, hint_window: float = HINT_WINDOW) -> None:
        self.model = model if model is not None else Model()
        self.hint_window = hint_window
        self._events = EventApplier(self.model)
        self._now = 0.0

    # --- input ---

    def feed(self, event: Mapping[str, str], at: float) -> list[Transition]:
        """Applies one AMI event received at ``at`` (seconds, the caller's clock) and returns
        the transitions it caused, in order (empty for most events)."""
        out: list[Transition] = []
        self._now = at
        applied = self._events.apply(event, at)
        if not applied.relevant:
            return out
        for call in applied.touched.values():
            self._evaluate(call, at, out, applied.created)
        for channel in applied.hung_up:
            self.model.remove_channel(channel)
        for call in applied.touched.values():
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
                cause = "optimisation" if self._optimising(call) else (
                    "transfer" if self._fresh(call.hints.transfer) else "answer")
                before = part.peer_channel
                part.peer_uniqueid, part.peer_channel = peer.uniqueid, peer.name
                out.append(PeerChanged(call.linkedid, part.seq, anchor.uniqueid, anchor.name, peer.uniqueid,
                                       peer.name, part.extension, cause, at))
                self._log(call, part.seq, part.extension, before, cause, part.seq, part.extension, peer.name)
            return
        ended_at = call.left_at if call.left_at is not None else at
        self._change(call, anchor, peer, self._arrival(call), ended_at, at, out)

    def _arrival(self, call: Call) -> str:
        """Why the anchor is now with a (new) agent."""
        hints = call.hints
        if self._optimising(call) and call.part.extension is not None:
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
        if self._optimising(call):
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

    def _optimising(self, call: Call) -> bool:
        """Whether a Local pair next to the anchor is being optimised away (until its
        LocalOptimizationEnd, or its channels' Hangup if that never comes)."""
        hints = call.hints
        hints.optimising = {u for u in hints.optimising if u in self.model.channels and not self.model.channels[u].gone}
        return bool(hints.optimising)

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
        log.debug("call %s: %s -> %s -> ended", printable(call.linkedid),
                 describe_part(part.seq, part.extension, part.peer_channel) if part else "-", cause)
        call.part, call.left_at, call.ended = None, None, True

    @staticmethod
    def _log(call: Call, old_seq, old_extension, old_peer, cause, new_seq, new_extension, new_peer) -> None:
        log.debug("call %s: %s -> %s -> %s", printable(call.linkedid), describe_part(old_seq, old_extension, old_peer),
                 cause, describe_part(new_seq, new_extension, new_peer))
