#!/usr/bin/env python3
"""An Asterisk manager (AMI) endpoint that streams captured call transfers, for bench/run.py.

    python bench/amistream.py --listen 127.0.0.1:PORT --rate 100 [--scenarios 1,3,5,6] [--buffer BYTES]
    python bench/amistream.py --self-test

Our server logs in to it (``RECORDING_AMI_URL``) as to an Asterisk: the banner, ``Login`` (the
user and secret checked), ``Ping``, ``CoreSettings`` (no system name) and ``CoreShowChannels``
(the stream's live channels) are answered as Asterisk 22 answers them; any other action gets
Asterisk's ``Invalid/unknown command``. The actions received are counted and reported.

The stream: the events of the captured transfer scenarios (``tests/captures/transfers``, read
with tests/capture_files.py's ``transfer_events``), one copy of a scenario started every
1/RATE s, the scenarios in turn, each copy's events at their captured times after its start,
so about RATE x (the scenarios' mean duration) calls are in flight once it has run that long.
Each copy gets its own ids as tests/fake_ami.py's ``rewrite_ids`` gives them (copy ``k`` under
the tag ``c<k>``), so no two copies share a unique id, a Linkedid, a bridge or a channel name.
Every event carries ``Timestamp:`` (as with ``timestampevents = yes`` in manager.conf): the
time it was written, so the server's side can tell how far behind the stream it is
(bench/followprobe.py).

Nothing the server does slows the stream: every 5 ms the events due are written in one
``write`` to each logged-in session; when a session's own write buffer already holds more than
``--buffer`` bytes (the kernel's socket buffers are full, since the server does not read), the
batch is dropped for that session and counted, never waited for.

Control, one command a line on stdin, one JSON line on stdout for each: ``go`` (start or resume
the stream's clock), ``pause`` (stop it: the calls in flight stay in flight, and go on when it
resumes) and ``stats`` answer the figures since the previous ``pause`` or ``stats``
(:meth:`Stream.interval`); ``quit`` ends the process. The stream starts paused. Its first line
on stdout is ``{"listening": PORT, ...}``.

The process imports tests/ (the captures and the id rewriting) and nothing of the service but
its AMI parser (through tests/capture_files.py); the self-test (amistream_check.py) also its
AMI client, to hear the stream as the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.capture_files import transfer_events  # noqa: E402
from tests.fake_ami import rewrite_ids  # noqa: E402

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
SCENARIOS = ("1", "3", "5", "6")  # blind, attended, queue then blind, Redirect
# Stands for a copy's tag in the pre-rendered events (letters only, in no capture: checked).
PLACEHOLDER = "QzqQzq"
_PLACEHOLDER = PLACEHOLDER.encode()
TICK = 0.005
UNKNOWN_COMMAND = "Invalid/unknown command: {}. Use Action: ListCommands to show available commands."
# What a channel's CoreShowChannel event carries, from the channel's latest events.
_SHOWN = ("Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
          "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority", "Uniqueid", "Linkedid")


def render(event: dict[str, str]) -> bytes:
    """An event's bytes as Asterisk writes them, without the empty line that ends it (a value
    holding newlines is a repeated key, as parse_message joins them)."""
    return "".join(f"{key}: {line}\r\n" for key, value in event.items() for line in value.split("\n")).encode()


@dataclass
class Slot:
    """One event of the periodic schedule: in period ``q`` (``len(scenarios)/rate`` seconds
    each) it is due at ``q*period + phase`` and belongs to copy ``n*(q - shift) + scenario``."""

    phase: float
    scenario: int
    shift: int
    template: bytes
    index: int  # its place in its scenario's events (0: the copy's first, a transfer starts)
    kind: str
    channel: str  # its Channel (template), for the channel table
    fields: dict[str, str]  # the template's fields, for the channel table (a few kinds only)


def build_schedule(scenarios: tuple[str, ...], rate: float) -> tuple[list[Slot], float, dict]:
    """The stream's schedule: the slots sorted by phase, the period, and per scenario its event
    count, bytes and duration."""
    n = len(scenarios)
    period = n / rate
    slots: list[Slot] = []
    about: dict[str, dict] = {}
    for j, capture in enumerate(scenarios):
        events = rewrite_ids(transfer_events(capture), PLACEHOLDER)
        size = 0
        for index, (at, event) in enumerate(events):
            offset = j / rate + at
            shift = math.floor(offset / period)
            template = render(event)
            size += len(template)
            kind = event.get("Event", "")
            keep = event if kind in ("Newchannel", "Newexten", "BridgeEnter", "BridgeLeave", "Rename", "Newstate",
                                     "Hangup") else {}
            slots.append(Slot(offset - shift * period, j, shift, template, index, kind, event.get("Channel", ""),
                              keep))
        about[capture] = {"events": len(events), "bytes": size, "seconds": events[-1][0] if events else 0.0}
    slots.sort(key=lambda s: (s.phase, s.scenario))
    return slots, period, about


@dataclass(eq=False)
class Session:
    writer: asyncio.StreamWriter
    logged_in: bool = False
    events: bool = False


@dataclass
class Counters:
    due: int = 0
    sent: int = 0
    bytes: int = 0
    dropped: int = 0  # not written: the session's buffer was over the bound
    unheard: int = 0  # due while no session had logged in with events on
    copies: int = 0  # scenario copies whose first event was due (transfers started)
    late_max_ms: float = 0.0  # the latest a batch went out after its first event was due
    late_over_20ms: int = 0  # batches that went out 20 ms or more after it
    buffer_max: int = 0  # the most bytes a session's write buffer held before a write
    actions: dict = field(default_factory=dict)
    logins: int = 0


class Stream:
    """The endpoint and its stream (see the module docstring)."""

    def __init__(self, rate: float, scenarios: tuple[str, ...] = SCENARIOS, *, username: str = "bench",
                 secret: str = "bench", bound: int = 1 << 20):
        self.rate, self.scenarios, self.username, self.secret, self.bound = rate, scenarios, username, secret, bound
        self.slots, self.period, self.about = build_schedule(scenarios, rate)
        self.sessions: set[Session] = set()
        self.channels: dict[str, dict[str, str]] = {}  # rendered name -> template fields
        self.tags: dict[str, bytes] = {}  # rendered name -> its copy's tag
        self.totals, self.now = Counters(), Counters()
        self._virtual = 0.0  # seconds the stream has run
        self._resumed: float | None = None
        self._q, self._i = 0, 0  # the next slot: period q, index i
        self._cpu, self._wall, self._mark = self._cpu_now(), time.monotonic(), 0.0
        self.server: asyncio.AbstractServer | None = None

    # -- the clock ---------------------------------------------------------------------------

    def clock(self) -> float:
        """Seconds of stream so far (the clock stops while paused)."""
        if self._resumed is None:
            return self._virtual
        return self._virtual + time.monotonic() - self._resumed

    def go(self) -> None:
        if self._resumed is None:
            self._resumed = time.monotonic()

    def pause(self) -> None:
        if self._resumed is not None:
            self.flush()  # what fell due before the pause goes out
            self._virtual = self.clock()
            self._resumed = None

    # -- the stream --------------------------------------------------------------------------

    def due(self, until: float) -> list[tuple[Slot, int, float]]:
        """The slots due up to ``until`` not sent yet, as (slot, copy, due time)."""
        out = []
        slots, n = self.slots, len(self.scenarios)
        while True:
            slot = slots[self._i]
            at = self._q * self.period + slot.phase
            if at > until:
                return out
            cycle = self._q - slot.shift
            if cycle >= 0:
                out.append((slot, n * cycle + slot.scenario, at))
            self._i += 1
            if self._i == len(slots):
                self._i, self._q = 0, self._q + 1

    def flush(self) -> None:
        """Writes every event due now, in one write per session."""
        now = self.clock()
        batch = self.due(now)
        if not batch:
            return
        stamp = f"Timestamp: {time.time():.6f}\r\n\r\n".encode()
        parts = []
        for slot, copy, _ in batch:
            tag = f"c{copy}".encode()
            parts.append(slot.template.replace(_PLACEHOLDER, tag))
            parts.append(stamp)
            if slot.fields:
                self._keep(slot, tag)
        data = b"".join(parts)
        late_ms = 1000 * (now - batch[0][2])
        listeners = [s for s in self.sessions if s.events and not s.writer.is_closing()]
        for counters in (self.totals, self.now):
            counters.due += len(batch)
            counters.copies += sum(1 for slot, _, _ in batch if slot.index == 0)
            counters.late_max_ms = max(counters.late_max_ms, late_ms)
            counters.late_over_20ms += late_ms >= 20
            if not listeners:
                counters.unheard += len(batch)
        for session in listeners:
            held = session.writer.transport.get_write_buffer_size()
            for counters in (self.totals, self.now):
                counters.buffer_max = max(counters.buffer_max, held)
            if held > self.bound:
                for counters in (self.totals, self.now):
                    counters.dropped += len(batch)
                continue
            session.writer.write(data)
            for counters in (self.totals, self.now):
                counters.sent += len(batch)
                counters.bytes += len(data)

    def _keep(self, slot: Slot, tag: bytes) -> None:
        """The live channels as the event leaves them (for CoreShowChannels)."""
        text = tag.decode()
        name = slot.channel.replace(PLACEHOLDER, text)
        if slot.kind == "Hangup":
            self.channels.pop(name, None)
            return
        if slot.kind == "Rename":
            new = slot.fields.get("Newname", "").replace(PLACEHOLDER, text)
            if name in self.channels and new:
                self.channels[new] = self.channels.pop(name)
                self.channels[new]["Channel"] = slot.fields["Newname"]
                self.tags[new] = tag
            return
        known = self.channels.get(name)
        if known is None:
            if slot.kind != "Newchannel":
                return
            known = self.channels[name] = {"BridgeId": "", "Application": "", "ApplicationData": ""}
            self.tags[name] = tag
        known.update((k, slot.fields[k]) for k in _SHOWN if k in slot.fields)
        if slot.kind == "BridgeEnter":
            known["BridgeId"] = slot.fields.get("BridgeUniqueid", "")
        elif slot.kind == "BridgeLeave":
            known["BridgeId"] = ""
        elif slot.kind == "Newexten":
            known["Application"] = slot.fields.get("Application", "")
            known["ApplicationData"] = slot.fields.get("AppData", "")

    async def pump(self) -> None:
        while True:
            if self._resumed is not None:
                self.flush()
            await asyncio.sleep(TICK)

    # -- the figures ---------------------------------------------------------------------------

    @staticmethod
    def _cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def interval(self) -> dict:
        """The figures since the previous call, and the totals: ``due`` events fell due, ``sent``
        were written, ``dropped`` were not (the server's side was over ``--buffer`` behind),
        ``unheard`` fell due with no session listening; ``kept``: nothing dropped or unheard and
        no batch 100 ms or more late. ``cpu_s`` is this process's own CPU."""
        cpu, wall = self._cpu_now(), time.monotonic()
        now, self.now = self.now, Counters()
        out = {}
        for name, c in (("interval", now), ("total", self.totals)):
            out[name] = {**c.__dict__, "kept": not c.dropped and not c.unheard and c.late_max_ms < 100}
        out["interval"].update(cpu_s=round(cpu - self._cpu, 3), wall_s=round(wall - self._wall, 3),
                               running_s=round(self.clock() - self._mark, 3))
        out["clock_s"] = round(self.clock(), 3)
        out["live_channels"] = len(self.channels)
        self._cpu, self._wall, self._mark = cpu, wall, self.clock()
        return out

    # -- the manager interface -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, limit=1 << 16)
        asyncio.get_running_loop().create_task(self.pump())
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        self.sessions.add(session)
        writer.write(BANNER)
        try:
            while (message := await read_action(reader)) is not None:
                if not self._answer(session, message):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.sessions.discard(session)
            writer.close()

    def _answer(self, session: Session, message: dict[str, str]) -> bool:
        name = message.get("Action", "")
        aid = message.get("ActionID")
        for counters in (self.totals, self.now):
            counters.actions[name] = counters.actions.get(name, 0) + 1
        low = name.lower()
        if low == "login":
            if message.get("Username", "").lower() != self.username.lower() or message.get("Secret") != self.secret:
                reply(session, aid, [("Response", "Error"), ("Message", "Authentication failed")])
                return False
            session.logged_in = True
            session.events = message.get("Events", "on").strip().lower() not in ("no", "false", "off", "0", "n", "f")
            for counters in (self.totals, self.now):
                counters.logins += 1
            reply(session, aid, [("Response", "Success"), ("Message", "Authentication accepted")])
            if session.events:
                reply(session, None, [("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", "5"),
                                      ("LastReload", "5"), ("Status", "Fully Booted")])
        elif low == "logoff":
            reply(session, aid, [("Response", "Goodbye"), ("Message", "Thanks for all the fish.")])
            return False
        elif not session.logged_in:
            reply(session, aid, [("Response", "Error"), ("Message", "Permission denied")])
        elif low == "ping":
            reply(session, aid, [("Response", "Success"), ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")])
        elif low == "coresettings":
            reply(session, aid, [("Response", "Success"), ("AMIversion", "11.0.0"), ("AsteriskVersion", "22.10.1"),
                                 ("SystemName", "")])
        elif low == "coreshowchannels":
            self._show_channels(session, aid)
        else:
            reply(session, aid, [("Response", "Error"), ("Message", UNKNOWN_COMMAND.format(name))])
        return True

    def _show_channels(self, session: Session, aid: str | None) -> None:
        reply(session, aid, [("Response", "Success"), ("EventList", "start"), ("Message", "Channels will follow")])
        for name, fields in list(self.channels.items()):
            tag = self.tags[name].decode()
            shown = [(k, fields.get(k, "").replace(PLACEHOLDER, tag)) for k in _SHOWN]
            shown += [("Application", fields["Application"]), ("ApplicationData", fields["ApplicationData"]),
                      ("Duration", "00:00:10"), ("BridgeId", fields["BridgeId"].replace(PLACEHOLDER, tag))]
            reply(session, aid, [("Event", "CoreShowChannel")] + shown)
        reply(session, aid, [("Event", "CoreShowChannelsComplete"), ("EventList", "Complete"),
                             ("ListItems", str(len(self.channels)))])


def reply(session: Session, aid: str | None, pairs: list[tuple[str, str]]) -> None:
    """One message; the ActionID after the first field, as Asterisk places it."""
    if aid is not None:
        pairs = pairs[:1] + [("ActionID", aid)] + pairs[1:]
    session.writer.write(("".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n").encode())


async def read_action(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One action as a dict (the first of repeated keys wins, as astman_get_header()), or None
    at the end of the stream."""
    message: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            return None
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if message:
                return message
            continue
        key, _, value = text.partition(":")
        message.setdefault(key.strip(), value.lstrip(" \t"))


# -- the process -------------------------------------------------------------------------------------

async def serve(args) -> None:
    host, _, port = args.listen.rpartition(":")
    stream = Stream(args.rate, tuple(args.scenarios.split(",")), username=args.username, secret=args.secret,
                    bound=args.buffer)
    port = await stream.start(host, int(port))
    say({"listening": port, "rate": args.rate, "scenarios": stream.about, "period_s": stream.period})
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():
        command = line.decode().strip()
        if command == "go":
            stream.go()
            say({"ok": "go", "clock_s": round(stream.clock(), 3)})
        elif command == "pause":
            stream.pause()
            say(stream.interval())
        elif command == "stats":
            say(stream.interval())
        elif command == "quit":
            break
        elif command:
            say({"error": f"unknown command {command!r}"})
    stream.server.close()
    for session in list(stream.sessions):
        session.writer.close()
    await asyncio.sleep(0.1)  # the sessions' handlers see the end of their stream and return


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1, a free port)")
    p.add_argument("--rate", type=float, default=100.0, help="transfers (scenario copies) started per second")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="capture ids, in turn (default 1,3,5,6)")
    p.add_argument("--username", default="bench")
    p.add_argument("--secret", default="bench")
    p.add_argument("--buffer", type=int, default=1 << 20,
                   help="bytes a session's write buffer may hold before a batch is dropped (default 1 MiB)")
    p.add_argument("--self-test", action="store_true", help="check the stream against the captures and exit")
    args = p.parse_args(argv)
    if args.rate <= 0:
        p.error("--rate must be positive")
    if args.self_test:
        from amistream_check import self_test

        return self_test()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
