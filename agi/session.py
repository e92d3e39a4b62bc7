"""One FastAGI conversation: commands out, replies in, over a :class:`~agi.wire.Wire`.

A session sends a command and reads its reply; it keeps the stream in step when Asterisk slips
an unprompted ``HANGUP`` line or a ``100 Trying...`` line in front of a reply, and it bounds
every wait, because Asterisk itself never gives up on a server.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Mapping

from .errors import AGIError, AGITimeout, CommandRejected, HangupError, ProtocolError
from .protocol import (
    MAX_COMMAND_BYTES,
    Environment,
    Reply,
    command_bytes,
    decode,
    mset_command,
    parse_reply,
    parse_reply_line,
    quote,
    word,
)
from .watchdog import Watch, within
from .wire import LineReader, LineTooLong

__all__ = ["LineReader", "LineTooLong", "Session"]


def _fitted(values: Mapping[str, str], name: str) -> dict[str, str]:
    """``values`` with ``values[name]`` cut, ending in ``...``, as little as lets the MSet line
    fit :data:`MAX_COMMAND_BYTES` (or to ``...`` alone if nothing less does)."""
    fitted = dict(values)
    text = fitted[name]
    low, high = 0, len(text)
    # The encoded length grows with the kept prefix: the longest prefix that fits is found by
    # halving (an escaped or multi-byte character costs up to 4 bytes, so counting is no good).
    while low < high:
        middle = (low + high + 1) // 2
        fitted[name] = text[:middle] + "..."
        if command_bytes(mset_command(fitted)) <= MAX_COMMAND_BYTES:
            low = middle
        else:
            high = middle - 1
    fitted[name] = text[:low] + "..."
    return fitted


class Session:
    """A FastAGI session whose environment has been read.

    ``env`` is the request; ``hung_up`` turns True once Asterisk has said ``HANGUP`` (the
    channel is gone but the session stays usable in dead-channel mode: EXEC, GET/SET VARIABLE
    and VERBOSE still work, media commands are rejected with 511).
    """

    def __init__(
        self,
        lines: LineReader,
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
        self._wire = lines.wire
        # The opening line of a multi-line 520 usage reply and the lines after it, while
        # its end has not arrived yet.
        self._usage: list[str] | None = None
        self._broken: str | None = None
        # Replies Asterisk owes for commands already sent: non-zero only when a send() was
        # cancelled (a session deadline) while waiting; they are read and dropped first.
        self._owed = 0
        # One exchange at a time: a route's work that outlives its deadline and the report
        # that follows must not interleave their lines.
        self._turn = asyncio.Lock()
        # Whether our half-close went out: None until it was tried (half_close or close).
        self._eof_sent: bool | None = None

    @property
    def peer(self) -> str:
        peer = self._wire.peername()
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def peer_address(self) -> str | None:
        """The peer's IP address alone (None for a peer without one)."""
        peer = self._wire.peername()
        return peer[0] if isinstance(peer, tuple) else None

    # -- the exchange -------------------------------------------------------------------

    async def send(self, *commands: str) -> list[Reply]:
        """Sends the commands one at a time, each once the one before has its reply, and
        returns the replies in order. Non-200 replies are returned, not raised; see
        :meth:`command` for the raising form.

        NOTE: never more than one command in flight. res_agi reads a command with fgets() on
        a stdio FILE over the socket, then waits for the next by polling the socket itself:
        lines that arrived together with the first sit in the FILE's buffer, where the poll
        cannot see them, and Asterisk waits until more bytes come (on a live channel, for as
        long as the call lasts). asterisk/asterisk#2148 is the same design in ExternalIVR.
        The fake Asterisk of the tests and of bench/ behaves the same way.
        """
        # Encoded first: a command that cannot be sent stops the others before any is sent.
        payloads = [f"{command}\n".encode("utf-8") for command in commands]
        replies = []
        async with self._turn:
            for payload in payloads:
                replies.append(await self._exchange(payload))
        return replies

    def hold(self):
        """A context in which the session's own deadline waits (each reply's does not): for
        work that must finish once begun. A no-op without a watchdog."""
        return self.watch.hold() if self.watch is not None else nullcontext()

    async def _exchange(self, payload: bytes) -> Reply:
        if self._eof_sent is not None:
            raise ProtocolError("the session was half-closed: no command can follow")
        if self._broken:
            raise ProtocolError(f"session is out of step: {self._broken}")
        try:
            if self.watch is None:
                return await within(None, self.reply_timeout, self._talk(payload), "reply")
            with self.watch.bounded(self.reply_timeout, "reply"):
                return await self._talk(payload)
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

    async def _talk(self, payload: bytes) -> Reply:
        if self._owed:
            # The reply to a command whose wait was cancelled (a session deadline): it is
            # read and dropped, so that the next reply read is this command's own.
            try:
                await self._read_reply()
            except LineTooLong as exc:
                if not exc.framed:
                    raise
        wire = self._wire
        wire.write(payload)
        self._owed = 1
        if wire.must_drain:
            await wire.drain()
        return await self._read_reply()

    async def command(self, command: str) -> Reply:
        """Sends one command; returns its 200 reply or raises :class:`CommandRejected`."""
        (reply,) = await self.send(command)
        if not reply.ok:
            raise CommandRejected(command, reply)
        return reply

    async def _read_reply(self) -> Reply:
        """The reply owed; an over-long one is skipped whole and raised as LineTooLong."""
        while True:
            try:
                reply = self._take_reply()
            except LineTooLong:
                self._owed = 0
                raise
            if reply is not None:
                self._owed = 0
                return reply
            if not await self._wire.more():
                raise HangupError("Asterisk closed the connection")

    def _take_reply(self) -> Reply | None:
        """The next whole reply in the buffer, or None until it has all arrived (the lines
        of a usage reply read so far are kept meanwhile)."""
        lines = self._lines
        while True:
            raw = lines.next_line()
            if raw is None:
                return None
            line = decode(raw)
            if line[-1:] == "\r":
                line = line[:-1]
            if line == "HANGUP":
                self.hung_up = True
                continue
            usage = self._usage
            if usage is not None:
                if line.startswith(usage[0]):
                    self._usage = None
                    return parse_reply(line, tuple(usage[1:]))
                usage.append(line)
                continue
            if line[:4] == "200 ":
                return parse_reply(line)
            code, continued, text = parse_reply_line(line)
            if continued:
                # The usage ends at the line that starts with the same code and a space.
                self._usage = [f"{code} ", text]
                continue
            if code == 100:
                continue
            return parse_reply(line)

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

    async def set_variables(self, values: Mapping[str, str], *, shorten: str | None = None) -> None:
        """Sets several channel variables in ONE command, ``EXEC MSet`` (each command costs the
        caller a round trip). ``shorten`` names a variable whose value may be cut (ending in
        ``...``) so that the line fits res_agi's buffer; without it, or if that is not enough,
        a line that would not fit raises ValueError before anything is sent."""
        command = mset_command(values)
        size = command_bytes(command)
        if shorten is not None and size > MAX_COMMAND_BYTES:
            command = mset_command(_fitted(values, shorten))
            size = command_bytes(command)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"the variables need {size} bytes, more than one AGI line holds")
        reply = await self.command(command)
        if reply.value != 0:
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

    async def half_close(self) -> None:
        """Says "no more commands" now: Asterisk answers ``HANGUP``, closes its side and takes
        the channel back to the dialplan, while this side finishes its own bookkeeping (a log
        line, metrics) off the caller's wait. :meth:`close` then only waits for Asterisk's end.
        Nothing can be sent after it."""
        if self._eof_sent is None:
            self._eof_sent = self._wire.write_eof()
            # NOTE: uvloop (libuv) shuts the socket down on the loop's next turn, not inside
            # write_eof(): one turn lets the EOF leave before the caller goes on.
            await asyncio.sleep(0)

    async def close(self, timeout: float = 2.0) -> None:
        """Ends the session: half-closes (unless :meth:`half_close` did), lets Asterisk answer
        ``HANGUP`` and close its side (which returns the channel to the dialplan), then closes.
        Never waits past ``timeout``."""
        wire = self._wire
        await self.half_close()
        try:
            if self._eof_sent:
                await within(self.watch, timeout, self._drain_to_eof(), "close")
        except (AGIError, TimeoutError, OSError):
            pass
        finally:
            wire.close()
            try:
                await within(self.watch, timeout, wire.wait_closed(), "close")
            except (TimeoutError, OSError):
                pass

    async def _drain_to_eof(self) -> None:
        while True:
            await self._lines.readline(max_skip=0)
