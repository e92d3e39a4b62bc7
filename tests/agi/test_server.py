"""The real agi.Server on a loopback port, with raw sockets playing Asterisk.

The server runs its own event loop (``asyncio.run``) in a thread, and every peer is a plain
blocking socket in the test's thread with a timeout: a server whose loop froze would then fail
the test instead of hanging it. Everything is asserted from the peer's side of the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agi import AGIError, AGITimeout, Limits, LineTooLong, Overloaded, ProtocolError, Router, Server, UnknownRoute
from agi.protocol import is_clean_text, split_command
from agi.server import read_environment
from agi.wire import LineReader, Wire

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
WAIT = 5.0  # the longest any peer waits for the server
FAST = dict(environment_timeout=1.0, reply_timeout=2.0, session_timeout=5.0, close_timeout=1.0)


def captured_environment(name: str) -> bytes:
    """The environment block of a raw capture, byte for byte, with its closing empty line."""
    head, sep, _ = (CAPTURES / name).read_bytes().partition(b"\n\n")
    assert sep, f"{name} has no empty line"
    return head + sep


def environment(script: str | bytes = "recording/start", *extra: bytes) -> bytes:
    """An environment block in Asterisk's order with ``extra`` lines before its empty line."""
    script = script if isinstance(script, bytes) else script.encode()
    return b"".join(
        [
            b"agi_network: yes\n",
            b"agi_network_script: " + script + b"\n",
            b"agi_request: agi://127.0.0.1:4573/" + script + b"\n",
            b"agi_channel: Local/100@acceptance-00000001;2\n",
            b"agi_uniqueid: 1795825765.3\n",
            b"agi_accountcode: \n",
            *(line + b"\n" for line in extra),
            b"\n",
        ]
    )


# -- the server and its peers --------------------------------------------------------------


async def report_seen(session) -> None:
    """The route under test: tells the channel what it received, in one variable."""
    env = session.env
    seen = "|".join([env.script, env.query, env.uniqueid, env.channel, ",".join(env.args)])
    await session.set_variable("SEEN", seen)
    await session.set_variable("CLEAN", "yes" if all(map(is_clean_text, env.variables.values())) else "no")


class Recorder:
    """A Router whose on_error tells the channel, as an application must, and keeps the error."""

    def __init__(self, **routes):
        self.errors: list[AGIError] = []
        self.router = Router(on_error=self.on_error)
        self.router.add("recording/start", report_seen)
        for script, handler in routes.items():
            self.router.add(script.replace("__", "/"), handler)

    async def on_error(self, session, error: AGIError) -> None:
        self.errors.append(error)
        await session.set_variable("AGI_ERROR", f"{type(error).__name__} {session.env.uniqueid}")


class RunningServer:
    def __init__(self, router: Router, **limits):
        self.router = router
        self.limits = Limits(**{**FAST, **limits})
        self.server: Server | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def __enter__(self) -> "RunningServer":
        self._thread = threading.Thread(target=self._run, name="agi-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT), "server did not start"
        if self._failure:
            raise self._failure
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._done.set)
            self._thread.join(WAIT + 3)
        assert not self._thread.is_alive(), "the server's event loop did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self.server = Server(self.router, host="127.0.0.1", port=0, limits=self.limits)
        await self.server.start()
        self.port = self.server.port
        self._ready.set()
        await self._done.wait()
        await self.server.stop(grace=1.0)

    def stop(self, grace: float):
        """Starts Server.stop(grace) on the server's loop; returns its concurrent Future."""
        return asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)

    def wait_idle(self) -> None:
        deadline = time.monotonic() + WAIT
        while self.server.active_sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.active_sessions == 0


class Peer:
    """Asterisk's end of one connection."""

    def __init__(self, port: int, timeout: float = WAIT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes | None:
        """The next line from the server, or None when it closed its side."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                assert not self.buffer, f"server closed inside a line: {self.buffer!r}"
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def command(self) -> list[str]:
        line = self.readline()
        assert line is not None, "server closed instead of sending a command"
        return split_command(line.decode())

    def answer(self, reply: bytes = b"200 result=1") -> list[str]:
        command = self.command()
        self.send(reply + b"\n")
        return command

    def expect_eof(self) -> None:
        line = self.readline()
        assert line is None, f"expected the server to close, got {line!r}"

    def read_until_closed(self) -> bytes:
        """What the server sent until it ended the connection, by FIN or (when it left data
        unread) by RST."""
        received = self.buffer
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return received

    def hang_up(self) -> None:
        """What Asterisk does after the server's half-close: HANGUP, then close."""
        with contextlib.suppress(OSError):
            self.send(b"HANGUP\n")
        self.sock.close()


def good_session(port: int, env: bytes | None = None) -> list[list[str]]:
    """A whole healthy session against ``report_seen``; returns the commands it got."""
    with Peer(port) as peer:
        peer.send(env or environment())
        commands = [peer.answer(), peer.answer()]
        peer.expect_eof()
        peer.hang_up()
    return commands


# -- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capture, seen",
    [
        (
            "fastagi-start-ext100.raw.txt",
            "recording/start|tag=22&agentLoginName=Fred&apiKey=k1|1795825765.3|Local/100@acceptance-00000001;2|",
        ),
        (
            "fastagi-start-ext102.raw.txt",
            "recording/start|tag=22&agentLoginName=Fred&apiKey=k1|1795825829.11|Local/102@acceptance-00000005;2"
            "|first arg,second,quoted,with comma,102",
        ),
    ],
)
def test_captured_environment_reaches_the_handler(capture, seen):
    recorder = Recorder()
    with RunningServer(recorder.router) as running:
        commands = good_session(running.port, captured_environment(capture))
    assert commands == [["SET", "VARIABLE", "SEEN", seen], ["SET", "VARIABLE", "CLEAN", "yes"]]
    assert recorder.errors == []


def test_environment_sent_byte_by_byte_is_read_whole():
    recorder = Recorder()
    with RunningServer(recorder.router) as running, Peer(running.port) as peer:
        for byte in captured_environment("fastagi-start-ext100.raw.txt"):
            peer.send(bytes([byte]))
        assert peer.answer()[3].startswith("recording/start|")
        assert peer.answer() == ["SET", "VARIABLE", "CLEAN", "yes"]
        peer.expect_eof()


def test_unknown_route_reaches_on_error_with_a_usable_session():
    recorder = Recorder()
    with RunningServer(recorder.router) as running, Peer(running.port) as peer:
        peer.send(environment("recording/nope?tag=1"))
        assert peer.answer() == ["SET", "VARIABLE", "AGI_ERROR", "UnknownRoute 1795825765.3"]
        peer.expect_eof()
        peer.hang_up()
    (error,) = recorder.errors
    assert isinstance(error, UnknownRoute)
    assert error.script == "recording/nope"
    assert error.known == ("recording/start",)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"agi_network: yes\nagi_uniqueid: 1795825765.3\n\n", id="no-network-script"),
        pytest.param(environment("recording/start", b"Content-Length: 12"), id="not-an-agi-line"),
        pytest.param(environment("recording/start", b"agi_uniqueid: 1795825765.4"), id="repeated-key"),
        pytest.param(environment("recording/start", b"agi_arg_1: a", b"agi_arg_3: c"), id="argument-gap"),
    ],
)
def test_malformed_but_complete_environment_reaches_on_error(block):
    recorder = Recorder()
    with RunningServer(recorder.router) as running, Peer(running.port) as peer:
        peer.send(block)
        # The well-formed lines are still read, so the error can name the call.
        assert peer.answer() == ["SET", "VARIABLE", "AGI_ERROR", "ProtocolError 1795825765.3"]
        peer.expect_eof()
        peer.hang_up()
    (error,) = recorder.errors
    assert isinstance(error, ProtocolError)


# -- peers that misbehave ------------------------------------------------------------------
# Each runs in its own thread while a healthy session runs in the test's thread; it sets
# ``started`` once its connection is in the state under test, and returns what it saw.


def closes_before_the_empty_line(port, started):
    with Peer(port) as peer:
        peer.send(environment()[:-1])
        peer.sock.shutdown(socket.SHUT_WR)
        started.set()
        peer.expect_eof()
    return "eof"


def sends_nothing(port, started):
    with Peer(port) as peer:
        started.set()
        peer.expect_eof()
    return "eof"


def stalls_inside_the_environment(port, started):
    with Peer(port) as peer:
        peer.send(environment()[:40])
        started.set()
        peer.expect_eof()
    return "eof"


def sends_an_endless_environment(port, started):
    with Peer(port) as peer:
        started.set()
        lines = b"".join(b"agi_var_%d: %s\n" % (n, b"y" * 90) for n in range(600))
        try:
            peer.send(environment()[:-1])
            for _ in range(160):
                peer.send(lines)
        except (ConnectionResetError, BrokenPipeError):
            return "closed while sending"
        return "eof" if peer.read_until_closed() == b"" else "answered"


def sends_10_mb_without_a_newline(port, started):
    with Peer(port) as peer:
        started.set()
        chunk = b"x" * 65536
        try:
            for _ in range(160):
                peer.send(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return "closed while sending"
        return "eof" if peer.read_until_closed() == b"" else "answered"


def over_long_line_inside_the_environment(port, started):
    with Peer(port) as peer:
        peer.send(environment("recording/start", b"agi_calleridname: " + b"x" * 20_000))
        started.set()
        command = peer.answer()
        peer.expect_eof()
        peer.hang_up()
    return " ".join(command)


def non_utf8_values(port, started):
    with Peer(port) as peer:
        peer.send(environment("recording/start", b"agi_calleridname: caf\xe9 \xff\xfe"))
        started.set()
        peer.answer()
        command = peer.answer()
        peer.expect_eof()
        peer.hang_up()
    return " ".join(command)


def non_utf8_script(port, started):
    with Peer(port) as peer:
        peer.send(environment(b"recording/st\xe4rt"))
        started.set()
        command = peer.answer()
        peer.expect_eof()
        peer.hang_up()
    return " ".join(command)


def hangs_up_during_the_session(port, started):
    with Peer(port) as peer:
        peer.send(environment())
        peer.command()
        started.set()
    return "gone"


@pytest.mark.parametrize(
    "misbehave, outcome, slow",
    [
        (closes_before_the_empty_line, {"eof"}, False),
        (sends_nothing, {"eof"}, True),
        (stalls_inside_the_environment, {"eof"}, True),
        (sends_10_mb_without_a_newline, {"closed while sending", "eof"}, False),
        (sends_an_endless_environment, {"closed while sending", "eof"}, False),
        (over_long_line_inside_the_environment, {"SET VARIABLE AGI_ERROR LineTooLong 1795825765.3"}, False),
        (non_utf8_values, {"SET VARIABLE CLEAN no"}, False),
        (non_utf8_script, {"SET VARIABLE AGI_ERROR UnknownRoute 1795825765.3"}, False),
        (hangs_up_during_the_session, {"gone"}, False),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_a_misbehaving_peer_does_not_block_another_session(misbehave, outcome, slow):
    recorder = Recorder()
    with RunningServer(recorder.router) as running, ThreadPoolExecutor(1) as pool:
        started = threading.Event()
        bad = pool.submit(misbehave, running.port, started)
        assert started.wait(WAIT)
        assert good_session(running.port)[0][2] == "SEEN"
        if slow:
            # The healthy session ended while the other one was still waiting to be timed out.
            assert not bad.done()
        assert bad.result(timeout=WAIT + 2) in outcome
        running.wait_idle()
        # And the server goes on serving.
        assert good_session(running.port)[1] == ["SET", "VARIABLE", "CLEAN", "yes"]


def test_over_long_environment_line_is_reported_as_line_too_long():
    recorder = Recorder()
    with RunningServer(recorder.router) as running:
        over_long_line_inside_the_environment(running.port, threading.Event())
    (error,) = recorder.errors
    assert isinstance(error, LineTooLong) and error.framed


async def read_block(block: bytes, limits: Limits):
    wire = Wire()
    wire.data_received(block)
    wire.eof_received()
    async with asyncio.timeout(WAIT):
        return await read_environment(LineReader(wire, limits.max_line_bytes), limits)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            environment("recording/start", *(b"agi_var_%d: %s" % (n, b"y" * 90) for n in range(1000))),
            id="many-lines",
        ),
        pytest.param(environment("recording/start", *[b"agi_big: " + b"y" * 10_000] * 20), id="many-over-long-lines"),
    ],
)
def test_environment_over_the_size_limit_is_refused(block):
    # Unframed: too big to be an environment, so the connection is dropped, not answered.
    with pytest.raises(ProtocolError, match="larger than the limit") as caught:
        asyncio.run(read_block(block, Limits()))
    assert not getattr(caught.value, "framed", False)


def test_environment_within_the_size_limit_is_read():
    block = environment("recording/start", *(b"agi_var_%d: %s" % (n, b"y" * 90) for n in range(500)))
    assert len(block) < Limits().max_environment_bytes
    assert asyncio.run(read_block(block, Limits())).get("var_499") == "y" * 90


def test_peer_sending_nothing_is_closed_after_the_environment_timeout():
    with RunningServer(Recorder().router, environment_timeout=0.5) as running, Peer(running.port) as peer:
        started = time.monotonic()
        peer.expect_eof()
        assert 0.4 <= time.monotonic() - started < 3.0


# -- handlers that fail or hang ------------------------------------------------------------


async def raises_a_bug(session):
    await session.set_variable("STEP", "1")
    raise RuntimeError("handler bug")


async def sends_an_unknown_command(session):
    await session.command("FOO BAR")


async def raises_its_own_timeout(session):
    await session.set_variable("STEP", "1")
    raise TimeoutError("the database did not answer")


@pytest.mark.parametrize(
    "handler, reply, level, exc_type",
    [
        (raises_a_bug, b"200 result=1", logging.ERROR, RuntimeError),
        (sends_an_unknown_command, b"510 Invalid or unknown command", logging.WARNING, None),
        # A TimeoutError of the handler's own is a failure like any other, not session_timeout.
        (raises_its_own_timeout, b"200 result=1", logging.ERROR, TimeoutError),
    ],
)
def test_handler_that_raises_is_logged_and_the_connection_closed(caplog, handler, reply, level, exc_type):
    caplog.set_level(logging.INFO, logger="agi.server")
    recorder = Recorder(failing=handler)
    with RunningServer(recorder.router) as running:
        with Peer(running.port) as peer:
            peer.send(environment("failing"))
            peer.answer(reply)
            peer.expect_eof()
            peer.hang_up()
        failures = [r for r in caplog.records if r.name == "agi.server" and r.levelno == level]
        assert len(failures) == 1
        if exc_type:
            assert failures[0].exc_info[0] is exc_type
        else:
            assert "rejected with 510" in failures[0].getMessage()
        running.wait_idle()
        assert good_session(running.port)[0][2] == "SEEN"


def test_session_timeout_ends_a_handler_that_hangs(caplog):
    async def hangs(session):
        await session.set_variable("STEP", "1")
        await asyncio.sleep(60)

    recorder = Recorder(hangs=hangs)
    with RunningServer(recorder.router, session_timeout=0.5) as running, Peer(running.port) as peer:
        started = time.monotonic()
        peer.send(environment("hangs"))
        assert peer.answer() == ["SET", "VARIABLE", "STEP", "1"]
        # Past the deadline the application is still given the word, to tell the dialplan.
        assert peer.answer() == ["SET", "VARIABLE", "AGI_ERROR", "AGITimeout 1795825765.3"]
        peer.expect_eof()
        assert 0.4 <= time.monotonic() - started < 3.0
        peer.hang_up()
    assert [type(e) for e in recorder.errors] == [AGITimeout]
    assert any("ran past its limit" in r.getMessage() for r in caplog.records if r.name == "agi.server")


def test_a_session_cut_short_mid_command_still_reports_in_step():
    async def asks(session):
        # A command out; the deadline strikes before its reply is read.
        await session.send("GET VARIABLE A", "GET VARIABLE B")

    recorder = Recorder(slow=asks)
    with RunningServer(recorder.router, session_timeout=0.5) as running, Peer(running.port) as peer:
        peer.send(environment("slow"))
        assert peer.command() == ["GET", "VARIABLE", "A"]
        time.sleep(0.7)
        peer.send(b"200 result=1 (a)\n")
        # The owed replies are read and dropped, so the report's own reply is its own.
        assert peer.answer() == ["SET", "VARIABLE", "AGI_ERROR", "AGITimeout 1795825765.3"]
        peer.expect_eof()
        peer.hang_up()


def test_max_sessions_tells_the_extra_connection_it_is_busy():
    recorder = Recorder()
    with RunningServer(recorder.router, max_sessions=1) as running:
        with Peer(running.port) as first:
            first.send(environment())
            assert first.command()[2] == "SEEN"
            with Peer(running.port) as extra:
                extra.send(environment())
                assert extra.answer() == ["SET", "VARIABLE", "AGI_ERROR", "Overloaded 1795825765.3"]
                extra.expect_eof()
                extra.hang_up()
            first.send(b"200 result=1\n")
            first.answer()
            first.expect_eof()
            first.hang_up()
        assert running.server.sessions_refused == 1
        assert [type(e) for e in recorder.errors] == [Overloaded]


def test_past_the_busy_allowance_connections_are_closed_at_once():
    recorder = Recorder()
    with RunningServer(recorder.router, max_sessions=1, busy_sessions=0) as running:
        with Peer(running.port) as first:
            first.send(environment())
            # The first session is now waiting on its reply, holding the only slot.
            assert first.command()[2] == "SEEN"
            with Peer(running.port) as extra:
                started = time.monotonic()
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    extra.send(environment())
                assert extra.read_until_closed() == b""
                # Refused at once, not dropped later by the environment timeout.
                assert time.monotonic() - started < FAST["environment_timeout"] / 2
            first.send(b"200 result=1\n")
            first.answer()
            first.expect_eof()
            first.hang_up()
        assert running.server.sessions_refused == 1
        running.wait_idle()
        assert good_session(running.port)[0][2] == "SEEN"


# -- stopping ------------------------------------------------------------------------------


def test_stop_waits_for_a_session_in_flight():
    async def slow(session):
        await session.set_variable("STEP", "1")
        await asyncio.sleep(0.3)
        await session.set_variable("STEP", "2")

    recorder = Recorder(slow=slow)
    with RunningServer(recorder.router) as running, Peer(running.port) as peer:
        peer.send(environment("slow"))
        assert peer.answer() == ["SET", "VARIABLE", "STEP", "1"]
        stopping = running.stop(grace=WAIT)
        assert peer.command() == ["SET", "VARIABLE", "STEP", "2"]
        assert not stopping.done()
        peer.send(b"200 result=1\n")
        peer.expect_eof()
        peer.hang_up()
        assert stopping.result(timeout=WAIT) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", running.port), timeout=WAIT).close()


def test_stop_cancels_a_session_that_outlives_the_grace():
    async def hangs(session):
        await session.set_variable("STEP", "1")
        await asyncio.sleep(60)

    recorder = Recorder(hangs=hangs)
    with RunningServer(recorder.router) as running, Peer(running.port) as peer:
        peer.send(environment("hangs"))
        peer.answer()
        started = time.monotonic()
        assert running.stop(grace=0.3).result(timeout=WAIT) == 1
        assert time.monotonic() - started < 3.0
        peer.expect_eof()
