"""One FastAGI conversation: commands out, replies in, over an asyncio stream pair.

A session sends a command and reads its reply; it keeps the stream in step when Asterisk slips
an unprompted ``HANGUP`` line or a ``100 Trying...`` line in front of a reply, and it bounds
every wait, because Asterisk itself never gives up on a server.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Mapping

from .errors import AGIError, AGITimeout, CommandRejected, HangupError, ProtocolError
from .watchdog import Watch, within
from .protocol import Environment, Reply, decode, parse_reply, parse_reply_line, quote, word


class LineTooLong(ProtocolError):
    """A line exceeded the size limit. ``framed`` is True when its end was found and
    discarded, so the stream is still in step and the session can go on."""

    def __init__(self, limit: int, framed: bool):
        self.framed = framed
        super().__init__(f"line longer than {limit} bytes from the peer")


class LineReader:
    """Reads ``\\n``-terminated lines with a size limit, over a :class:`asyncio.StreamReader`.

    The standard reader's ``readuntil()`` leaves an over-long line in its buffer with no way to
    skip it; this one discards it up to its newline so that the conversation can continue.
    """

    def __init__(self, reader: asyncio.StreamReader, max_line: int, max_skip: int = 1 << 20):
        self._reader = reader
        self._buffer = bytearray()
        self.max_line = max_line
        self.max_skip = max_skip

    async def readline(self, max_skip: int | None = None) -> bytes:
        """The next line without its ``\\n``. Raises :class:`HangupError` at end of stream and
        :class:`LineTooLong` past the limit (after skipping up to ``max_skip`` bytes)."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if end > self.max_line:
                    raise LineTooLong(self.max_line, framed=True)
                return line
            if len(buffer) > self.max_line:
                await self._skip_line(self.max_skip if max_skip is None else max_skip)
                raise LineTooLong(self.max_line, framed=True)
            chunk = await self._reader.read(65536)
            if not chunk:
                raise HangupError("Asterisk closed the connection")
            buffer += chunk

    async def read_block(self, limit: int) -> list[bytes] | None:
        """The lines before the first empty line, read in one go, when they all arrive within
        ``limit`` bytes and none is over the line limit; None otherwise, with nothing consumed,
        so that :meth:`readline` can deal with the block line by line. Raises HangupError."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n\n", 0, limit + 2)
            if end >= 0:
                lines = bytes(buffer[:end]).split(b"\n")
                if max(map(len, lines)) > self.max_line or buffer[:1] == b"\n":
                    return None
                del buffer[: end + 2]
                return lines
            if len(buffer) > limit or buffer[:1] == b"\n":
                return None
            chunk = await self._reader.read(65536)
            if not chunk:
                raise HangupError("Asterisk closed the connection")
            buffer += chunk

    async def _skip_line(self, max_skip: int) -> None:
        skipped = len(self._buffer)
        self._buffer.clear()
        while skipped <= max_skip:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise HangupError("Asterisk closed the connection inside an over-long line")
            end = chunk.find(b"\n")
            if end >= 0:
                self._buffer += chunk[end + 1:]
                return
            skipped += len(chunk)
        raise LineTooLong(self.max_line, framed=False)


class Session:
    """A FastAGI session whose environment has been read.

    ``env`` is the request; ``hung_up`` turns True once Asterisk has said ``HANGUP`` (the
    channel is gone but the session stays usable in dead-channel mode: EXEC, GET/SET VARIABLE
    and VERBOSE still work, media commands are rejected with 511).
    """

    def __init__(
        self,
        lines: LineReader,
        writer: asyncio.StreamWriter,
        env: Environment,
        *,
        reply_timeout: float = 10.0,
        watch: Watch | None = None,
    ):
        self.env = env
        # The server's watchdog bounds this session's waits; without one (a session made
        # by hand) each wait has its own asyncio timeout.
        self.watch = watch
        self.hung_up = False
        self.reply_timeout = reply_timeout
        self._lines = lines
        self._writer = writer
        self._broken: str | None = None
        # Replies Asterisk owes for commands already sent: non-zero only when a send() was
        # cancelled (a session deadline) while waiting; they are read and dropped first.
        self._owed = 0
        # One exchange at a time: a route's work that outlives its deadline and the report
        # that follows must not interleave their lines.
        self._turn = asyncio.Lock()

    @property
    def peer(self) -> str:
        peer = self._writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def peer_address(self) -> str | None:
        """The peer's IP address alone (None for a peer without one)."""
        peer = self._writer.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else None

    # -- the exchange -------------------------------------------------------------------

    async def send(self, *commands: str) -> list[Reply]:
        """Sends the commands in one write and returns their replies in order.

        Asterisk runs the commands of one session one after the other, so pipelining them
        saves a round trip per command without changing their meaning. Non-200 replies are
        returned, not raised; see :meth:`command` for the raising form.
        """
        payload = "".join(f"{command}\n" for command in commands).encode("utf-8")
        async with self._turn:
            return await self._exchange(payload, len(commands))

    def hold(self):
        """A context in which the session's own deadline waits (each reply's does not): for
        work that must finish once begun. A no-op without a watchdog."""
        return self.watch.hold() if self.watch is not None else nullcontext()

    async def _exchange(self, payload: bytes, count: int) -> list[Reply]:
        if self._broken:
            raise ProtocolError(f"session is out of step: {self._broken}")
        try:
            return await within(self.watch, self.reply_timeout, self._talk(payload, count), "reply")
        except TimeoutError:
            self._broken = "no reply in time"
            raise AGITimeout(f"no reply from Asterisk within {self.reply_timeout:g}s") from None
        except (ConnectionError, BrokenPipeError) as exc:
            self._broken = "connection lost"
            raise HangupError(f"connection to Asterisk lost: {exc}") from None
        except ProtocolError as exc:
            if not getattr(exc, "framed", False):
                self._broken = str(exc)
            raise

    async def _talk(self, payload: bytes, count: int) -> list[Reply]:
        while self._owed:
            await self._read_reply()
            self._owed -= 1
        self._writer.write(payload)
        self._owed = count
        await self._writer.drain()
        return await self._read_replies(count)

    async def command(self, command: str) -> Reply:
        """Sends one command; returns its 200 reply or raises :class:`CommandRejected`."""
        (reply,) = await self.send(command)
        if not reply.ok:
            raise CommandRejected(command, reply)
        return reply

    async def _read_replies(self, count: int) -> list[Reply]:
        replies: list[Reply] = []
        skipped: LineTooLong | None = None
        for _ in range(count):
            try:
                replies.append(await self._read_reply())
                self._owed -= 1
            except LineTooLong as exc:
                self._owed -= 1
                if not exc.framed:
                    raise
                # NOTE: the replies to the commands pipelined after this one are still on the
                # wire; raising before reading them would hand them to the next send() as its
                # own, silently out of step. Read them, then report the over-long line.
                skipped = skipped or exc
        if skipped is not None:
            raise skipped
        return replies

    async def _read_reply(self) -> Reply:
        while True:
            line = decode(await self._lines.readline())
            if line.endswith("\r"):
                line = line[:-1]
            if line == "HANGUP":
                self.hung_up = True
                continue
            code, continued, text = parse_reply_line(line)
            if continued:
                return await self._read_usage(code, text)
            if code == 100:
                continue
            return parse_reply(line)

    async def _read_usage(self, code: int, first: str) -> Reply:
        usage = [first]
        final = f"{code} "
        while True:
            line = decode(await self._lines.readline())
            if line == "HANGUP":
                self.hung_up = True
                continue
            if line.startswith(final):
                return parse_reply(line, tuple(usage))
            usage.append(line)

    # -- one small method per verb ------------------------------------------------------

    async def get_variable(self, name: str) -> str | None:
        """The channel variable's value; ``None`` when it is not set."""
        reply = await self.command(f"GET VARIABLE {word(name)}")
        return reply.data if reply.value == 1 else None

    async def get_full_variable(self, expression: str) -> str | None:
        """``expression`` with ``${...}`` evaluated on the channel; ``None`` if unavailable."""
        reply = await self.command(f"GET FULL VARIABLE {quote(expression)}")
        return reply.data if reply.value == 1 else None

    async def set_variable(self, name: str, value: str) -> None:
        await self.command(f"SET VARIABLE {word(name)} {quote(value)}")

    async def set_variables(self, values: Mapping[str, str]) -> None:
        """Sets several channel variables in one round trip."""
        commands = [f"SET VARIABLE {word(k)} {quote(v)}" for k, v in values.items()]
        for command, reply in zip(commands, await self.send(*commands)):
            if not reply.ok:
                raise CommandRejected(command, reply)

    async def exec(self, application: str, data: str = "") -> int | None:
        """Runs a dialplan application; returns its result (0 ran, -1 failed or hung up,
        -2 no such application).

        NOTE: EXEC takes ONE data word and silently drops anything after it, and Asterisk
        does not expand ``${...}`` in it (unless the channel sets AGIEXECFULL), so ``data``
        is always sent quoted and must hold real values.
        """
        reply = await self.command(f"EXEC {word(application)} {quote(data)}")
        return reply.value

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command(f"VERBOSE {quote(message)} {int(level)}")

    async def answer(self) -> int | None:
        return (await self.command("ANSWER")).value

    # -- the end ------------------------------------------------------------------------

    async def close(self, timeout: float = 2.0) -> None:
        """Ends the session: half-closes, lets Asterisk answer ``HANGUP`` and close its side
        (which returns the channel to the dialplan), then closes. Never waits past ``timeout``."""
        writer = self._writer
        try:
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()
                await within(self.watch, timeout, self._drain_to_eof(), "close")
        except (AGIError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            try:
                await within(self.watch, timeout, writer.wait_closed(), "close")
            except (TimeoutError, OSError):
                pass

    async def _drain_to_eof(self) -> None:
        while True:
            await self._lines.readline(max_skip=0)
