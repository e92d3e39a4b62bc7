"""The model rebuilt from what Asterisk lists, for a process that starts (or reconnects to AMI)
in the middle of calls: ``CoreShowChannels`` gives every channel with its Uniqueid, Linkedid and
BridgeId; ``BridgeInfo`` (one per bridge) gives a bridge's channels, in Asterisk's order.

The database, not Asterisk, knows which part of a call was recorded last: the caller passes it
(``parts``), so the part in progress keeps its number when its agent is the same, and gets the
next one otherwise.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from .model import Model, Part
from .tracker import HINT_WINDOW, CallTracker, log
from .transitions import PartBegan, PartEnded, Transition, describe_part, printable


def rebuild(
    channels: Iterable[Mapping[str, str]],
    bridges: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
    *,
    at: float,
    parts: Mapping[str, tuple[int, str | None]] | None = None,
    hint_window: float = HINT_WINDOW,
) -> tuple[CallTracker, list[Transition]]:
    """A tracker whose model holds the listed channels, bridges and calls, and what changed
    against ``parts`` (Linkedid -> (number, agent extension) of the last part the database has
    for a call), at ``at``:

    - a call not in ``parts``: its current part as part 1, ``PartBegan`` cause ``seen``;
    - a call whose agent is still the one in ``parts``: that part goes on (same number), nothing;
    - a call whose agent changed: ``PartEnded`` of the known part (cause ``left``, no peer: we
      did not see how it ended) and ``PartBegan`` of the next, cause ``seen``.

    A call whose anchor is not listed (it hung up, or the listing missed it) gets nothing.
    ``channels`` are CoreShowChannel events (Channel, Uniqueid, Linkedid, BridgeId); ``bridges``
    maps a bridge id to its BridgeInfoChannel events, which put a listed channel in that bridge
    when its CoreShowChannel had no BridgeId (two listings are two moments).

    NOTE: no listing tells the order channels entered a bridge (BridgeInfo lists the caller
    first where the agent entered first: tests/captures/pickup), so with three or more channels
    in one bridge the rebuilt peer is the last one listed."""
    tracker = CallTracker(Model(), hint_window)
    model = tracker.model
    for item in channels:
        uniqueid, name, linkedid = item.get("Uniqueid", ""), item.get("Channel", ""), item.get("Linkedid", "")
        if not (uniqueid and name and linkedid):
            continue
        channel, _ = model.add_channel(uniqueid, name, linkedid)
        if item.get("BridgeId"):
            model.enter(channel, item["BridgeId"])
    for bridge_id, members in (bridges or {}).items():
        for member in members:
            channel = model.channels.get(member.get("Uniqueid", ""))
            if channel is not None and channel.bridge is None:
                model.enter(channel, bridge_id)
    out: list[Transition] = []
    for call in list(model.calls.values()):
        anchor = model.anchor_of(call)
        if anchor is None:
            continue
        call.anchor = anchor.uniqueid
        peer = model.peer_of(anchor)
        if peer is not None and peer.extension is None:
            peer = None
        now = Part(1, peer.extension if peer else None, peer.uniqueid if peer else None, peer.name if peer else None)
        known = (parts or {}).get(call.linkedid)
        if known is not None and known[1] == now.extension:
            now.seq = known[0]
            call.part = now
            continue
        if known is not None:
            now.seq = known[0] + 1
            out.append(PartEnded(call.linkedid, known[0], anchor.uniqueid, anchor.name, None, None, known[1],
                                 "left", at))
        call.part = now
        out.append(PartBegan(call.linkedid, now.seq, anchor.uniqueid, anchor.name, now.peer_uniqueid,
                             now.peer_channel, now.extension, "seen", at))
        log.debug("call %s: %s -> %s -> %s", printable(call.linkedid),
                 describe_part(known[0], known[1], None) if known else "-", "seen",
                 describe_part(now.seq, now.extension, now.peer_channel))
    return tracker, out
