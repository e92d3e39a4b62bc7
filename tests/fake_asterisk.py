"""A fake Asterisk 22 that plays the channel's side of FastAGI against a real server socket.

It behaves as the captures in ``../shared/asterisk`` show: the environment in Asterisk's
order with ``\\n`` line ends, one reply per command in the same forms (``200 result=1 (x)``,
``200 result=0``, ``510``, ``511``, ``520``), EXEC taking one data word split as res_agi's
``parse_args()`` does, MixMonitor's ``i(VAR)`` id, an unprompted ``HANGUP`` when the caller
hangs up followed by dead-channel mode, and ``HANGUP`` then close when the server half-closes.
It reads commands as res_agi.c's run_agi() does (see :class:`CommandReader`), so a server that
sends a command before the previous one's reply waits, as it would on a real Asterisk.
Everything runs on blocking sockets in the calling thread, so tests assert from the peer's side.

Given a ``filesystem`` (the Asterisk host's disk, as a folder), MixMonitor writes real WAV files
there: the 44-byte header at once, as the captures show, then audio while the call talks
(:meth:`FakeAsterisk.talk`), and the header's sizes when the file is closed (a stop, or
:meth:`FakeAsterisk.hang_up`).
"""

from __future__ import annotations

import itertools
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agi.protocol import split_command

# The commands this fake knows: those res_agi.c marks dead=1 keep working after a hangup, the
# media ones get 511 then; anything else is 510, dead or alive (as in the captures).
_DEAD_OK = {"GET VARIABLE", "GET FULL VARIABLE", "SET VARIABLE", "EXEC", "VERBOSE", "NOOP"}
_MEDIA = {"ANSWER", "STREAM FILE", "WAIT FOR DIGIT", "SAY DIGITS", "RECORD FILE", "GET DATA", "HANGUP"}
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_ids = itertools.count(0x7FCDBC008FC0, 0x340)
_unique = itertools.count(1)
_lock = threading.Lock()


# Signed linear 16-bit mono at 8 kHz, as a WAV file MixMonitor writes for a .wav name.
RATE, SAMPLE_BYTES = 8000, 2
WAV_HEADER_BYTES = 44


def new_unique_id() -> str:
    with _lock:
        return f"1795825765.{next(_unique)}"


def wav_header(data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header for ``data_bytes`` of audio."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, RATE, RATE * SAMPLE_BYTES,
        SAMPLE_BYTES, 8 * SAMPLE_BYTES, b"data", data_bytes,
    )


def audio(seconds: float, offset: int = 0) -> bytes:
    """``seconds`` of a deterministic test signal (different at each ``offset``)."""
    count = int(seconds * RATE) * SAMPLE_BYTES
    return bytes((offset + i * 37) & 0xFF for i in range(count))


@dataclass
class MixMonitor:
    id: str
    file: str
    options: str
    data: str
    # Where this fake wrote the file (under its filesystem), None when it wrote none.
    path: Path | None = None


@dataclass
class ChannelState:
    """What a channel keeps across the AGI sessions run on it: its variables and MixMonitors."""

    variables: dict[str, str] = field(default_factory=dict)
    mixmonitors: list[MixMonitor] = field(default_factory=list)
    stopped: list[MixMonitor] = field(default_factory=list)

    @property
    def running(self) -> list[MixMonitor]:
        return [m for m in self.mixmonitors if m not in self.stopped]


@dataclass
class Call:
    """What happened in one AGI session, as Asterisk saw it. ``variables`` are the channel's as
    this session left them (the channel keeps them for later sessions on the same unique id);
    ``mixmonitors`` and ``stopped`` are those this session started and stopped."""

    uniqueid: str
    channel: str
    variables: dict[str, str]
    commands: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    mixmonitors: list[MixMonitor] = field(default_factory=list)
    stopped: list[MixMonitor] = field(default_factory=list)
    hung_up: bool = False
    server_closed: bool = False
    ended_by: str = ""
    state: ChannelState = field(default_factory=ChannelState)
    # What this session itself set, whatever other sessions on the channel did meanwhile.
    assigned: dict[str, str] = field(default_factory=dict)
    # Commands that arrived before the reply to the one before (see CommandReader).
    stalled: int = 0

    @property
    def status(self) -> str | None:
        return self.assigned.get("RECORDING_STATUS")

    @property
    def error(self) -> str | None:
        return self.assigned.get("RECORDING_ERROR")


def environment(
    script: str,
    *,
    port: int = 4573,
    channel: str = "Local/100@acceptance-00000001;2",
    uniqueid: str = "1795825765.3",
    extension: str = "100",
    args: tuple[str, ...] = (),
    request_host: str = "127.0.0.1",
    threadid: str = "140521815484096",
) -> bytes:
    """The environment block exactly as Asterisk 22.10.1 sends it (see the ext100 capture)."""
    tech = channel.split("/", 1)[0]
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://{request_host}:{port}/{script}",
        f"agi_channel: {channel}",
        "agi_language: en",
        f"agi_type: {tech}",
        f"agi_uniqueid: {uniqueid}",
        "agi_version: 22.10.1",
        "agi_callerid: unknown",
        "agi_calleridname: unknown",
        "agi_callingpres: 67",
        "agi_callingani2: 0",
        "agi_callington: 0",
        "agi_callingtns: 0",
        "agi_dnid: unknown",
        "agi_rdnis: unknown",
        "agi_context: acceptance",
        f"agi_extension: {extension}",
        "agi_priority: 2",
        "agi_enhanced: 0.0",
        "agi_accountcode: ",
        f"agi_threadid: {threadid}",
    ]
    lines += [f"agi_arg_{n}: {value}" for n, value in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def separate_args(buf: str, delim: str, max_args: int) -> list[str]:
    """Asterisk's application-argument parser, ``__ast_app_separate_args(buf, delim,
    remove_chars=1, ...)`` in main/app.c, step for step: ``(``/``)`` and ``[``/``]`` are counted
    (even inside quotes) and the delimiter does not split inside them; ``"`` toggles a quoted
    mode and is removed; ``\\`` is removed and the character after it taken as it is. Once
    ``max_args - 1`` arguments are split, the rest is the last argument, unparsed. A delimiter
    at the very end makes one more, empty, argument."""
    args: list[str] = []
    scan = 0
    delimited_at = -1
    chars = list(buf)
    while scan < len(chars) and len(args) < max_args - 1:
        start = scan
        paren = bracket = 0
        quoted = False
        while scan < len(chars):
            char = chars[scan]
            if char == "(":
                paren += 1
            elif char == ")":
                paren = max(0, paren - 1)
            elif char == "[":
                bracket += 1
            elif char == "]":
                bracket = max(0, bracket - 1)
            elif char == '"' and delim != '"':
                quoted = not quoted
                del chars[scan]
                continue
            elif char == "\\":
                del chars[scan]
            elif char == delim and not paren and not quoted and not bracket:
                args.append("".join(chars[start:scan]))
                delimited_at = scan
                scan += 1
                break
            scan += 1
        else:
            args.append("".join(chars[start:scan]))
    if scan < len(chars) or (scan > 0 and scan - 1 == delimited_at):
        args.append("".join(chars[scan:]))
    return args


def mset_pairs(data: str) -> list[tuple[str, str]]:
    """What ``MSet(data)`` sets (pbx_builtin_setvar_multiple in main/pbx_variables.c): up to
    99 pairs split on ``,`` (``AST_APP_ARG(pair)[99]``: the 99th takes the rest whole), each
    split once at its first ``=`` (the name parsed again, the value taken as it is); a pair
    without ``=`` is ignored."""
    pairs = []
    for pair in separate_args(data, ",", 99):
        name_value = separate_args(pair, "=", 2)
        if len(name_value) == 2:
            pairs.append((name_value[0], name_value[1]))
    return pairs


class CommandReader:
    """Command lines as res_agi's run_agi() reads them.

    run_agi() waits until the socket is readable (poll), then takes ONE line with fgets() from
    a stdio FILE, which reads whatever has arrived into its own buffer (for FastAGI it goes on
    reading until the line is whole). A line that arrived in the same read as the one before
    stays in that buffer, where the poll cannot see it: it is only taken after more bytes, or
    the server's EOF, wake the poll again. At EOF every buffered line is still taken, one per
    turn of the loop, before run_agi() sees the end.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.eof = False
        # Lines that waited in the buffer for a later wake-up: a server that pipelines.
        self.stalled = 0

    def readline(self) -> bytes:
        """The next command line with its ``\\n``; b"" once the server has closed and nothing
        is left. Raises socket.timeout when the poll waits past the socket's timeout."""
        if not self.eof:
            if b"\n" in self.buffer:
                self.stalled += 1
            self._receive()
        while b"\n" not in self.buffer and not self.eof:
            self._receive()
        line, newline, rest = self.buffer.partition(b"\n")
        self.buffer = rest
        return line + newline

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if chunk:
            self.buffer += chunk
        else:
            self.eof = True


class FakeAsterisk:
    """Places calls that run ``AGI(agi://host:port/<script>)`` against the server."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, timeout: float = 10.0,
                 filesystem: Path | None = None):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.mixmonitor_loaded = True
        self.channels: dict[str, ChannelState] = {}
        # The Asterisk host's disk: MixMonitor's file /a/b.wav is written at filesystem/a/b.wav.
        self.filesystem = filesystem

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.settimeout(self.timeout)
        return sock

    def call(
        self,
        script: str,
        *,
        args: tuple[str, ...] = (),
        channel: str = "PJSIP/410-0000001a",
        uniqueid: str | None = None,
        variables: dict[str, str] | None = None,
        hangup_after: int | None = None,
        drop_after: int | None = None,
        mixmonitor_result: int | None = None,
        reply_delay: float = 0.0,
        delay_only: str = "",
        before_reply=None,
    ) -> Call:
        """Runs one AGI session to its end and returns what Asterisk saw.

        ``hangup_after=N``: the caller hangs up after the Nth reply (0: before the first
        command): Asterisk sends ``HANGUP`` unprompted and goes on in dead-channel mode.
        ``drop_after=N``: the connection is cut after N replies, as when Asterisk dies.
        ``mixmonitor_result``: what EXEC MixMonitor answers instead of a working MixMonitor.
        ``reply_delay``: seconds Asterisk takes before each reply (a loaded PBX); with
        ``delay_only``, only before the replies to commands starting with that text.
        ``before_reply(line)``: called with each command line before it is answered, while the
        server waits for the reply (to look at what the server did meanwhile).
        """
        uniqueid = uniqueid or new_unique_id()
        with _lock:
            state = self.channels.setdefault(uniqueid, ChannelState())
        state.variables.update({"UNIQUEID": uniqueid, "CHANNEL": channel, **(variables or {})})
        call = Call(uniqueid, channel, state.variables, state=state)
        extension = channel.split("/", 1)[-1].split("-", 1)[0].split("@", 1)[0]
        with self.connect() as sock:
            sock.sendall(environment(
                script, port=self.port, channel=channel, uniqueid=uniqueid, extension=extension, args=args,
            ))
            if hangup_after == 0:
                self._hangup(sock, call)
            reader = CommandReader(sock)
            while True:
                try:
                    raw = reader.readline()
                except (ConnectionError, socket.timeout) as exc:
                    call.ended_by = f"error: {exc}"
                    break
                if not raw:
                    call.server_closed = True
                    call.ended_by = "server closed"
                    # NOTE: Asterisk answers the server's half-close with HANGUP, then closes.
                    try:
                        sock.sendall(b"HANGUP\n")
                    except OSError:
                        pass
                    break
                line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
                call.commands.append(line)
                if before_reply is not None:
                    before_reply(line)
                reply = self.answer(call, line, mixmonitor_result)
                if reply_delay and line.startswith(delay_only):
                    time.sleep(reply_delay)
                call.replies.append(reply)
                try:
                    sock.sendall(reply.encode("utf-8", "surrogateescape") + b"\n")
                except OSError as exc:
                    call.ended_by = f"error: {exc}"
                    break
                if drop_after is not None and len(call.replies) >= drop_after:
                    call.ended_by = "dropped"
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    break
                if hangup_after is not None and len(call.replies) == hangup_after and not call.hung_up:
                    self._hangup(sock, call)
            call.stalled = reader.stalled
        # What the channel held when this session ended, kept apart from later sessions.
        call.variables = dict(state.variables)
        return call

    @staticmethod
    def _hangup(sock: socket.socket, call: Call) -> None:
        call.hung_up = True
        sock.sendall(b"HANGUP\n")

    def answer(self, call: Call, line: str, mixmonitor_result: int | None = None) -> str:
        """Asterisk's reply to one command line."""
        words = split_command(line)
        name = next((n for n in sorted(_DEAD_OK | _MEDIA, key=len, reverse=True)
                     if [w.upper() for w in words[: n.count(" ") + 1]] == n.split()), None)
        if name is None:
            return "510 Invalid or unknown command"
        if call.hung_up and name in _MEDIA:
            return "511 Command Not Permitted on a dead channel or intercept routine"
        if name == "GET VARIABLE":
            if len(words) != 3:
                return "520 Invalid command syntax.  Proper usage not available."
            value = call.variables.get(words[2])
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if name == "GET FULL VARIABLE":
            value = _VAR.sub(lambda m: call.variables.get(m.group(1), ""), words[3] if len(words) > 3 else "")
            return f"200 result=1 ({value})"
        if name == "SET VARIABLE":
            if len(words) != 4:
                return "520 Invalid command syntax.  Proper usage not available."
            call.variables[words[2]] = words[3]
            call.assigned[words[2]] = words[3]
            return "200 result=1"
        if name == "EXEC":
            if len(words) < 2:
                return "520 Invalid command syntax.  Proper usage not available."
            # NOTE: only one data word; anything after it is dropped, as res_agi does.
            return self._exec(call, words[1], words[2] if len(words) > 2 else "", mixmonitor_result)
        if name == "VERBOSE":
            return "200 result=1"
        if name == "STREAM FILE":
            return "200 result=0 endpos=0"
        return "200 result=0"

    def _exec(self, call: Call, application: str, data: str, mixmonitor_result: int | None) -> str:
        app = application.lower()
        if app == "mixmonitor":
            if not self.mixmonitor_loaded:
                return "200 result=-2"
            if mixmonitor_result is not None:
                return f"200 result={mixmonitor_result}"
            # NOTE: AST_STANDARD_APP_ARGS(filename, options, post_process), as app_mixmonitor.c.
            file, options = (separate_args(data, ",", 3) + ["", ""])[:2]
            with _lock:
                monitor = MixMonitor(hex(next(_ids)), file, options, data)
            call.mixmonitors.append(monitor)
            call.state.mixmonitors.append(monitor)
            for variable in re.findall(r"i\(([^)]*)\)", options):
                call.variables[variable] = monitor.id
            self._open(monitor)
            return "200 result=0"
        if app == "stopmixmonitor":
            running = call.state.running
            # NOTE: without an id StopMixMonitor stops the most recent MixMonitor only.
            target = [m for m in running if m.id == data] if data else running[-1:]
            call.stopped.extend(target)
            call.state.stopped.extend(target)
            for monitor in target:
                self._close(monitor)
            return "200 result=0"
        if app == "mset":
            # NOTE: Asterisk's MSet answers 0 whatever it set (a pair without "=" is only
            # warned about in its log).
            for name, value in mset_pairs(data):
                call.variables[name] = value
                call.assigned[name] = value
            return "200 result=0"
        if app == "wait":
            return "200 result=0"
        return "200 result=-2"

    # -- the files MixMonitor writes --------------------------------------------------------

    def _open(self, monitor: MixMonitor) -> None:
        if self.filesystem is None:
            return
        path = self.filesystem / monitor.file.lstrip("/")
        append = "a" in re.sub(r"\([^)]*\)", "", monitor.options)
        try:
            # NOTE: MixMonitor makes the folders the file needs.
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (append and path.exists()):
                path.write_bytes(wav_header(0))
        except OSError:
            return  # NOTE: MixMonitor answers 200 result=0 whether or not it can write the file
        monitor.path = path

    def _close(self, monitor: MixMonitor) -> None:
        """What closing the file does: the header's sizes are written (format_wav's close)."""
        if monitor.path is None or not monitor.path.exists():
            return
        with open(monitor.path, "r+b") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            handle.write(wav_header(size - WAV_HEADER_BYTES))

    def talk(self, uniqueid: str, seconds: float) -> int:
        """The call carries ``seconds`` of audio: each running MixMonitor on the channel appends
        it to its file. Returns the bytes written to each."""
        with _lock:
            running = list(self.channels[uniqueid].running)
        written = 0
        for monitor in running:
            if monitor.path is not None:
                with open(monitor.path, "ab") as handle:
                    chunk = audio(seconds, offset=handle.tell())
                    handle.write(chunk)
                    written = len(chunk)
        return written

    def hang_up(self, uniqueid: str) -> list[MixMonitor]:
        """The channel hangs up: its MixMonitors end and close their files (Asterisk says
        nothing of it over AMI: ami-events-mixmonitor-ext393)."""
        with _lock:
            state = self.channels[uniqueid]
            ended = list(state.running)
            state.stopped.extend(ended)
        for monitor in ended:
            self._close(monitor)
        return ended
