"""AMI event streams made up for the cases no capture shows (SIP phones, pickup, a ringall queue
whose loser is cancelled, a hangup in the middle of a transfer), built with the fields and in
the orders the captures and ``../shared/asterisk/transfers/README.md`` ("Seen with SIP phones
too") give, and what Asterisk 22's source says where neither does (each scenario says which).

Every event is a dict as the AMI client hands it over; a stream is a list of (time, event).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass
class Chan:
    name: str
    uniqueid: str
    linkedid: str
    context: str = "from-internal"
    exten: str = "s"


def _snapshot(chan: Chan, prefix: str = "") -> dict[str, str]:
    fields = {
        "Channel": chan.name, "ChannelState": "6", "ChannelStateDesc": "Up", "CallerIDNum": "0155501001",
        "CallerIDName": "Outside Caller", "ConnectedLineNum": "<unknown>", "ConnectedLineName": "<unknown>",
        "Language": "en", "AccountCode": "", "Context": chan.context, "Exten": chan.exten, "Priority": "1",
        "Uniqueid": chan.uniqueid, "Linkedid": chan.linkedid,
    }
    return {f"{prefix}{key}": value for key, value in fields.items()}


def _bridge(bridge_id: str, members: int, prefix: str = "") -> dict[str, str]:
    fields = {"BridgeUniqueid": bridge_id, "BridgeType": "basic", "BridgeTechnology": "simple_bridge",
              "BridgeCreator": "<unknown>", "BridgeName": "<unknown>", "BridgeNumChannels": str(members),
              "BridgeVideoSourceMode": "none"}
    return {f"{prefix}{key}": value for key, value in fields.items()}


@dataclass
class Stream:
    """Builds a stream event by event; ``at`` is the clock (seconds), moved by ``wait``."""

    epoch: int = 1796500000
    at: float = 0.0
    events: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    bridges: dict[str, list[Chan]] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(100))
    _hex: itertools.count = field(default_factory=lambda: itertools.count(1))

    def wait(self, seconds: float) -> Stream:
        self.at = round(self.at + seconds, 6)
        return self

    def emit(self, name: str, **fields: str) -> dict[str, str]:
        event = {"Event": name, "Privilege": "call,all", **fields}
        self.events.append((self.at, event))
        return event

    # --- channels ---

    def channel(self, endpoint: str, linkedid: str | None = None, *, tech: str = "PJSIP") -> Chan:
        """A new channel (Newchannel): ``PJSIP/410-00000003``; a new call when no Linkedid."""
        uniqueid = f"{self.epoch}.{next(self._seq)}"
        chan = Chan(f"{tech}/{endpoint}-{next(self._hex):08x}", uniqueid, linkedid or uniqueid)
        self.emit("Newchannel", **_snapshot(chan))
        return chan

    def newexten(self, chan: Chan, exten: str, app: str, data: str = "", context: str | None = None) -> None:
        chan.exten, chan.context = exten, context or chan.context
        self.emit("Newexten", **_snapshot(chan), Extension=exten, Application=app, AppData=data)

    def varset(self, chan: Chan, variable: str, value: str) -> None:
        self.emit("VarSet", **_snapshot(chan), Variable=variable, Value=value)

    def dial(self, caller: Chan, callee: Chan, status: str | None = "ANSWER") -> None:
        self.emit("DialBegin", **_snapshot(caller), **_snapshot(callee, "Dest"), DialString=callee.name)
        if status:
            self.dial_end(caller, callee, status)

    def dial_end(self, caller: Chan, callee: Chan, status: str = "ANSWER") -> None:
        self.emit("DialEnd", **_snapshot(caller), **_snapshot(callee, "Dest"), DialStatus=status)

    def hangup(self, chan: Chan, cause: str = "16", request: bool = True) -> None:
        if request:
            self.emit("HangupRequest", **_snapshot(chan), Cause=cause)
        self.emit("Hangup", **_snapshot(chan), Cause=cause, **{"Cause-txt": "Normal Clearing"})

    def hold(self, chan: Chan) -> None:
        self.emit("Hold", **_snapshot(chan), MusicClass="default")

    def unhold(self, chan: Chan) -> None:
        self.emit("Unhold", **_snapshot(chan))

    # --- bridges ---

    def bridge(self, bridge_id: str, *chans: Chan) -> None:
        """BridgeCreate, then each channel's BridgeEnter (the dialled one first, as Dial does)."""
        self.emit("BridgeCreate", **_bridge(bridge_id, 0))
        self.bridges[bridge_id] = []
        for chan in chans:
            self.enter(bridge_id, chan)

    def enter(self, bridge_id: str, chan: Chan, swap: Chan | None = None) -> None:
        members = self.bridges.setdefault(bridge_id, [])
        members.append(chan)
        extra = {"SwapUniqueid": swap.uniqueid} if swap else {}
        self.emit("BridgeEnter", **_bridge(bridge_id, len(members)), **_snapshot(chan), **extra)

    def leave(self, bridge_id: str, chan: Chan) -> None:
        members = self.bridges[bridge_id]
        members.remove(chan)
        self.emit("BridgeLeave", **_bridge(bridge_id, len(members)), **_snapshot(chan))

    def destroy(self, bridge_id: str) -> None:
        self.bridges.pop(bridge_id, None)
        self.emit("BridgeDestroy", **_bridge(bridge_id, 0))

    # --- transfers ---

    def blind_transfer(self, transferer: Chan, transferee: Chan, bridge_id: str, exten: str) -> None:
        self.emit("BlindTransfer", Result="Success", **_snapshot(transferer, "Transferer"),
                  **_snapshot(transferee, "Transferee"), **_bridge(bridge_id, 2), IsExternal="Yes",
                  Context="from-internal", Extension=exten)

    def attended_transfer(self, orig: Chan, second: Chan, transferee: Chan, target: Chan, orig_bridge: str,
                          second_bridge: str, dest_bridge: str, *, snapshots: dict[str, Chan] | None = None) -> None:
        """``snapshots`` replaces a role's snapshot (stale ones: Asterisk takes them before the
        transfer, bridge.c ast_attended_transfer_message_create)."""
        chans = {"OrigTransferer": orig, "SecondTransferer": second, "Transferee": transferee,
                 "TransferTarget": target, **(snapshots or {})}
        fields: dict[str, str] = {}
        for role, chan in chans.items():
            fields.update(_snapshot(chan, role))
        self.emit("AttendedTransfer", Result="Success", **fields, **_bridge(orig_bridge, 2, "Orig"),
                  **_bridge(second_bridge, 2, "Second"), IsExternal="Yes", DestType="Bridge",
                  DestBridgeUniqueid=dest_bridge)


def _call_with_agent(s: Stream, bridge_id: str = "b-1") -> tuple[Chan, Chan]:
    """A caller on the trunk dialling PJSIP/410, answered and bridged (the call before each
    scenario's transfer)."""
    caller = s.channel("trunk")
    s.newexten(caller, "0155501001", "AGI", "agi://127.0.0.1:4573/recording/start", "from-pstn")
    s.newexten(caller, "0155501001", "Dial", "PJSIP/410,30,tT")
    agent = s.channel("410", caller.linkedid)
    s.dial(caller, agent)
    s.bridge(bridge_id, agent, caller)
    return caller, agent


def sip_blind_transfer() -> list[tuple[float, dict[str, str]]]:
    """Phone 410 blind-transfers the caller to 411 by REFER (README, "Seen with SIP phones"):
    Unhold of 410, the caller's BridgeLeave *before* the BlindTransfer event, then 410's
    BridgeLeave and BridgeDestroy; the caller dials 411, who answers after 3 s; 410 hangs up
    only at its BYE, after the caller's Dial began."""
    s = Stream()
    caller, agent = _call_with_agent(s.wait(0.5))
    s.wait(10)
    s.unhold(agent)
    s.varset(caller, "BLINDTRANSFER", agent.name)
    s.leave("b-1", caller)
    s.blind_transfer(agent, caller, "b-1", "411")
    s.leave("b-1", agent)
    s.destroy("b-1")
    s.wait(0.002)
    s.newexten(caller, "411", "Dial", "PJSIP/411,30,tT", "from-internal")
    target = s.channel("411", caller.linkedid)
    s.dial(caller, target, status=None)
    s.wait(0.05)
    s.hangup(agent)
    s.wait(3)
    s.dial_end(caller, target)
    s.bridge("b-2", target, caller)
    s.wait(20)
    s.hangup(caller)
    s.leave("b-2", caller)
    s.leave("b-2", target)
    s.destroy("b-2")
    s.hangup(target)
    return s.events


def sip_attended_transfer(order: str = "moves-first") -> list[tuple[float, dict[str, str]]]:
    """Phone 410 puts the caller on hold, calls 411 on its second line (a call of its own, own
    Linkedid), then transfers by REFER with Replaces (README, "Seen with SIP phones"): the
    caller moves into the consultation bridge in place of 410's second channel, 411 takes the
    caller's Linkedid, both 410 channels hang up. bridge.c's bridge_swap_attended_transfer
    gives the order ``moves-first`` (caller leaves, 410's second channel is swapped out, caller
    enters with SwapUniqueid, then the AttendedTransfer event with snapshots taken before the
    transfer: 411 still with the consultation's Linkedid); ``event-first`` puts the event
    before the moves, to show the order does not matter."""
    s = Stream()
    caller, agent = _call_with_agent(s.wait(0.5))
    s.wait(8)
    s.hold(agent)
    s.wait(0.3)
    second = s.channel("410")
    s.newexten(second, "411", "Dial", "PJSIP/411,30,tT", "from-internal")
    target = s.channel("411", second.linkedid)
    s.dial(second, target, status=None)
    s.wait(2)
    s.dial_end(second, target)
    s.bridge("b-consult", target, second)
    s.wait(6)
    stale_target = Chan(target.name, target.uniqueid, target.linkedid)
    if order == "event-first":
        s.attended_transfer(agent, second, caller, target, "b-1", "b-consult", "b-consult")
    s.leave("b-1", caller)
    s.leave("b-consult", second)
    target.linkedid = caller.linkedid  # NOTE: bridge_basic_push copies the oldest Linkedid to all
    s.enter("b-consult", caller, swap=second)
    s.varset(caller, "BRIDGEPEER", target.name)
    s.varset(target, "BRIDGEPEER", caller.name)
    if order == "moves-first":
        s.attended_transfer(agent, second, caller, target, "b-1", "b-consult", "b-consult",
                            snapshots={"TransferTarget": stale_target})
    s.leave("b-1", agent)
    s.destroy("b-1")
    s.wait(0.04)
    s.hangup(second)
    s.hangup(agent)
    s.wait(15)
    s.hangup(caller)
    s.leave("b-consult", caller)
    s.leave("b-consult", target)
    s.destroy("b-consult")
    s.hangup(target)
    return s.events


def queue_ringall_cancel() -> list[tuple[float, dict[str, str]]]:
    """The caller waits 5 s in a ringall queue of 410 and 411 (PJSIP members); 411 answers,
    410's ringing channel is cancelled (DialEnd CANCEL, Hangup cause 26), as capture 5 shows
    for Local members; 411 hangs up after 30 s and the caller goes on to a survey."""
    s = Stream()
    caller = s.wait(0.2).channel("trunk")
    s.newexten(caller, "0155501001", "Queue", "support", "from-pstn")
    s.emit("QueueCallerJoin", **_snapshot(caller), Queue="support", Position="1", Count="1")
    s.wait(5)
    ringing = {}
    for member in ("410", "411"):
        ringing[member] = s.channel(member, caller.linkedid)
        s.emit("AgentCalled", **_snapshot(caller), **_snapshot(ringing[member], "Dest"), Queue="support",
               Interface=f"PJSIP/{member}", MemberName=f"PJSIP/{member}")
        s.dial(caller, ringing[member], status=None)
    s.wait(4)
    s.dial_end(caller, ringing["411"])
    s.dial_end(caller, ringing["410"], "CANCEL")
    s.hangup(ringing["410"], cause="26")
    s.emit("QueueCallerLeave", **_snapshot(caller), Queue="support", Position="1", Count="0")
    s.emit("AgentConnect", **_snapshot(caller), **_snapshot(ringing["411"], "Dest"), Queue="support",
           HoldTime="9", RingTime="4")
    s.bridge("b-q", ringing["411"], caller)
    s.wait(30)
    s.hangup(ringing["411"])
    s.leave("b-q", ringing["411"])
    s.leave("b-q", caller)
    s.destroy("b-q")
    s.newexten(caller, "0155501001", "Playback", "survey", "from-pstn")
    s.wait(8)
    s.hangup(caller)
    return s.events


def hangup_during_transfer() -> list[tuple[float, dict[str, str]]]:
    """410 blind-transfers the caller to 411 (as capture 1); the caller hangs up while 411
    rings: the no-agent part in between ends with the call."""
    s = Stream()
    caller, agent = _call_with_agent(s.wait(0.1))
    s.wait(7)
    s.unhold(agent)
    s.blind_transfer(agent, caller, "b-1", "411")
    s.newexten(caller, "411", "Dial", "PJSIP/410,30,tT", "from-internal")
    s.leave("b-1", caller)
    s.leave("b-1", agent)
    target = s.channel("411", caller.linkedid)
    s.dial(caller, target, status=None)
    s.destroy("b-1")
    s.hangup(agent)
    s.wait(2.5)
    s.hangup(caller)
    s.dial_end(caller, target, "CANCEL")
    s.hangup(target, cause="26")
    return s.events


def pickup() -> list[tuple[float, dict[str, str]]]:
    """The caller rings 411; 410 dials the pickup code (a call of its own) and picks the call
    up. In the order and with the fields tests/captures/pickup shows with Local channels (the
    SIP names are assumed): ``Pickup`` names the picker (Channel, its own Linkedid) and the
    ringing channel (``Target``); the ringing channel's unique id hangs up; the caller's
    DialEnd names the picker; the picker enters the new bridge first, still with its own
    Linkedid, the caller second; the picker's next events carry the caller's Linkedid."""
    s = Stream()
    caller = s.wait(0.3).channel("trunk")
    s.newexten(caller, "0155501001", "Dial", "PJSIP/411,30", "from-pstn")
    ringing = s.channel("411", caller.linkedid)
    s.dial(caller, ringing, status=None)
    s.wait(4)
    picker = s.channel("410")
    s.newexten(picker, "*8411", "Pickup", "411@from-internal", "from-internal")
    s.emit("Pickup", **_snapshot(picker), **_snapshot(ringing, "Target"))
    s.hangup(ringing, cause="26")
    s.dial_end(caller, picker)
    s.bridge("b-p", picker, caller)
    picker.linkedid = caller.linkedid
    s.wait(12)
    s.hangup(picker)
    s.leave("b-p", picker)
    s.leave("b-p", caller)
    s.destroy("b-p")
    s.hangup(caller)
    return s.events
