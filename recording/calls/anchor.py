"""Which channel a call's recordings run on, given the channel someone names.

The dialplan's AGI runs on the anchor itself (before Dial or Queue); the HTTP API names a unique
id or an extension, and an extension is the agent's (``410`` for ``PJSIP/410-0000001a``): the
anchor is then the caller's side of the call that agent is on. Either way the answer is the
anchor of the named channel's call (``Model.anchor_of``).
"""

from __future__ import annotations

from .model import Call, Channel, Model
from .transitions import printable


class NoAnchor(LookupError):
    """No live channel has that unique id, name or extension, or its call's anchor is not
    known (the call began before we saw it and was not rebuilt)."""


class AmbiguousAnchor(LookupError):
    """The extension is on more than one call; the message names their anchors."""


def find_anchor(model: Model, target: str, *, by_extension: bool = True) -> Channel:
    """The anchor of the call of the channel ``target`` names: by unique id, by channel name,
    else by extension. For an extension, the calls in which that extension is the current
    agent come first (the agent talks with the caller now); among several channels of the
    extension on one call (Local halves, a transfer in progress) that call's anchor is the
    answer. Raises NoAnchor, or AmbiguousAnchor when the extension is on several calls.
    Not ``by_extension``: a unique id or name only, two lookups (a FastAGI start asks this, and
    the extension's search reads every channel heard)."""
    channel = model.channels.get(target) or model.by_name(target)
    if channel is not None:
        return _anchor(model, model.call_of(channel), f"channel {printable(channel.name)}")
    if not by_extension:
        raise NoAnchor(f"no live channel has the unique id or name {printable(target)!r}")
    candidates = {c.uniqueid: c for c in model.channels.values() if c.extension == target and not c.gone}
    if not candidates:
        raise NoAnchor(f"no live channel has the unique id, name or extension {printable(target)!r}")
    calls = {c.linkedid: model.calls.get(c.linkedid) for c in candidates.values()}
    live = {linkedid: call for linkedid, call in calls.items() if call is not None and not call.ended}
    # The calls whose caller talks with that extension now: its channel is the anchor's peer
    # (whatever Linkedid it shows), or the agent of the part is that extension.
    talking = {c.linkedid: c for c in model.calls.values() if not c.ended and c.part is not None
               and (c.part.peer_uniqueid in candidates or (c.linkedid in live and c.part.extension == target))}
    chosen = talking or live
    if not chosen:
        raise NoAnchor(f"extension {printable(target)!r} is on no call we follow")
    if len(chosen) > 1:
        anchors = ", ".join(sorted(_describe(model, call) for call in chosen.values()))
        raise AmbiguousAnchor(f"extension {printable(target)!r} is on {len(chosen)} calls ({anchors}); "
                              "give the unique id instead")
    (call,) = chosen.values()
    return _anchor(model, call, f"extension {printable(target)}")


def _anchor(model: Model, call: Call | None, what: str) -> Channel:
    anchor = model.channels.get(call.anchor) if call is not None and call.anchor else None
    if anchor is None or call.ended:
        raise NoAnchor(f"the call of {what} has no known anchor (it began before we saw it, or ended)")
    return anchor


def _describe(model: Model, call: Call) -> str:
    anchor = model.channels.get(call.anchor) if call.anchor else None
    return f"call {printable(call.linkedid)} on {printable(anchor.name) if anchor else 'an unknown anchor'}"
