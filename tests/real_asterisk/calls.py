"""Calls through the real Asterisk to the service under test, made of Local channels:

    caller (Local/s@<ctx>;1, plays Milliwatt: 1004 Hz)
      -> the caller's PBX leg (Local/s@<ctx>;2: runs the test's dialplan, AGI() to the service)
        -> Dial(Local/<ext>@<ctx>-phone/n) -> the agent's phone (plays 600 Hz, may press keys)

The recorded channel is the PBX leg, as in a real PBX where the AGI runs before Dial. The keys
are those of the README's ``features.conf`` (tests/real_asterisk/pbx.py writes it): ``*7``
pause, ``*8`` resume, ``*9`` stop, pressed by the agent and run on the recorded channel. What
the dialplan saw after each AGI() is written to Asterisk's log by a ``Verbose()`` line
(:func:`report`), read back with :func:`wait_report`.
"""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from tests.http_client import Answer, HTTPClient
from tests.real_asterisk import wav
from tests.real_asterisk.pbx import Asterisk, unique_name
from tests.real_asterisk.service import Serve
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until

CALLS = "/servicemanager/rest/CallManagementAPI"
KEYS = {"pause": "*7", "resume": "*8", "stop": "*9"}
FEATURES = "pause-recording#resume-recording#stop-recording"
_extensions = itertools.count(41000)


def report(label: str) -> str:
    """A dialplan line writing what the result variables hold to the log, as ``RT <label>``.
    The file and the error sentence are base64 (they may hold spaces)."""
    return ("Verbose(0,RT " + label + " uid=${UNIQUEID} status=${RECORDING_STATUS} id=${RECORDING_ID}"
            " deferred=${RECORDING_DEFERRED} agi=${AGISTATUS} file=${BASE64_ENCODE(${RECORDING_FILE})}"
            " error=${BASE64_ENCODE(${RECORDING_ERROR})})")


@dataclass
class Report:
    """What the dialplan saw after one AGI()."""

    uid: str
    status: str
    id: str
    deferred: str
    agi: str
    file: str
    error: str


def wait_report(pbx: Asterisk, label: str, timeout: float = 20) -> Report:
    match = pbx.wait_log(rf"app_verbose\.c: RT {re.escape(label)} (.*)$", timeout)
    fields = dict(part.split("=", 1) for part in match.group(1).split(" "))
    for name in ("file", "error"):
        fields[name] = base64.b64decode(fields[name]).decode() if fields[name] else ""
    return Report(**fields)


def phone(pbx: Asterisk, seconds: float, keys: list[tuple[float, str]] = (), tone: int = 600) -> tuple[str, str]:
    """An agent's phone that answers, plays ``tone`` Hz, presses each ``(after, key)`` (a
    name of :data:`KEYS`, ``after`` seconds after the previous step) and hangs up ``seconds``
    after answering. Returns (what to Dial, its extension)."""
    context = unique_name("phone")
    extension = str(next(_extensions))
    lines = ["Answer()", f"Playtones({tone})"]
    spent = 0.0
    for after, key in keys:
        lines += [f"Wait({after})", f"SendDTMF({KEYS[key]})", f"Playtones({tone})"]
        spent += after + 0.6  # NOTE: SendDTMF takes about 0.55 s for two digits
    lines += [f"Wait({max(seconds - spent, 0.1):.2f})", "Hangup()"]
    pbx.add_dialplan(context, extension, lines)
    return f"Local/{extension}@{context}/n", extension


@dataclass
class Call:
    context: str
    channel: str  # the recorded channel, the caller's PBX leg (;2)
    uniqueid: str

    def label(self, step: str) -> str:
        return f"{self.context}:{step}"


def start_url(service: Serve, query: str = "", route: str = "recording/start") -> str:
    return f"{service.agi_url}/{route}" + (f"?{query}" if query else "")


def call(pbx: Asterisk, service: Serve, steps: list[str], *, key_variable: bool = True) -> Call:
    """Places a call whose PBX leg runs ``steps`` (dialplan lines; ``{report:NAME}`` becomes a
    report labelled ``<context>:NAME``, and ``{context}`` in a line the call's context). As extensions.conf.sample has it, the PBX leg has
    RECORDING_AGI pointing at ``service``, the apiKey in RECORDING_API_KEY (unless not
    ``key_variable``: then the sample's placeholder in [globals] is what the service reads),
    and the pause/resume/stop keys enabled."""
    context = unique_name("call")
    lines = ["Answer()", f"Set(RECORDING_AGI={service.agi_url})", f"Set(__DYNAMIC_FEATURES={FEATURES})"]
    if key_variable:
        lines.append(f"Set(RECORDING_API_KEY={API_KEY})")
    for step in steps:
        label = re.fullmatch(r"\{report:(.+)\}", step)
        lines.append(report(f"{context}:{label.group(1)}") if label else step.replace("{context}", context))
    lines.append("Hangup()")
    pbx.add_dialplan(context, "s", lines)
    mark = pbx.ami.mark()
    channel = pbx.originate(context)
    uniqueid = pbx.ami.wait_event({"Event": "Newchannel", "Channel": channel}, 10, mark)["Uniqueid"]
    return Call(context, channel, uniqueid)


def agi(service: Serve, route: str = "recording/start", query: str = "", key: bool = True) -> str:
    """An AGI() line to ``route`` of ``service``, with the apiKey in the URL when ``key``."""
    parts = [query] if query else []
    if key:
        parts.append(f"apiKey={API_KEY}")
    return f"AGI({start_url(service, '&'.join(parts), route)})"


def post(service: Serve, operation: str, target: str, **more) -> Answer:
    """The HTTP API's ``operation`` (start, stop, pause, resume) on ``target`` (a unique id or
    an extension), as a CRM calls it."""
    return HTTPClient(service.http_port).post(f"{CALLS}/{operation}", extenOrUniqueId=target, apiKey=API_KEY, **more)


def leg_of(service: Serve, uniqueid: str, state: str | None = None, timeout: float = 15):
    """The one leg of the call, once it is in ``state`` (when given)."""
    def found():
        legs = service.legs(unique_id=uniqueid)
        return legs[0] if len(legs) == 1 and (state is None or legs[0].state == state) else None

    return wait_until(found, timeout, f"one leg of {uniqueid}" + (f" in state {state}" if state else ""))


def complete(path: Path, timeout: float = 15) -> wav.WavHeader:
    """The header of ``path`` once MixMonitor has closed it (its sizes written)."""
    return wait_until(lambda: path.exists() and wav.header(path).complete and wav.header(path), timeout,
                      f"{path} closed by MixMonitor")
