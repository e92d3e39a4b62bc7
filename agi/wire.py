"""The bytes of one FastAGI connection: an asyncio Protocol with a buffer, and the line
framing (with its size limits) read out of that buffer.

Why not asyncio's streams: a StreamReader copies every chunk into its own buffer, wakes a reader
task per chunk through a future, and a line reader on top of it copies again. A session reads
a handful of short lines per command and the caller's channel waits meanwhile; here the lines
are taken straight from the protocol's one buffer, synchronously, and a session suspends only
when the buffer holds no complete line (for a reply, typically once).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .errors import HangupError, ProtocolError


class LineTooLong(ProtocolError):
    """A line exceeded the size limit. ``framed`` is True when its end was found and
    discarded, so the stream is still in step and the session can go on."""

    def __init__(self, limit: int, framed: bool):
        self.framed = framed
        super().__init__(f"line longer than {limit} bytes from the peer")


class Wire(asyncio.Protocol):
    """One connection's transport and the bytes received and not yet read.

    ``on_connect(wire)`` is called when the connection is made (the server starts the
    session's task there). A Wire can also be fed by hand, with no transport, through
    :meth:`data_received` and :meth:`eof_received` (the tests of the parsers do).
    """

    def __init__(self, on_connect: Callable[["Wire"], None] | None = None):
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # True once the peer can send nothing more (its EOF, or the connection lost).
        self.at_eof = False
        # True once the connection is gone; writes then fail.
        self.lost = False
        self._on_connect = on_connect
        self._waiter: asyncio.Future | None = None
        self._closed: asyncio.Future | None = None
        self._paused = False
        self._resumed: asyncio.Future | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake()
        # NOTE: True keeps our side open after the peer's half-close, so that what we still
        # have to say (the last replies' variables, our own EOF) can be written.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = self.lost = True
        self._wake()
        for future in (self._closed, self._resumed):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- what a reader and a writer need ------------------------------------------------

    async def more(self) -> bool:
        """Waits until more bytes (or the peer's EOF) arrive; False at once when the peer can
        send nothing more."""
        if self.at_eof:
            return False
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        await waiter
        return True

    def write(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    @property
    def must_drain(self) -> bool:
        """True when :meth:`drain` has something to wait for or to report."""
        return self._paused or self.lost

    async def drain(self) -> None:
        """Waits while the transport's buffer is over its high-water mark."""
        if self._paused and not self.lost:
            self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed
        if self.lost:
            raise ConnectionResetError("the connection was lost")

    def write_eof(self) -> bool:
        """Half-closes our side; False when that cannot be done (the connection is going)."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing() or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        if self.lost or self.transport is None:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await self._closed

    def peername(self):
        return self.transport.get_extra_info("peername") if self.transport is not None else None


class LineReader:
    """``\\n``-terminated lines out of a :class:`Wire`'s buffer, with a size limit.

    An over-long line is discarded up to its newline (reading at most ``max_skip`` bytes of
    it), so the conversation can continue in step; :class:`LineTooLong` says which it was.
    """

    def __init__(self, wire: Wire, max_line: int, max_skip: int = 1 << 20):
        self.wire = wire
        self.max_line = max_line
        self.max_skip = max_skip
        # While discarding an over-long line: how many bytes of it are gone, and how many may go.
        self._skipped: int | None = None
        self._skip_limit = 0

    def next_line(self, max_skip: int | None = None) -> bytes | None:
        """The next complete line without its ``\\n``, or None when the buffer holds none
        yet. Raises :class:`LineTooLong` once an over-long line has been discarded (framed) or
        has run past the skip limit (not framed)."""
        buffer = self.wire.buffer
        if self._skipped is not None:
            return self._skip()
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if end > self.max_line:
                raise LineTooLong(self.max_line, framed=True)
            return line
        if len(buffer) > self.max_line:
            self._skipped = 0
            self._skip_limit = self.max_skip if max_skip is None else max_skip
            return self._skip()
        return None

    def _skip(self) -> None:
        buffer = self.wire.buffer
        end = buffer.find(b"\n")
        if end >= 0:
            del buffer[: end + 1]
            self._skipped = None
            raise LineTooLong(self.max_line, framed=True)
        self._skipped += len(buffer)
        buffer.clear()
        if self._skipped > self._skip_limit:
            self._skipped = None
            raise LineTooLong(self.max_line, framed=False)
        return None

    async def readline(self, max_skip: int | None = None) -> bytes:
        """The next line without its ``\\n``. Raises :class:`HangupError` at end of stream and
        :class:`LineTooLong` past the limit (after skipping up to ``max_skip`` bytes)."""
        while True:
            line = self.next_line(max_skip)
            if line is not None:
                return line
            if not await self.wire.more():
                raise HangupError(
                    "Asterisk closed the connection inside an over-long line" if self._skipped is not None
                    else "Asterisk closed the connection"
                )

    async def read_block(self, limit: int) -> bytes | None:
        """The lines before the first empty line (joined by ``\\n``, as they came), taken in
        one go, when they all arrive within ``limit`` bytes and none is over the line limit;
        None otherwise, with nothing consumed, so that :meth:`readline` can deal with the block
        line by line. Raises HangupError."""
        buffer = self.wire.buffer
        while True:
            end = buffer.find(b"\n\n", 0, limit + 2)
            if end >= 0:
                block = bytes(buffer[:end])
                if (end > self.max_line and max(map(len, block.split(b"\n"))) > self.max_line) or buffer[:1] == b"\n":
                    return None
                del buffer[: end + 2]
                return block
            if len(buffer) > limit or buffer[:1] == b"\n":
                return None
            if not await self.wire.more():
                raise HangupError("Asterisk closed the connection")
