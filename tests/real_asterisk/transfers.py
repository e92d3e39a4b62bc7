"""A call centre on the real Asterisk, for the tests of the recording following a call
(tests/real_asterisk/test_following.py), built as the transfers README's captures were:

    caller's phone  Local/s@<call>;1    plays the caller's clock (clock.py: 1004 Hz and a
                                        stepping tone), in context follow-caller
    caller's PBX leg Local/s@<call>;2   the anchor: runs the call's dialplan (AGI() to the
                                        service, then Dial or Queue)
    agent's leg     Local/4N0@follow-agents-...;1   in the bridge with the caller ("A1")
    agent's phone   Local/4N0@follow-agents-...;2   Answer, Playtones(400), Wait

Each scenario has extensions of its own, ``4N0``, ``4N1``, ``4N2`` (N its digit), so several
calls can run at once: ``4N0`` plays 400 Hz and belongs to fred, ``4N1`` 600 Hz (ann), ``4N2``
800 Hz (joe). Transfers go to the PBX's extensions, ``follow-ext``: ``_4XX`` dials that agent's
phone (with Dial's ``t``, which an attended transfer by feature code needs). The queue is in
queues.conf (pbx.py): ringall to ``440`` and ``441``.

A scenario returns an :class:`Outcome`: the call's legs as the database has them once the call
ended, each with what its file holds (whose tones, and which stretches of the caller's timeline),
and the times the test acted at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from recording.domain import LegView
from recording.storage.store import Store
from tests.real_asterisk import clock, wav
from tests.real_asterisk.calls import agi, complete, post
from tests.real_asterisk.manager import ManagerError
from tests.real_asterisk.pbx import FOLLOW_QUEUE, Asterisk, unique_name
from tests.real_asterisk.service import Serve
from tests.waiting import wait_until

FOLLOW_AGENTS = "follow-agents"
EXTENSIONS = "follow-ext"
CALLER = "follow-caller"
QUEUE_MEMBERS = ("440", "441")
# By an extension's last digit: the agent's tone and the user attached to it.
TONES = {"0": 400, "1": 600, "2": 800}
USERS = {"0": "fred", "1": "ann", "2": "joe"}
SCENARIOS = "41 42 43 44 45 46 47 48".split()
# A tone is heard in a 100-ms window at a tenth of its level (Playtones' default, 7219): about
# 10 ms of it; a tone in part of a window reads that part of its level.
LEVEL = 7219.0
HEARD = 700.0
WINDOW = 0.1
CLOCK_VARIABLE = "FOLLOW_CLOCK_"


def set_up(pbx: Asterisk) -> None:
    """The call centre's dialplan and the clock's tone list (global variables); idempotent."""
    chunks = clock.playtones_data()
    for n, chunk in enumerate(chunks, 1):
        pbx.ami.action("Setvar", Variable=f"{CLOCK_VARIABLE}{n}", Value=chunk)
    playtones = ",".join(f"${{{CLOCK_VARIABLE}{n}}}" for n in range(1, len(chunks) + 1))
    pbx.add_dialplan(CALLER, "s", [f"Playtones({playtones})", "Wait(60)", "Hangup()"])
    for digit, tone in TONES.items():
        pbx.add_dialplan(FOLLOW_AGENTS, f"_4X{digit}", ["Answer()", f"Playtones({tone})", "Wait(60)", "Hangup()"])
    pbx.add_dialplan(EXTENSIONS, "_4XX", [f"Dial(Local/${{EXTEN}}@{FOLLOW_AGENTS}/n,30,t)", "Hangup()"])
    for member in QUEUE_MEMBERS:
        try:
            pbx.ami.action("QueueAdd", Queue=FOLLOW_QUEUE, Interface=f"Local/{member}@{FOLLOW_AGENTS}/n")
        except ManagerError as exc:
            assert "Already there" in str(exc), exc


def attach_agents(database_url: str) -> None:
    """fred, ann and joe (joe added here), attached to every scenario's extensions."""
    store = Store(database_url)
    try:
        if store.find_user("joe") is None:
            store.add_user("joe", [])
        for prefix in SCENARIOS:
            for digit, login in USERS.items():
                store.attach_extension(prefix + digit, login)
    finally:
        store.close()


def owner_of(extension: str) -> str:
    return USERS[extension[-1]]


# -- a call --------------------------------------------------------------------------------

@dataclass
class Call:
    """One call of a scenario: the anchor (the caller's PBX leg, ;2), the caller's phone (;1,
    whose unique id is the call's Linkedid) and when the caller's clock began (the harness's
    AMI heard ;1 start Playtones)."""

    pbx: Asterisk
    context: str
    anchor: str
    anchor_uniqueid: str
    phone: str
    linkedid: str
    clock_start: float
    mark: int = 0  # where its events begin in the harness's AMI event list
    acted: dict[str, float] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def events(self, **match: str) -> list[dict]:
        return self.pbx.ami.find_events(match, self.mark)

    def at(self, what: str) -> float:
        """Notes that the test acts now (``what``); returns the time."""
        self.acted[what] = time.time()
        return self.acted[what]

    def caller_time(self, wall: float) -> float:
        """Where the caller's clock was at ``wall`` (``time.time()``), in clock seconds."""
        return wall - self.clock_start

    def peer(self, extension: str, timeout: float = 15) -> str:
        """The agent's leg (``Local/<extension>@...;1``) once it is in the anchor's bridge."""
        def found():
            channels = self.pbx.channels()
            bridge = next((c["BridgeId"] for c in channels if c["Channel"] == self.anchor), "")
            return bridge and next((c["Channel"] for c in channels if c["BridgeId"] == bridge
                                    and c["Channel"].startswith(f"Local/{extension}@")
                                    and c["Channel"].endswith(";1")), None)

        return wait_until(found, timeout, f"extension {extension} talking with {self.anchor}")

    def bridged(self, extension: str, timeout: float = 15) -> str:
        """An agent's leg of ``extension`` in any bridge (a consultation)."""
        return wait_until(lambda: next((c["Channel"] for c in self.pbx.channels()
                                        if c["Channel"].startswith(f"Local/{extension}@{FOLLOW_AGENTS}-")
                                        and c["Channel"].endswith(";1") and c["BridgeId"]), None),
                          timeout, f"extension {extension} in a bridge")

    def mixmonitors(self) -> dict[str, str]:
        return self.pbx.mixmonitors(self.anchor)

    def hang_up(self) -> None:
        self.pbx.hangup(self.phone)


def place(pbx: Asterisk, steps: list[str]) -> Call:
    """A call whose anchor answers, runs ``steps`` and hangs up; its caller plays the clock."""
    context = unique_name("follow-call")
    pbx.add_dialplan(context, "s", ["Answer()", *steps, "Hangup()"])
    mark = pbx.ami.mark()
    anchor = pbx.originate(context, caller=CALLER)
    phone = anchor[:-1] + "1"
    anchor_uid = pbx.ami.wait_event({"Event": "Newchannel", "Channel": anchor}, 10, mark)["Uniqueid"]
    linkedid = pbx.ami.wait_event({"Event": "Newchannel", "Channel": phone}, 10, mark)["Uniqueid"]
    started = pbx.ami.wait_event(lambda e: e.get("Event") == "Newexten" and e.get("Channel") == phone
                                 and e.get("Application", "").lower() == "playtones", 15, mark, "the caller's clock")
    return Call(pbx, context, anchor, anchor_uid, phone, linkedid, pbx.ami.received_at(started), mark)


def start_line(service: Serve, tag: str) -> str:
    """The dialplan's usual AGI() before Dial."""
    return agi(service, query=f"tag={tag}")


def http(service: Serve, operation: str, target: str, **more) -> dict:
    answer = post(service, operation, target, **more)
    assert answer.status == 200, (operation, target, answer.status, answer.body)
    return answer.json


# -- what a call left ------------------------------------------------------------------------

@dataclass
class Leg:
    """A leg and what its file holds: per 100 ms window, whether the caller's tone and each
    agent's tone is heard, and the stretches of the caller's timeline it holds."""

    view: LegView
    windows: int = 0
    caller: int = 0
    agents: dict[int, int] = field(default_factory=dict)   # tone -> windows it is heard in
    heard: dict[int, float] = field(default_factory=dict)   # tone -> about how many seconds of it
    loudest: dict[int, float] = field(default_factory=dict)
    spans: list[clock.Span] = field(default_factory=list)
    exists: bool = False

    def others(self, own: int | None) -> dict[int, float]:
        """The tones of agents other than the one playing ``own`` heard, with about how many
        seconds of each the file holds."""
        return {tone: round(seconds, 3) for tone, seconds in self.heard.items() if seconds and tone != own}


def examine(view: LegView) -> Leg:
    leg = Leg(view)
    path = Path(view.file)
    if not path.exists():
        return leg
    leg.exists = True
    pcm = wav.samples(path)
    levels = wav.tones(pcm, (*TONES.values(), clock.CALLER_TONE))
    leg.windows = len(levels)
    leg.caller = sum(1 for w in levels if w[clock.CALLER_TONE] >= HEARD)
    leg.agents = {tone: sum(1 for w in levels if w[tone] >= HEARD) for tone in TONES.values()}
    leg.heard = {tone: sum(min(1.0, w[tone] / LEVEL) * WINDOW for w in levels if w[tone] >= HEARD)
                 for tone in TONES.values()}
    leg.loudest = {tone: max((w[tone] for w in levels), default=0.0) for tone in TONES.values()}
    leg.spans = clock.heard(pcm)
    return leg


@dataclass
class Outcome:
    tag: str
    call: Call
    legs: list[Leg]
    running_before_hangup: dict[str, str]
    notes: dict = field(default_factory=dict)

    def path(self) -> list[tuple[str | None, str, str | None]]:
        return [(leg.view.owner, leg.view.ownership, leg.view.ended_by) for leg in self.legs]

    def boundaries(self) -> list[dict]:
        """Between each two consecutive legs whose files hold placed audio: the caller's audio
        missing (positive) or recorded in both (negative), in seconds; and for the later leg,
        the seconds from its start (the part change, as the service saw it) to its first
        audio on the caller's clock."""
        heard = [(n, leg) for n, leg in enumerate(self.legs, 1) if leg.spans]
        found = []
        for (n, before), (m, after) in zip(heard, heard[1:]):
            first = min(s.start for s in after.spans)
            found.append({
                "legs": f"{n}({before.view.owner or 'DEFAULT'})->{m}({after.view.owner or 'DEFAULT'})",
                "missing": clock.missing(before.spans, after.spans),
                "to_first_audio": first - self.call.caller_time(after.view.start.timestamp()),
            })
        return found

    def holes(self) -> list[tuple[float, float]]:
        """The stretches of the caller's timeline, between the first and the last audio of the
        call's legs, that no leg holds."""
        return clock.holes([span for leg in self.legs for span in leg.spans])


def finish(tag: str, call: Call, service: Serve, legs_expected: int, timeout: float = 30) -> Outcome:
    """Hangs the caller up and waits for the call's legs to end and their files to close."""
    running = call.mixmonitors()
    call.at("hangup")
    call.hang_up()

    def ended():
        legs = service.legs(tag=tag)
        done = legs and all(leg.end is not None for leg in legs) and legs[-1].ended_by is not None
        return len(legs) >= legs_expected and done and legs

    views = wait_until(ended, timeout, f"{legs_expected} legs tagged {tag} ended")
    for view in views:
        if Path(view.file).exists():
            complete(Path(view.file), timeout)
    assert call.caller_time(time.time()) < clock.PERIOD, "the call outlasted the caller's clock cycle"
    return Outcome(tag, call, [examine(view) for view in views], running, dict(call.notes))


# -- the scenarios -------------------------------------------------------------------------

TALK = 2.0  # seconds each agent talks with the caller


def blind_by_crm(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(a) The CRM records extension 4N0 over HTTP; AMI BlindTransfer of 4N0's leg to 4N1."""
    call = place(pbx, [f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        a1 = call.peer(f"{prefix}0")
        call.at("start")
        started = http(service, "start", f"{prefix}0", tag=tag)
        call.notes = {"started": started}
        time.sleep(TALK)
        call.at("transfer")
        pbx.ami.action("BlindTransfer", Channel=a1, Exten=f"{prefix}1", Context=EXTENSIONS)
        call.peer(f"{prefix}1")
        time.sleep(TALK)
        return finish(tag, call, service, 3)
    finally:
        call.hang_up()


def blind_from_dialplan(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(b) The dialplan records the caller before Dial; AMI BlindTransfer of 4N0 to 4N1."""
    call = place(pbx, [start_line(service, tag), f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        a1 = call.peer(f"{prefix}0")
        time.sleep(TALK)
        call.at("transfer")
        pbx.ami.action("BlindTransfer", Channel=a1, Exten=f"{prefix}1", Context=EXTENSIONS)
        call.peer(f"{prefix}1")
        time.sleep(TALK)
        return finish(tag, call, service, 4)
    finally:
        call.hang_up()


def attended(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(c) The CRM records 4N0; AMI Atxfer of 4N0's leg to 4N1 (a consultation: the caller
    alone), then 4N0 hangs up and the caller talks with 4N1."""
    call = place(pbx, [f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        a1 = call.peer(f"{prefix}0")
        call.at("start")
        http(service, "start", f"{prefix}0", tag=tag)
        time.sleep(TALK)
        call.at("atxfer")
        reply = pbx.ami.action("Atxfer", Channel=a1, Exten=f"{prefix}1", Context=EXTENSIONS)
        call.notes = {"atxfer": reply.get("Message")}
        call.bridged(f"{prefix}1")
        call.at("consulting")
        time.sleep(1.5)
        call.at("transfer")
        pbx.hangup(a1)
        call.peer(f"{prefix}1")
        time.sleep(TALK)
        return finish(tag, call, service, 3)
    finally:
        call.hang_up()


def attended_by_keys(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(c) as an agent does it on the phone: the CRM records 4N0, whose phone presses the
    attended-transfer code *2, then the extension 4N1 digit by digit (as a person types it),
    talks with 4N1 and hangs up."""
    typed = []
    for digit in f"{prefix}1":
        typed += [f"SendDTMF({digit})", "Playtones(400)", "Wait(0.8)"]
    pbx.add_dialplan(FOLLOW_AGENTS, f"{prefix}0", ["Answer()", "Playtones(400)", f"Wait({TALK})", "SendDTMF(*2)",
                                                  "Playtones(400)", "Wait(0.5)", *typed, "Wait(1.5)", "Hangup()"])
    call = place(pbx, [f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        call.peer(f"{prefix}0")
        call.at("start")
        http(service, "start", f"{prefix}0", tag=tag)
        call.peer(f"{prefix}1", timeout=20)
        call.at("transferred")
        time.sleep(TALK)
        return finish(tag, call, service, 3)
    finally:
        call.hang_up()


def queue(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(d) The dialplan records the caller, who joins the queue (ringall 440/441); the member
    who answered blind-transfers the caller to 442."""
    call = place(pbx, [start_line(service, tag), f"Queue({FOLLOW_QUEUE},t)"])
    try:
        member = wait_until(lambda: next((c for c in (_peer_now(call, f"{prefix}0"), _peer_now(call, f"{prefix}1"))
                                          if c), None), 20, "a queue member talking with the caller")
        call.notes = {"member": member.split("@")[0].removeprefix("Local/")}
        time.sleep(TALK)
        call.at("transfer")
        pbx.ami.action("BlindTransfer", Channel=member, Exten=f"{prefix}2", Context=EXTENSIONS)
        call.peer(f"{prefix}2")
        time.sleep(TALK)
        return finish(tag, call, service, 4)
    finally:
        call.hang_up()


def _peer_now(call: Call, extension: str) -> str | None:
    try:
        return call.peer(extension, timeout=0)
    except AssertionError:
        return None


def redirect(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """(e) The CRM records the caller by unique id for fred while 4N0 talks; AMI Redirect of
    the caller to 4N1."""
    call = place(pbx, [f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        call.peer(f"{prefix}0")
        call.at("start")
        http(service, "start", call.anchor_uniqueid, tag=tag, agentLoginName="fred")
        time.sleep(TALK)
        call.at("redirect")
        pbx.ami.action("Redirect", Channel=call.anchor, Exten=f"{prefix}1", Context=EXTENSIONS, Priority="1")
        call.peer(f"{prefix}1")
        time.sleep(TALK)
        return finish(tag, call, service, 3)
    finally:
        call.hang_up()


def paused_transfer(pbx: Asterisk, service: Serve, prefix: str, tag: str) -> Outcome:
    """The CRM records 4N0 and pauses it (a card number); 4N0 blind-transfers to 4N1; the
    caller's next legs start paused, until 4N1's extension resumes over HTTP."""
    call = place(pbx, [f"Dial(Local/{prefix}0@{FOLLOW_AGENTS}/n,30,t)"])
    try:
        a1 = call.peer(f"{prefix}0")
        call.at("start")
        http(service, "start", f"{prefix}0", tag=tag)
        time.sleep(1.0)
        call.at("pause")
        http(service, "pause", f"{prefix}0")
        time.sleep(1.0)
        call.at("transfer")
        pbx.ami.action("BlindTransfer", Channel=a1, Exten=f"{prefix}1", Context=EXTENSIONS)
        call.peer(f"{prefix}1")
        time.sleep(1.0)
        running_while_paused = call.mixmonitors()
        call.at("resume")
        resumed = http(service, "resume", f"{prefix}1")
        time.sleep(TALK)
        call.notes = {"running_while_paused": running_while_paused, "resumed": resumed}
        return finish(tag, call, service, 3)
    finally:
        call.hang_up()
