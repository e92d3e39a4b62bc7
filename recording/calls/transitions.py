"""What the call tracker tells about a call: its parts beginning and ending, the agent's channel
being swapped within a part, the call ending. Plain values, made by the tracker and read by
whoever acts on them (starts a MixMonitor, writes a leg); nothing here acts.

A *part* of a call is a span during which the call's anchor (the caller's channel on the PBX
side) talks with the same agent, the agent being the extension of the anchor's bridge peer;
or, with no agent, a span during which the anchor is bridged with nobody (IVR, ringing, waiting
in a queue, on hold alone). Parts are numbered from 1 in each call.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Union

# Why a part began or ended, named for what happened in the call (docs/transfers.md):
#   start         the call began (its first part)
#   seen          the call was already going when we first saw it (a restart, a late start)
#   answer        the anchor was bridged with an agent (the call was answered, a transfer's
#                 target answered, a queue member answered)
#   transfer      a blind or attended transfer moved the caller (BlindTransfer, AttendedTransfer,
#                 BridgeMerge), by AMI, feature code, the phone's key or a queue member
#   hold          the agent put the caller on hold and left the caller's bridge (the consultation
#                 of an attended transfer by feature code)
#   redirect      the caller was taken out of the agent's bridge into the dialplan with no
#                 transfer event (AMI Redirect, ChannelRedirect)
#   pickup        another extension picked up the call while it rang (Pickup event)
#   optimisation  a Local channel pair went away and the agent's own channel took its place
#   hangup        the agent hung up (the part ends), or the caller did (the call ends)
#   left          the agent and the caller parted and no event said why (see settle())
#   merged        the caller's channel joined an older call (its Linkedid changed)
CAUSES = ("start", "seen", "answer", "transfer", "hold", "redirect", "pickup", "optimisation",
          "hangup", "left", "merged")


@dataclass(frozen=True, slots=True)
class PartBegan:
    """Part ``part`` of ``call`` (its Linkedid) began at ``at``: the anchor is now with the
    agent ``extension`` (the peer's channel and unique id), or with nobody (all three None)."""

    call: str
    part: int
    anchor_uniqueid: str
    anchor_channel: str
    peer_uniqueid: str | None
    peer_channel: str | None
    extension: str | None
    cause: str
    at: float


@dataclass(frozen=True, slots=True)
class PartEnded:
    """Part ``part`` of ``call`` ended at ``at`` (the fields are those the part had: its anchor,
    and the peer it last had)."""

    call: str
    part: int
    anchor_uniqueid: str
    anchor_channel: str
    peer_uniqueid: str | None
    peer_channel: str | None
    extension: str | None
    cause: str
    at: float


@dataclass(frozen=True, slots=True)
class PeerChanged:
    """Within part ``part`` the agent's channel changed and the agent did not (a Local channel
    optimised away: ``optimisation``): the part goes on, with this peer."""

    call: str
    part: int
    anchor_uniqueid: str
    anchor_channel: str
    peer_uniqueid: str
    peer_channel: str
    extension: str | None
    cause: str
    at: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over for us at ``at``: its anchor hung up (``hangup``), or joined an older
    call (``merged``). The call's last part ended just before (a PartEnded comes first)."""

    call: str
    anchor_uniqueid: str
    anchor_channel: str
    cause: str
    at: float


Transition = Union[PartBegan, PartEnded, PeerChanged, CallEnded]

# A field from Asterisk is shown at most this long in a log line.
SHOWN_LENGTH = 160


def printable(text: str | None, limit: int = SHOWN_LENGTH) -> str:
    """``text`` fit for one log line: control characters, line and paragraph separators
    escaped (``\\x1b``, ``\\n``, ``\\u2028``), cut at ``limit`` characters with ``...``. AMI
    fields come from outside (a caller id, an extension dialled from a SIP URI)."""
    if text is None:
        return "-"
    shown = text if len(text) <= limit else text[:limit]
    out = []
    for char in shown:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char == "\\":
            out.append(char.encode("unicode_escape").decode("ascii") if char != "\\" else "\\\\")
        else:
            out.append(char)
    return "".join(out) + ("..." if len(text) > limit else "")


def describe_part(part: int | None, extension: str | None, peer_channel: str | None) -> str:
    """How a part is named in a log line: ``part 2 (410 on PJSIP/410-0000001a)``,
    ``part 1 (no agent)``; ``-`` before the first and ``ended`` after the last."""
    if part is None:
        return "-"
    if extension is None:
        return f"part {part} (no agent)"
    return f"part {part} ({printable(extension)} on {printable(peer_channel)})"
