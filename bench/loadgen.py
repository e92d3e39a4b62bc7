#!/usr/bin/env python3
"""A FastAGI load generator that plays Asterisk's side of many sessions at once.

Each session connects, sends the environment block exactly as Asterisk 22 does (see
``shared/asterisk/fastagi-start-ext100.raw.txt``: same keys, same order, bare ``\\n`` line ends,
``agi_accountcode: `` with its trailing space, one empty line), then answers every command line
the way Asterisk does:

* ``GET VARIABLE V``            -> ``200 result=1 (value)`` or ``200 result=0`` when unset
* ``GET FULL VARIABLE ${V}``    -> ``200 result=1 (expanded)``
* ``SET VARIABLE V "x"``        -> ``200 result=1`` (the value is remembered, quotes stripped)
* ``EXEC MixMonitor "f,opt"``   -> ``200 result=0``; ``i(VAR)`` in the options sets VAR to an
  id like ``0x7fcdbc008fc0``
* ``EXEC StopMixMonitor [id]``  -> ``200 result=0``
* ``EXEC MSet "N1=v1,N2=v2"``   -> ``200 result=0``; the pairs are parsed as Asterisk 22 does
  (``app_separate_args``/``mset``, below) and the variables set
* ``EXEC <other application>``  -> ``200 result=-2`` (no such application)
* ``VERBOSE``/``NOOP``          -> ``200 result=1`` / ``200 result=0``
* anything else                 -> ``510 Invalid or unknown command``

Command lines are split as res_agi's ``parse_args()`` does (whitespace separates, ``"..."``
groups a word with the quotes removed, ``\\`` escapes), independently of the code under test,
and a line longer than res_agi's buffer (8,192 bytes with its newline) is cut there, the rest
read as the next command.
When the server half-closes, the session answers ``HANGUP`` and closes, as Asterisk does.

A session counts as ok when the connection completed that exchange and the channel variable
``RECORDING_STATUS`` ends up ``STARTED`` (set by ``SET VARIABLE`` or by ``MSet``); anything else
(refused/timed-out connection, reset, no half-close within ``--timeout``, another status) is an
error, classified in the report.

N sessions run at concurrency C: C sessions are in flight at all times until N have been
started (or ``--duration-cap`` seconds have passed; sessions in flight then still finish).
``--procs P`` splits C and N over P forked processes so that the generator is not what
limits the figures; each reports its CPU time (getrusage), summed in the report.

With ``--breakdown`` each session also notes when each of its bytes came and went, and the
report gives the median of each step (see ``session_steps``). ``--self-test`` checks the MSet parser
against the captures in ``tests/captures/`` (a copy of ``shared/asterisk/``) and exits.

    python bench/loadgen.py --target 127.0.0.1:4573 --api-key KEY -n 10000 -c 100 --procs 2
    python bench/loadgen.py --self-test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import sys
import time
from collections import Counter
from pathlib import Path

MAX_ERROR_SAMPLES = 5
# A session this slow (seconds) or slower is counted in the histogram of the tail and its start
# time kept (the slowest SLOWEST of them are reported), so that a stall cannot hide in a median.
SLOW = 0.010
# The tail histogram's buckets, in ms: [10, 20), [20, 50), ... [1000, inf).
TAIL_BUCKETS = (10, 20, 50, 100, 200, 500, 1000)
SLOWEST = 10
# The checkout's copy of the captures of shared/asterisk/ (tests/captures, which the tests read
# too), so that the self-test runs from any checkout.
CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "captures"


def raise_nofile() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns the limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- what Asterisk sends and answers -----------------------------------------------------------

def environment(script: str, *, host: str, port: int, uniqueid: str, channel: str, extension: str,
                threadid: int) -> bytes:
    """The environment block exactly as Asterisk 22.10.1 sends it (ext100 capture)."""
    tech = channel.split("/", 1)[0]
    return (
        "agi_network: yes\n"
        f"agi_network_script: {script}\n"
        f"agi_request: agi://{host}:{port}/{script}\n"
        f"agi_channel: {channel}\n"
        "agi_language: en\n"
        f"agi_type: {tech}\n"
        f"agi_uniqueid: {uniqueid}\n"
        "agi_version: 22.10.1\n"
        "agi_callerid: unknown\n"
        "agi_calleridname: unknown\n"
        "agi_callingpres: 67\n"
        "agi_callingani2: 0\n"
        "agi_callington: 0\n"
        "agi_callingtns: 0\n"
        "agi_dnid: unknown\n"
        "agi_rdnis: unknown\n"
        "agi_context: bench\n"
        f"agi_extension: {extension}\n"
        "agi_priority: 2\n"
        "agi_enhanced: 0.0\n"
        "agi_accountcode: \n"
        f"agi_threadid: {threadid}\n"
        "\n"
    ).encode("utf-8")


# A word without backslashes: quoted stretches (an unclosed quote runs to the end of the line)
# and unquoted characters other than space and tab, run together.
_WORD = re.compile(r'(?:"[^"]*(?:"|$)|[^ \t"])+')


def parse_args_like_res_agi(line: str, max_args: int = 128) -> list[str]:
    """Splits a command line into words as res_agi.c ``parse_args()`` does: spaces and tabs
    separate words, ``"`` toggles quoting (and is dropped; an opening quote after whitespace
    starts a word, so ``""`` is an empty word), ``\\`` makes the next character literal."""
    if "\\" not in line:  # the common case, same result without the character loop
        if '"' not in line:
            return [w for w in line.replace("\t", " ").split(" ") if w][: max_args - 1]
        return [w.replace('"', "") for w in _WORD.findall(line)][: max_args - 1]
    words: list[list[str]] = []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                words.append([])
                whitespace = False
            continue
        if (ch == " " or ch == "\t") and not quoted and not escaped:
            whitespace = True
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            if len(words) >= max_args - 1:
                continue  # res_agi: "Too many arguments, truncating"
            words.append([])
            whitespace = False
        words[-1].append(ch)
        escaped = False
    return ["".join(w) for w in words]


# res_agi reads a command with fgets() into a buffer of AGI_BUF_LEN (8,192) bytes: a longer
# line is cut after 8,191 bytes and the rest is read as the next command.
AGI_BUF_LEN = 8192
# GET VARIABLE answers at most this many bytes of a value (captured: 8,000 came back as 1,023).
GET_VARIABLE_MAX = 1023
# MSet parses at most 99 pairs (AST_APP_ARG(pair)[99]); a 99th element holds the rest, unsplit.
MSET_MAX_PAIRS = 99


def app_separate_args(data: str, delim: str, arraylen: int) -> list[str]:
    """Splits an application's argument string as Asterisk's ``__ast_app_separate_args()`` does
    with ``remove_chars`` set, as MSet calls it (main/app.c): ``delim`` separates, except inside
    ``(...)`` or ``[...]`` (counted even within quotes) or between ``"``s; a ``"`` is dropped (and
    toggles quoting) and a ``\\`` is dropped and the character after it is taken as it is,
    unexamined. At most ``arraylen - 1`` arguments are split off; the rest of the string, when
    any, is the last one, as it is. A ``delim`` at the very end gives one more, empty, argument."""
    args: list[str] = []
    paren = bracket = 0
    quote = False
    i, n = 0, len(data)
    ended_on_delim = False
    while i < n and len(args) < arraylen - 1:
        cur: list[str] = []
        ended_on_delim = False
        while i < n:
            c = data[i]
            if c == "(":
                paren += 1
            elif c == ")":
                if paren:
                    paren -= 1
            elif c == "[":
                bracket += 1
            elif c == "]":
                if bracket:
                    bracket -= 1
            elif c == '"' and delim != '"':
                quote = not quote
                i += 1
                continue
            elif c == "\\":
                # NOTE: memmove() drops the backslash and the loop's scan++ steps over the
                # character that took its place. A backslash at the very end makes Asterisk
                # read past the string; here it just ends it.
                if i + 1 < n:
                    cur.append(data[i + 1])
                i += 2
                continue
            elif c == delim and not paren and not quote and not bracket:
                i += 1
                ended_on_delim = True
                break
            cur.append(c)
            i += 1
        args.append("".join(cur))
    if i < n:
        args.append(data[i:])
    elif ended_on_delim:
        args.append("")
    return args


def mset_pairs(data: str) -> list[tuple[str, str]]:
    """The (name, value) pairs that ``MSet(data)`` sets, in order, as pbx_variables.c
    ``pbx_builtin_setvar_multiple()`` finds them: the data split on ``,`` by
    :func:`app_separate_args`, then each piece split at its first ``=`` outside brackets and
    quotes (the name parsed again, the value taken as it is); a piece without ``=`` is ignored."""
    pairs = []
    if not data:
        return pairs
    for piece in app_separate_args(data, ",", MSET_MAX_PAIRS):
        parts = app_separate_args(piece, "=", 2)
        if len(parts) == 2:
            pairs.append((parts[0], parts[1]))
    return pairs


def mset_encode(pairs: list[tuple[str, str]]) -> str:
    """One ``EXEC MSet`` command line setting ``pairs``, escaped as ``shared/asterisk/README.md``
    says ("Setting several variables in one command"): ``\\ " , ( ) [ ]`` in a value behind a
    backslash for MSet, then the whole data as one double-quoted word with ``\\`` and ``"``
    behind a backslash for res_agi. Used by the reference server and the self-test."""
    data = ",".join(name + "=" + _MSET_VALUE.sub(_backslashed, value) for name, value in pairs)
    return 'EXEC MSet "' + data.replace("\\", "\\\\").replace('"', '\\"') + '"'


_MSET_VALUE = re.compile(r'[\\",()\[\]]')


def _backslashed(match: re.Match) -> str:
    return "\\" + match.group()


_id_counter = 0x7FCDBC008FC0


def new_mixmonitor_id() -> str:
    global _id_counter
    _id_counter += 0x340
    return hex(_id_counter)


class Channel:
    """The channel's side of one AGI session: its variables and what it was asked to do."""

    __slots__ = ("variables", "mixmonitors")

    def __init__(self, uniqueid: str, channel: str):
        self.variables = {"UNIQUEID": uniqueid, "CHANNEL": channel}
        self.mixmonitors: list[str] = []

    def answer(self, line: str) -> str:
        if line.endswith("\r"):
            line = line[:-1]
        words = parse_args_like_res_agi(line)
        if not words:
            return "510 Invalid or unknown command"
        verb = words[0].upper()
        n = len(words)
        if verb == "GET" and n >= 2 and words[1].upper() == "VARIABLE":
            if n != 3:
                return "520 Invalid command syntax.  Proper usage not available."
            value = self.variables.get(words[2])
            if value is None:
                return "200 result=0"
            if len(value) > GET_VARIABLE_MAX // 4 and len(value.encode("utf-8", "surrogateescape")) > GET_VARIABLE_MAX:
                value = value.encode("utf-8", "surrogateescape")[:GET_VARIABLE_MAX].decode("utf-8", "surrogateescape")
            return f"200 result=1 ({value})"
        if verb == "GET" and n >= 3 and words[1].upper() == "FULL" and words[2].upper() == "VARIABLE":
            if n < 4:
                return "520 Invalid command syntax.  Proper usage not available."
            return f"200 result=1 ({self._expand(words[3])})"
        if verb == "SET" and n >= 2 and words[1].upper() == "VARIABLE":
            if n != 4:
                return "520 Invalid command syntax.  Proper usage not available."
            self.set(words[2], words[3])
            return "200 result=1"
        if verb == "EXEC":
            if n < 2:
                return "520 Invalid command syntax.  Proper usage not available."
            # NOTE: one data word only; anything after it is dropped, as res_agi does.
            return self._exec(words[1].lower(), words[2] if n > 2 else "")
        if verb == "VERBOSE":
            return "200 result=1"
        if verb == "NOOP":
            return "200 result=0"
        return "510 Invalid or unknown command"

    def set(self, name: str, value: str) -> None:
        """``pbx_builtin_setvar_helper()``: a leading ``_`` or ``__`` (inheritance) is not part of
        the name the variable is read back by."""
        if name.startswith("_"):
            name = name[2:] if name.startswith("__") else name[1:]
        self.variables[name] = value

    def _expand(self, text: str) -> str:
        out, i = [], 0
        while True:
            start = text.find("${", i)
            if start < 0:
                out.append(text[i:])
                return "".join(out)
            end = text.find("}", start)
            if end < 0:
                out.append(text[i:])
                return "".join(out)
            out.append(text[i:start])
            out.append(self.variables.get(text[start + 2:end], ""))
            i = end + 1

    def _exec(self, app: str, data: str) -> str:
        if app == "mixmonitor":
            _file, _, options = data.partition(",")
            mid = new_mixmonitor_id()
            self.mixmonitors.append(mid)
            pos = options.find("i(")
            while pos >= 0:
                end = options.find(")", pos)
                if end < 0:
                    break
                self.set(options[pos + 2:end], mid)
                pos = options.find("i(", end)
            return "200 result=0"
        if app == "mset":
            for name, value in mset_pairs(data):
                self.set(name, value)
            return "200 result=0"
        if app == "stopmixmonitor":
            if data:
                if data in self.mixmonitors:
                    self.mixmonitors.remove(data)
            elif self.mixmonitors:
                self.mixmonitors.pop()
            return "200 result=0"
        if app == "wait":
            return "200 result=0"
        return "200 result=-2"


# -- one session -------------------------------------------------------------------------------

class AsteriskProtocol(asyncio.Protocol):
    """Plays Asterisk on one FastAGI connection.

    Commands are read as res_agi.c's run_agi() reads them: each wake-up of its poll on the
    socket takes ONE line with fgets() from a stdio buffer that holds whatever had arrived.
    A line that came with an earlier one waits in that buffer, unseen by the poll, until more
    bytes (or the server's EOF) arrive; at EOF every buffered line is taken in turn. A server
    that pipelines commands therefore stalls here as it would on a real Asterisk. fgets() takes
    at most AGI_BUF_LEN - 1 bytes: the rest of a longer line is the next command.

    With ``timed``, ``marks`` gets (line taken, reply written, line) for each command, and
    ``env_at`` the time the environment was written.
    """

    def __init__(self, env: bytes, channel: Channel, delay: float, done: asyncio.Future, timed: bool = False):
        self.env = env
        self.channel = channel
        self.delay = delay
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        # New bytes arrived since the last line was taken: the poll would return.
        self.woken = False
        # A command is being run (its reply waits ``delay``).
        self.busy = False
        self.eof = False
        self.eof_at = 0.0
        self.commands = 0
        self.stalled = 0
        self.self_connected = False
        self.env_at = 0.0
        self.marks: list[list] | None = [] if timed else None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if transport.get_extra_info("sockname") == transport.get_extra_info("peername"):
            # NOTE: with nobody listening on a port inside the ephemeral range, the kernel can
            # connect a socket to itself (TCP simultaneous open); it would then talk to itself.
            self.self_connected = True
            transport.abort()
            return
        transport.write(self.env)
        self.env_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.woken = True
        self._turn()

    def eof_received(self) -> bool:
        # The server half-closed: the lines still buffered are run, then Asterisk answers
        # HANGUP and closes.
        self.eof = True
        self.eof_at = time.monotonic()
        self._turn()
        return True  # we close ourselves once HANGUP is written

    def _turn(self) -> None:
        """One turn of run_agi()'s loop, if its poll would return now."""
        while not self.busy and (self.woken or self.eof):
            end = self.buffer.find(b"\n", 0, AGI_BUF_LEN - 1)
            if end >= 0:
                rest = end + 1
            elif len(self.buffer) >= AGI_BUF_LEN - 1:
                end = rest = AGI_BUF_LEN - 1  # fgets() stops at a full buffer
            elif not self.eof:
                return  # fgets goes on reading until the line is whole
            elif not self.buffer:
                self._hangup()
                return
            else:
                end = rest = len(self.buffer)
            line = self.buffer[:end].decode("utf-8", "surrogateescape")
            self.buffer = self.buffer[rest:]
            self.woken = False
            self.commands += 1
            if b"\n" in self.buffer and not self.eof:
                self.stalled += 1
            if self.delay > 0:
                self.busy = True
                if self.marks is not None:
                    self.marks.append([time.monotonic(), 0.0, line])
                asyncio.get_running_loop().call_later(self.delay, self._reply, line)
                return
            if self.marks is not None:
                taken = time.monotonic()
                self.transport.write((self.channel.answer(line) + "\n").encode("utf-8", "surrogateescape"))
                self.marks.append([taken, time.monotonic(), line])
                continue
            self.transport.write((self.channel.answer(line) + "\n").encode("utf-8", "surrogateescape"))

    def _reply(self, line: str) -> None:
        """Asterisk runs one command at a time: each reply comes ``delay`` after the command."""
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write((self.channel.answer(line) + "\n").encode("utf-8", "surrogateescape"))
        if self.marks:
            self.marks[-1][1] = time.monotonic()
        self._turn()

    def _hangup(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"HANGUP\n")
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


def command_label(line: str) -> str:
    """A short name for a command in the breakdown: ``EXEC MixMonitor``, ``GET VARIABLE X``."""
    words = parse_args_like_res_agi(line)
    if len(words) >= 3 and words[1].upper() == "VARIABLE":
        return " ".join(words[:3])
    return " ".join(words[:2])


def session_steps(started: float, proto: AsteriskProtocol) -> tuple:
    """One session's steps, in seconds, as the fake Asterisk saw them: (connect, [server's turn
    before each command], [Asterisk's turn for each command], server's turn before the
    half-close, total, [command labels]). The server's turn runs from the last byte we wrote
    (the environment, or the reply before) to the command's line being read here: both
    crossings of the loopback plus all the server did. Asterisk's turn runs from the line read
    to the reply written (``--delay`` included). The steps add up to the total."""
    think, answer, labels = [], [], []
    last = proto.env_at
    for taken, replied, line in proto.marks:
        think.append(taken - last)
        answer.append(replied - taken)
        labels.append(line)
        last = replied
    return (proto.env_at - started, think, answer, proto.eof_at - last, proto.eof_at - started, labels)


def _common_label(first: str, last: str) -> str:
    """One label for a command whose words differ from session to session (a per-leg name)."""
    if first == last:
        return first
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    cut = max(first.rfind(c, 0, n) for c in "_-./ ") + 1  # back to a word's edge
    return first[:cut or n] + "<...>"


def summarize_steps(steps: list[tuple]) -> dict | None:
    """Per-step medians and means (ms) over the sessions of the most common shape (number of
    commands). The means add up to the mean total; the medians need not add up to anything."""
    if not steps:
        return None
    shapes = Counter(len(s[1]) for s in steps)
    n, _ = shapes.most_common(1)[0]
    chosen = [s for s in steps if len(s[1]) == n]

    def med(values) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return 1000 * (values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)

    def mean(values) -> float:
        values = list(values)
        return 1000 * sum(values) / len(values)

    def both(key: str, pick) -> dict:
        return {f"{key}_ms": med(pick(s) for s in chosen), f"{key}_mean_ms": mean(pick(s) for s in chosen)}

    return {
        "sessions": len(chosen), "other_shapes": {str(k): v for k, v in shapes.items() if k != n},
        **both("connect", lambda s: s[0]),
        "commands": [{"label": _common_label(command_label(chosen[0][5][i]), command_label(chosen[-1][5][i])),
                      **both("think", lambda s: s[1][i]), **both("answer", lambda s: s[2][i])}
                     for i in range(n)],
        **both("close", lambda s: s[3]), **both("total", lambda s: s[4]),
    }


class Totals:
    def __init__(self):
        self.latencies: list[float] = []
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, list[str]] = {}
        self.steps: list[tuple] = []
        # (latency, start on CLOCK_MONOTONIC, seq) of each ok session of SLOW seconds or more
        self.slow: list[tuple[float, float, int]] = []

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        samples = self.samples.setdefault(kind, [])
        if len(samples) < MAX_ERROR_SAMPLES:
            samples.append(detail)


async def one_session(loop, cfg, seq: int, totals: Totals) -> None:
    uniqueid = f"{cfg.epoch}.{seq}"
    chan_name = f"PJSIP/{cfg.extension}-{seq & 0xFFFFFFFF:08x}"
    channel = Channel(uniqueid, chan_name)
    script = cfg.script.replace("{seq}", str(seq)).replace("{uniqueid}", uniqueid)
    env = environment(script, host=cfg.host, port=cfg.port, uniqueid=uniqueid, channel=chan_name,
                      extension=cfg.extension, threadid=140521815484096 + seq)
    done = loop.create_future()
    started = time.monotonic()
    local = (cfg.source_ips[seq % len(cfg.source_ips)], 0) if cfg.source_ips else None
    try:
        async with asyncio.timeout(cfg.connect_timeout):
            transport, proto = await loop.create_connection(
                lambda: AsteriskProtocol(env, channel, cfg.delay, done, cfg.breakdown), cfg.host, cfg.port,
                local_addr=local,
            )
    except TimeoutError:
        totals.error("connect timeout", f"{uniqueid}: no connection within {cfg.connect_timeout:g}s")
        return
    except OSError as exc:
        totals.error(f"connect: {type(exc).__name__}", f"{uniqueid}: {exc}")
        return
    remaining = cfg.timeout - (time.monotonic() - started)
    timer = loop.call_later(max(remaining, 0.001), transport.abort)
    try:
        exc = await done
    finally:
        timer.cancel()
    if not proto.eof:
        if proto.self_connected:
            totals.error("connect: connected to itself", f"{uniqueid}: nobody listens on {cfg.host}:{cfg.port}")
        elif exc is None:  # aborted by our timer
            totals.error("timeout", f"{uniqueid}: no half-close within {cfg.timeout:g}s "
                                    f"after {proto.commands} commands"
                                    + (f" ({proto.stalled} sent before the reply to the one before, which "
                                       "res_agi leaves waiting)" if proto.stalled else ""))
        else:
            totals.error(f"connection lost: {type(exc).__name__}",
                         f"{uniqueid}: {exc} after {proto.commands} commands")
        return
    status = channel.variables.get("RECORDING_STATUS")
    if status == "STARTED":
        totals.ok += 1
        totals.latencies.append(proto.eof_at - started)
        if proto.eof_at - started >= SLOW:
            totals.slow.append((proto.eof_at - started, started, seq))
        if proto.marks is not None:
            totals.steps.append(session_steps(started, proto))
    else:
        error = channel.variables.get("RECORDING_ERROR", "")
        totals.error(f"status={status}", f"{uniqueid}: RECORDING_STATUS={status!r} RECORDING_ERROR={error!r}")


async def run_proc(cfg, concurrency: int, sessions: int, seq_start: int, seq_step: int,
                   start_at: float | None = None) -> dict:
    loop = asyncio.get_running_loop()
    totals = Totals()
    started = 0
    deadline = None
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if cfg.duration_cap:
        deadline = t0 + cfg.duration_cap

    async def worker() -> None:
        nonlocal started
        while started < sessions and (deadline is None or time.monotonic() < deadline):
            seq = seq_start + started * seq_step
            started += 1
            await one_session(loop, cfg, seq, totals)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    t1 = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "started": started, "ok": totals.ok, "errors": dict(totals.errors), "samples": totals.samples,
        "latencies": totals.latencies, "t0": t0, "t1": t1, "steps": totals.steps, "slow": totals.slow,
        "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
    }


def _child(cfg, concurrency, sessions, seq_start, seq_step, ready, go, results) -> None:
    try:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ready.put(os.getpid())
        start_at = go.get()
        result = loop.run_until_complete(run_proc(cfg, concurrency, sessions, seq_start, seq_step, start_at))
        results.put(result)
    except BaseException as exc:  # report, never hang the parent
        results.put({"crash": f"{type(exc).__name__}: {exc}"})


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def tail_histogram(latencies: list[float]) -> dict[str, int]:
    """How many sessions took 10 ms or more, by bucket of TAIL_BUCKETS (``"10-20"`` is
    [10, 20) ms, the last ``"1000+"``); every bucket is listed, empty ones as 0."""
    names = [f"{low}-{high}" for low, high in zip(TAIL_BUCKETS, TAIL_BUCKETS[1:])] + [f"{TAIL_BUCKETS[-1]}+"]
    counts = dict.fromkeys(names, 0)
    for seconds in latencies:
        ms = seconds * 1000
        if ms < TAIL_BUCKETS[0]:
            continue
        index = sum(1 for bound in TAIL_BUCKETS[1:] if ms >= bound)
        counts[names[index]] += 1
    return counts


def run(cfg) -> dict:
    procs = max(1, min(cfg.procs, cfg.concurrency))
    conc = split(cfg.concurrency, procs)
    sess = split(cfg.sessions, procs)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if procs == 1:
        results = [asyncio.run(run_proc(cfg, conc[0], sess[0], cfg.seq_start, 1))]
    else:
        ctx = mp.get_context("fork")
        ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
        children = [
            ctx.Process(target=_child, args=(cfg, conc[i], sess[i], cfg.seq_start + i, procs, ready, go, out),
                        daemon=True)
            for i in range(procs)
        ]
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=30)
        start_at = time.monotonic() + 0.05
        for _ in children:
            go.put(start_at)
        results = []
        cap = (cfg.duration_cap or 0) + cfg.timeout + 60
        for _ in children:
            results.append(out.get(timeout=cap))
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    crashes = [r["crash"] for r in results if "crash" in r]
    if crashes:
        raise RuntimeError("load generator process failed: " + "; ".join(crashes))
    latencies = sorted(x for r in results for x in r["latencies"])
    errors: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    for r in results:
        errors.update(r["errors"])
        for kind, texts in r["samples"].items():
            samples.setdefault(kind, []).extend(texts)
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    ok = sum(r["ok"] for r in results)
    parent_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) if procs == 1 else 0.0
    cpu = parent_cpu if procs == 1 else sum(r["cpu"] for r in results)
    return {
        "target": f"{cfg.host}:{cfg.port}", "concurrency": cfg.concurrency, "procs": procs,
        "sessions": sum(r["started"] for r in results), "ok": ok, "errors": sum(errors.values()),
        "error_kinds": dict(errors), "error_samples": {k: v[:MAX_ERROR_SAMPLES] for k, v in samples.items()},
        "wall_s": wall, "sessions_per_s": ok / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
        "p999_ms": percentile(latencies, 99.9) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "tail": tail_histogram(latencies),
        # the slowest sessions: ms, start (CLOCK_MONOTONIC, the same clock as the server's
        # time.monotonic() on Linux, to match with its log or bench/stallprobe.py), seq
        "slowest": [[round(lat * 1000, 2), round(at, 4), seq] for lat, at, seq in
                    sorted((x for r in results for x in r["slow"]), reverse=True)[:SLOWEST]],
        "mean_ms": (sum(latencies) / len(latencies) * 1000) if latencies else float("nan"),
        "loadgen_cpu_s": cpu, "seq_next": cfg.seq_start + cfg.sessions,
        "breakdown": summarize_steps([x for r in results for x in r["steps"]]) if cfg.breakdown else None,
    }


# -- self-test against the captures ---------------------------------------------------------------

_MIXMONITOR_ID = re.compile(r"0x[0-9a-f]+")


def self_test(captures: Path) -> tuple[list[str], int]:
    """Checks this fake Asterisk against what a real one did. Returns (failures, checks made).

    1. ``fastagi-mset-ext390.txt``: every command the probe sent (``>>``) is answered by a
       :class:`Channel` and must get the reply Asterisk gave (``<<``), so each ``EXEC MSet``
       line, as it was on the wire, must store what ``GET VARIABLE`` then read back. A
       MixMonitor id may differ, but not its shape. Lines the capture shortened (``...``) and
       the commands after one are skipped.
    2. ``fastagi-mset-values.jsonl``: every value sent, escaped by :func:`mset_encode` (five to a
       command, as the probe did, and each alone), must come out of :func:`mset_pairs`, through
       res_agi's word split, exactly as Asterisk stored it.
    3. What main/app.c does that the captures do not show, and that a server must escape for:
       an unescaped ``(`` swallows the later pairs, brackets count inside quotes, ``"`` is
       removed, a piece without ``=`` is ignored, the value keeps a later ``=``.
    """
    failures: list[str] = []
    checked = 0
    transcript = captures / "fastagi-mset-ext390.txt"
    values = captures / "fastagi-mset-values.jsonl"
    for path in (transcript, values):
        if not path.is_file():
            failures.append(f"{path}: not found (give the captures' folder with --captures)")
    if failures:
        return failures, 0

    channel = Channel("1795978798.3", "Local/390@accept-project-00000001;2")
    sent: str | None = None
    skipping = False
    for number, raw in enumerate(transcript.read_text(encoding="utf-8").splitlines(), 1):
        if raw.startswith(">> "):
            sent = raw[3:]
            skipping = skipping or sent.endswith(" ...")
            if not skipping:
                answer = channel.answer(sent)
        elif raw.startswith("<< ") and sent is not None and not skipping:
            expected = raw[3:]
            checked += 1
            if _MIXMONITOR_ID.sub("0x", answer) != _MIXMONITOR_ID.sub("0x", expected):
                failures.append(f"{transcript.name}:{number}: {sent!r} answered {answer!r}, Asterisk {expected!r}")
            sent = None
        elif raw.startswith("..."):
            skipping = False  # the elided part is over; the next commands are whole again
    if checked < 40:
        failures.append(f"{transcript.name}: only {checked} replies compared, the capture looks cut")

    table = [json.loads(line) for line in values.read_text(encoding="utf-8").splitlines() if line.strip()]
    for size in (5, 1):
        for first in range(0, len(table), size):
            batch = table[first:first + size]
            pairs = [(f"V{first + k}", row["sent"]) for k, row in enumerate(batch)]
            line = mset_encode(pairs)
            checked += 1
            if len(line.encode("utf-8")) >= AGI_BUF_LEN:
                failures.append(f"{values.name}: the command for V{first} is {len(line)} bytes, over res_agi's buffer")
                continue
            words = parse_args_like_res_agi(line)
            got = dict(mset_pairs(words[2])) if len(words) == 3 and words[:2] == ["EXEC", "MSet"] else {}
            for k, row in enumerate(batch):
                if got.get(f"V{first + k}") != row["stored"]:
                    failures.append(f"{values.name}: {row['sent']!r} sent as {line!r} came out as "
                                    f"{got.get(f'V{first + k}')!r}, Asterisk stored {row['stored']!r}")
    if len(table) < 300:
        failures.append(f"{values.name}: only {len(table)} values")

    for data, expected in (
        ("A=x(,B=y", [("A", "x(,B=y")]),               # an open paren runs to the end
        ('A="(",B=1', [("A", "(,B=1")]),                # counted even inside quotes
        ("A=[1,B=2],C=3", [("A", "[1,B=2]"), ("C", "3")]),
        ('A="a,b",B=2', [("A", "a,b"), ("B", "2")]),    # quotes group, and are removed
        ("A=x=y,NOEQUALS,B=", [("A", "x=y"), ("B", "")]),
        ("A=1,", [("A", "1")]),                         # a trailing comma: one empty piece, no '='
        ("A=\\,\\(,B=2", [("A", ",("), ("B", "2")]),
    ):
        checked += 1
        got = mset_pairs(data)
        if got != expected:
            failures.append(f"mset_pairs({data!r}) = {got!r}, expected {expected!r} (main/app.c)")
    channel = Channel("1.1", "PJSIP/1")
    checked += 1
    reply = channel.answer('EXEC MSet "__RECORDING_STATUS=STARTED,RECORDING_ERROR="')
    if reply != "200 result=0" or channel.variables.get("RECORDING_STATUS") != "STARTED" \
            or channel.variables.get("RECORDING_ERROR") != "":
        failures.append(f"EXEC MSet via Channel.answer: {reply!r}, {channel.variables!r}")
    return failures, checked


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=parse_target, help="HOST:PORT of the FastAGI server")
    p.add_argument("-n", "--sessions", type=int, default=1000, help="sessions to run (default 1000)")
    p.add_argument("-c", "--concurrency", type=int, default=10, help="sessions in flight at all times (default 10)")
    p.add_argument("--procs", type=int, default=1, help="processes to split the load over (default 1)")
    p.add_argument("--api-key", default="k1", help="apiKey put in the AGI URL (default k1)")
    p.add_argument("--script", default=None,
                   help="agi_network_script; {seq} and {uniqueid} are filled in (default: "
                        "recording/start?tag=bench-{seq}&apiKey=<--api-key>)")
    p.add_argument("--extension", default="100", help="extension of the fake channels (default 100)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each reply, Asterisk's own latency (default 0)")
    p.add_argument("--connect-timeout", type=float, default=2.0,
                   help="seconds to connect; Asterisk gives up after 2 s (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a whole session may take (default 60)")
    p.add_argument("--duration-cap", type=float, default=0.0,
                   help="stop starting sessions after this many seconds (0: no cap)")
    p.add_argument("--epoch", type=int, default=None, help="epoch part of agi_uniqueid (default: now)")
    p.add_argument("--seq-start", type=int, default=1, help="first sequence number of agi_uniqueid (default 1)")
    p.add_argument("--source-ips", type=int, default=0,
                   help="spread connections over 127.0.0.2..N+1 as source addresses (0: let the kernel pick)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--breakdown", action="store_true",
                   help="time each step of each session and report the median of each (see session_steps)")
    p.add_argument("--self-test", action="store_true",
                   help="check the MSet parser against the captures in --captures, then exit")
    p.add_argument("--captures", default=str(CAPTURES),
                   help=f"folder of the Asterisk captures (default {CAPTURES})")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        failures, checked = self_test(Path(args.captures))
        for failure in failures:
            print(f"loadgen self-test: {failure}", file=sys.stderr)
        print(f"loadgen self-test: {checked} checks, {len(failures)} failed", file=sys.stderr)
        return 1 if failures or not checked else 0
    if args.target is None:
        parser.error("--target is required")
    soft, hard = raise_nofile()
    if args.concurrency < 1 or args.sessions < 1 or args.procs < 1:
        print("loadgen: --sessions, --concurrency and --procs must be at least 1", file=sys.stderr)
        return 2
    if args.concurrency + 64 > soft:
        print(f"loadgen: warning: RLIMIT_NOFILE is {soft}, too low for {args.concurrency} connections",
              file=sys.stderr)
    args.host, args.port = args.target
    args.epoch = args.epoch if args.epoch is not None else int(time.time())
    if args.script is None:
        args.script = "recording/start?tag=bench-{seq}&apiKey=" + args.api_key
    args.source_ips = [f"127.0.0.{2 + i}" for i in range(args.source_ips)] if args.source_ips else []
    try:
        result = run(args)
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:16} {value:.3f}" if isinstance(value, float) else f"{key:16} {value}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
