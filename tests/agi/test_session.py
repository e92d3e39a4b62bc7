"""A Session over a real socket pair, with the test playing Asterisk on the other end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from agi import AGITimeout, CommandRejected, Environment, HangupError, LineTooLong, ProtocolError, Session
from agi.protocol import MAX_COMMAND_BYTES, split_command
from agi.wire import LineReader, Wire

ENV = Environment({"network_script": "recording/start", "uniqueid": "1795825765.3"})
WAIT = 3.0  # seconds the Asterisk side waits for anything; no test should come near it

USAGE = [
    "520-Invalid command syntax.  Proper usage follows:",
    " Usage: GET VARIABLE <variablename>",
    "\tReturns 0 if <variablename> is not set.",
    "520 End of proper usage.",
]


class Asterisk:
    """The other end of the pair: reads command lines and writes replies as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def command(self) -> str:
        line = await asyncio.wait_for(self.reader.readline(), WAIT)
        assert line.endswith(b"\n"), f"expected a command line, got {line!r}"
        return line[:-1].decode()

    async def send(self, *lines: str | bytes, end: bytes = b"\n") -> None:
        for line in lines:
            self.writer.write((line if isinstance(line, bytes) else line.encode()) + end)
        await self.writer.drain()

    async def answer(self, *lines: str | bytes) -> str:
        command = await self.command()
        await self.send(*lines)
        return command

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), WAIT)

    async def server_is_gone(self) -> bool:
        """True when the session's socket is fully closed: a write then fails at once."""
        try:
            await self.send("HANGUP")
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False


@contextlib.asynccontextmanager
async def connected(*, max_line: int = 8192, max_skip: int = 1 << 20, reply_timeout: float = 2.0):
    ours, theirs = socket.socketpair()
    _, wire = await asyncio.get_running_loop().connect_accepted_socket(Wire, sock=ours)
    their_reader, their_writer = await asyncio.open_connection(sock=theirs)
    lines = LineReader(wire, max_line, max_skip)
    try:
        yield Session(lines, ENV, reply_timeout=reply_timeout), Asterisk(their_reader, their_writer)
    finally:
        for w in (wire, their_writer):
            w.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(w.wait_closed(), WAIT)


def run(scenario):
    async def bounded():
        async with asyncio.timeout(10):
            return await scenario()

    return asyncio.run(bounded())


# -- commands and replies ------------------------------------------------------------------


def test_commands_go_one_at_a_time_each_after_the_reply_before():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                # res_agi would leave a second line that came with the first in its stdio
                # buffer, unseen: nothing more may arrive before each reply is written.
                commands = []
                for reply in ("200 result=1 (1795825765.3)", "200 result=1", "510 Invalid or unknown command"):
                    commands.append(await asterisk.command())
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(asterisk.reader.readline(), 0.2)
                    await asterisk.send(reply)
                return commands

            replies, commands = await asyncio.gather(
                session.send("GET VARIABLE UNIQUEID", 'SET VARIABLE RECORDING_STATUS "STARTED"', "FOO BAR"),
                asterisk_side(),
            )
            assert commands == ["GET VARIABLE UNIQUEID", 'SET VARIABLE RECORDING_STATUS "STARTED"', "FOO BAR"]
            assert [(r.code, r.result, r.data) for r in replies] == [
                (200, "1", "1795825765.3"),
                (200, "1", None),
                (510, None, None),
            ]

    run(scenario)


def test_unprompted_hangup_sets_hung_up_and_the_reply_still_arrives():
    async def scenario():
        async with connected() as (session, asterisk):
            assert not session.hung_up
            reply, _ = await asyncio.gather(
                session.command("GET VARIABLE UNIQUEID"),
                asterisk.answer("HANGUP", "200 result=1 (1795825765.3)"),
            )
            assert reply.data == "1795825765.3"
            assert session.hung_up
            # Dead-channel mode: the session goes on.
            reply, _ = await asyncio.gather(session.command("VERBOSE \"x\" 1"), asterisk.answer("200 result=1"))
            assert reply.value == 1

    run(scenario)


def test_hangup_during_exec_as_captured():
    # fastagi-hangup-during-exec-ext105: the EXEC answers -1, HANGUP follows before the next reply.
    async def scenario():
        async with connected() as (session, asterisk):
            result, _ = await asyncio.gather(session.exec("Wait", "5"), asterisk.answer("200 result=-1", "HANGUP"))
            assert result == -1
            with pytest.raises(CommandRejected) as caught:
                await asyncio.gather(
                    session.command('STREAM FILE beep ""'),
                    asterisk.answer("511 Command Not Permitted on a dead channel or intercept routine"),
                )
            assert caught.value.code == 511
            assert session.hung_up

    run(scenario)


def test_trying_line_is_skipped_until_the_final_reply():
    async def scenario():
        async with connected() as (session, asterisk):
            reply, _ = await asyncio.gather(
                session.command("EXEC Dial PJSIP/200"),
                asterisk.answer("100 result=0 Trying...", "200 result=0"),
            )
            assert (reply.code, reply.value) == (200, 0)

    run(scenario)


def test_crlf_replies_read_like_lf():
    async def scenario():
        async with connected() as (session, asterisk):
            replies, _ = await asyncio.gather(
                session.send("GET VARIABLE A", "GET VARIABLE B"),
                asterisk.send(b"HANGUP", b"200 result=1 (a)", b"200 result=0", end=b"\r\n"),
            )
            assert [r.data for r in replies] == ["a", None]
            assert session.hung_up

    run(scenario)


def test_multi_line_usage_reply_is_one_reply():
    async def scenario():
        async with connected() as (session, asterisk):
            (reply,), _ = await asyncio.gather(session.send("GET VARIABLE"), asterisk.answer(*USAGE))
            assert reply.code == 520
            assert reply.text == "End of proper usage."
            assert reply.usage == tuple(line[4:] if line.startswith("520-") else line for line in USAGE[:-1])
            # The whole usage block was consumed: the next reply belongs to the next command.
            value, _ = await asyncio.gather(session.get_variable("X"), asterisk.answer("200 result=1 (x)"))
            assert value == "x"

    run(scenario)


@pytest.mark.parametrize(
    "lines, code",
    [
        (["510 Invalid or unknown command"], 510),
        (["511 Command Not Permitted on a dead channel or intercept routine"], 511),
        (["520 Invalid command syntax.  Proper usage not available."], 520),
        (USAGE, 520),
        (["503 result=-2 Memory allocation failure"], 503),
    ],
)
def test_command_raises_command_rejected_with_the_code(lines, code):
    async def scenario():
        async with connected() as (session, asterisk):
            with pytest.raises(CommandRejected) as caught:
                await asyncio.gather(session.command("FOO BAR"), asterisk.answer(*lines))
            assert caught.value.code == code
            assert caught.value.reply.code == code
            assert caught.value.command == "FOO BAR"

    run(scenario)


def test_send_returns_rejections_instead_of_raising():
    async def scenario():
        async with connected() as (session, asterisk):
            (reply,), _ = await asyncio.gather(session.send("FOO BAR"), asterisk.answer("510 Invalid or unknown command"))
            assert reply.code == 510

    run(scenario)


def test_get_variable_is_none_when_unset():
    async def scenario():
        async with connected() as (session, asterisk):
            value, command = await asyncio.gather(session.get_variable("RECORDING_STATUS"), asterisk.answer("200 result=0"))
            assert command == "GET VARIABLE RECORDING_STATUS"
            assert value is None
            value, _ = await asyncio.gather(session.get_variable("RECORDING_STATUS"), asterisk.answer("200 result=1 (STARTED)"))
            assert value == "STARTED"
            # Set to the empty string is not the same as unset.
            value, _ = await asyncio.gather(session.get_variable("EMPTY"), asterisk.answer("200 result=1 ()"))
            assert value == ""

    run(scenario)


def test_verbs_quote_their_arguments_on_the_wire():
    async def scenario():
        async with connected() as (session, asterisk):
            _, command = await asyncio.gather(
                session.exec("MixMonitor", "/tmp/acc 1.wav,bi(MIXMON_ID)"), asterisk.answer("200 result=0")
            )
            assert split_command(command) == ["EXEC", "MixMonitor", "/tmp/acc 1.wav,bi(MIXMON_ID)"]
            _, command = await asyncio.gather(
                session.set_variable("RECORDING_ERROR", 'bad "key" \\ here'), asterisk.answer("200 result=1")
            )
            assert split_command(command) == ["SET", "VARIABLE", "RECORDING_ERROR", 'bad "key" \\ here']

    run(scenario)


@pytest.mark.parametrize("name, value", [("X", "a\nEXEC System reboot"), ("X\nEXEC System reboot", "v")])
def test_a_line_break_in_an_argument_is_never_sent(name, value):
    async def scenario():
        async with connected() as (session, asterisk):
            with pytest.raises(ValueError):
                await session.set_variable(name, value)

            async def asterisk_side():
                received = await asterisk.read_to_eof()
                asterisk.writer.close()
                return received

            _, received = await asyncio.gather(session.close(timeout=1.0), asterisk_side())
            assert received == b""

    run(scenario)


def test_set_variables_sets_them_all_in_one_mset():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                return [await asterisk.answer("200 result=0")]

            _, commands = await asyncio.gather(
                session.set_variables({"RECORDING_STATUS": "STARTED", "RECORDING_ERROR": "a, b (c"}), asterisk_side()
            )
            assert commands == ['EXEC MSet "RECORDING_STATUS=STARTED,RECORDING_ERROR=a\\\\, b \\\\(c"']

    run(scenario)


def test_set_variables_raises_when_mset_is_refused():
    async def scenario():
        async with connected() as (session, asterisk):
            with pytest.raises(CommandRejected):
                await asyncio.gather(session.set_variables({"A": "1"}), asterisk.answer("200 result=-2"))

    run(scenario)


def test_set_variables_cuts_the_named_value_to_fit_one_line():
    long = "(é" * 5000  # escaped and multi-byte: 4 bytes a character once quoted twice

    async def scenario():
        async with connected() as (session, asterisk):
            with pytest.raises(ValueError):
                await session.set_variables({"A": "ok", "B": long})
            _, command = await asyncio.gather(
                session.set_variables({"A": "ok", "B": long, "C": "after"}, shorten="B"), asterisk.answer("200 result=0")
            )
            return command

    command = run(scenario)
    assert len(command.encode()) + 1 <= MAX_COMMAND_BYTES
    assert len(command.encode()) + 1 > MAX_COMMAND_BYTES - 8  # cut no more than needed
    (data,) = split_command(command)[2:]
    assert data.startswith("A=ok,B=\\(é\\(é") and data.endswith("...,C=after")


# -- failures ------------------------------------------------------------------------------


def test_eof_raises_hangup_error():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                await asterisk.command()
                asterisk.writer.close()

            with pytest.raises(HangupError):
                await asyncio.gather(session.command("GET VARIABLE UNIQUEID"), asterisk_side())

    run(scenario)


def test_eof_inside_a_reply_raises_hangup_error():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                await asterisk.command()
                asterisk.writer.write(b"200 resu")
                asterisk.writer.close()

            with pytest.raises(HangupError):
                await asyncio.gather(session.command("GET VARIABLE UNIQUEID"), asterisk_side())

    run(scenario)


def test_reply_that_never_comes_times_out_and_the_session_is_out_of_step():
    async def scenario():
        async with connected(reply_timeout=0.3) as (session, asterisk):
            started = time.monotonic()
            with pytest.raises(AGITimeout):
                await asyncio.gather(session.command("EXEC Wait 60"), asterisk.command())
            assert 0.25 <= time.monotonic() - started < 1.5
            # A late reply would be taken for the next command's, so the session refuses to go on.
            await asterisk.send("200 result=0")
            with pytest.raises(ProtocolError, match="out of step"):
                await session.command("GET VARIABLE UNIQUEID")

    run(scenario)


@pytest.mark.parametrize("in_pieces", [False, True], ids=["one-write", "in-pieces"])
def test_over_long_reply_line_is_skipped_and_the_next_reply_parses(in_pieces):
    long_reply = b"200 result=1 (" + b"x" * 5000 + b")"

    async def scenario():
        async with connected(max_line=64) as (session, asterisk):
            async def asterisk_side():
                await asterisk.command()
                if in_pieces:
                    # The reader then sees the limit passed before any newline and must skip.
                    asterisk.writer.write(long_reply[:3000])
                    await asterisk.writer.drain()
                    await asyncio.sleep(0.05)
                    asterisk.writer.write(long_reply[3000:])
                await asterisk.send(b"" if in_pieces else long_reply)

            with pytest.raises(LineTooLong) as caught:
                await asyncio.gather(session.command("GET VARIABLE BIG"), asterisk_side())
            assert caught.value.framed
            value, _ = await asyncio.gather(session.get_variable("SMALL"), asterisk.answer("200 result=1 (ok)"))
            assert value == "ok"

    run(scenario)


def test_over_long_reply_stops_the_commands_after_it_and_the_session_stays_in_step():
    async def scenario():
        async with connected(max_line=64) as (session, asterisk):
            async def asterisk_side():
                await asterisk.command()
                await asterisk.send(b"200 result=1 (" + b"x" * 500 + b")")

            with pytest.raises(LineTooLong):
                await asyncio.gather(session.send("GET VARIABLE A", "GET VARIABLE B"), asterisk_side())
            # B was never sent; the next command gets its own reply.
            value, command = await asyncio.gather(session.get_variable("C"), asterisk.answer("200 result=1 (c)"))
            assert (value, command) == ("c", "GET VARIABLE C")

    run(scenario)


def test_line_past_the_skip_limit_breaks_the_session():
    async def scenario():
        async with connected(max_line=64, max_skip=1000) as (session, asterisk):
            async def asterisk_side():
                await asterisk.command()
                asterisk.writer.write(b"200 result=1 (" + b"x" * 5000)
                await asterisk.writer.drain()

            with pytest.raises(LineTooLong) as caught:
                await asyncio.gather(session.command("GET VARIABLE BIG"), asterisk_side())
            assert not caught.value.framed
            with pytest.raises(ProtocolError, match="out of step"):
                await session.command("GET VARIABLE UNIQUEID")

    run(scenario)


@pytest.mark.parametrize("garbage", ["agi_network: yes", "OK", "", "200"])
def test_a_line_that_is_not_a_reply_is_a_protocol_error(garbage):
    async def scenario():
        async with connected() as (session, asterisk):
            with pytest.raises(ProtocolError) as caught:
                await asyncio.gather(session.command("GET VARIABLE UNIQUEID"), asterisk.answer(garbage))
            assert not isinstance(caught.value, (AGITimeout, LineTooLong))

    run(scenario)


# -- closing -------------------------------------------------------------------------------


def test_close_half_closes_and_returns_when_asterisk_answers_and_closes():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                # Asterisk sees the half-close as EOF, says HANGUP and closes its side.
                assert await asterisk.read_to_eof() == b""
                await asterisk.send("HANGUP")
                asterisk.writer.close()

            started = time.monotonic()
            await asyncio.gather(session.close(timeout=5.0), asterisk_side())
            assert time.monotonic() - started < 2.0

    run(scenario)


def test_close_returns_within_its_timeout_when_asterisk_never_closes():
    async def scenario():
        async with connected() as (session, asterisk):
            async def asterisk_side():
                assert await asterisk.read_to_eof() == b""
                await asterisk.send("HANGUP")

            started = time.monotonic()
            await asyncio.gather(session.close(timeout=0.3), asterisk_side())
            assert 0.25 <= time.monotonic() - started < 1.5
            # Half-closed was not enough: after the timeout the socket is closed for good.
            assert await asterisk.server_is_gone()

    run(scenario)


def test_close_ignores_a_flood_after_the_half_close():
    async def scenario():
        async with connected(max_line=64) as (session, asterisk):
            async def asterisk_side():
                assert await asterisk.read_to_eof() == b""
                asterisk.writer.write(b"x" * 100_000)
                await asterisk.writer.drain()

            started = time.monotonic()
            await asyncio.gather(session.close(timeout=1.0), asterisk_side())
            assert time.monotonic() - started < 2.0

    run(scenario)


def test_close_after_asterisk_has_gone_returns_at_once():
    async def scenario():
        async with connected() as (session, asterisk):
            asterisk.writer.close()
            started = time.monotonic()
            await session.close(timeout=5.0)
            assert time.monotonic() - started < 1.0

    run(scenario)
