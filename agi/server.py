"""The FastAGI server: accepts Asterisk's connections, reads the environment, routes by script
path, and always ends the connection within bounded time.

The handler never sees the socket, only a :class:`~agi.session.Session`; whatever it raises is
logged here and the connection is closed, so a broken handler cannot leave a call hanging.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .errors import AGIError, AGITimeout, HangupError, Overloaded, ProtocolError, UnknownRoute
from .protocol import Environment, parse_environment, parse_environment_block, parse_environment_line
from .session import Session
from .watchdog import Watch, Watchdog, within
from .wire import LineReader, LineTooLong, Wire

log = logging.getLogger("agi.server")

Handler = Callable[[Session], Awaitable[None]]
ErrorHandler = Callable[[Session, AGIError], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one connection may cost. Times are seconds."""

    max_line_bytes: int = 8192
    max_environment_bytes: int = 65536
    environment_timeout: float = 5.0
    reply_timeout: float = 10.0
    session_timeout: float = 30.0
    close_timeout: float = 2.0
    max_sessions: int = 4096
    # Connections past max_sessions that are still read and told "busy" (on_error with
    # Overloaded) rather than dropped unanswered; past this many too, they are just closed.
    busy_sessions: int = 64
    backlog: int = 4096


class Router:
    """Maps a script path (``recording/start``) to its handler.

    ``on_error`` is called with a usable session when a request cannot be served: an unknown
    route (UnknownRoute), an environment that is malformed but complete (ProtocolError), a
    server at its session limit (Overloaded), or a session that ran out of time (AGITimeout),
    so the dialplan can still be told.
    """

    def __init__(self, on_error: ErrorHandler | None = None):
        self._routes: dict[str, Handler] = {}
        self.on_error = on_error

    def add(self, script: str, handler: Handler) -> None:
        self._routes[script.strip("/")] = handler

    def route(self, script: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(script, handler)
            return handler

        return register

    @property
    def scripts(self) -> tuple[str, ...]:
        return tuple(sorted(self._routes))

    def resolve(self, script: str) -> Handler:
        """The handler for ``script``; raises :class:`UnknownRoute`."""
        try:
            return self._routes[script]
        except KeyError:
            raise UnknownRoute(script, self.scripts) from None


async def read_environment(lines: LineReader, limits: Limits) -> Environment:
    """Reads the block up to its empty line within the size limits.

    Raises :class:`HangupError` if the peer closes first and :class:`ProtocolError` for a
    malformed block; the error's ``env`` holds what could be parsed and its ``framed`` is True
    when the empty line was reached, so the session can still answer the dialplan.
    """
    block = await lines.read_block(limits.max_environment_bytes)
    if block is not None:
        # NOTE: the usual case: the whole block in one read, parsed in one pass.
        try:
            return parse_environment_block(block)
        except ProtocolError as exc:
            exc.env = _lenient_environment(block.split(b"\n"))
            exc.framed = True
            raise
    raw = []
    budget = limits.max_environment_bytes
    first_error: ProtocolError | None = None
    while True:
        try:
            line = await lines.readline(max_skip=budget)
        except LineTooLong as exc:
            if not exc.framed:
                raise
            first_error = first_error or exc
            budget -= limits.max_line_bytes
            if budget < 0:
                raise ProtocolError("AGI environment larger than the limit") from None
            continue
        if line in (b"", b"\r"):
            break
        budget -= len(line) + 1
        if budget < 0:
            raise ProtocolError("AGI environment larger than the limit")
        raw.append(line)
    if first_error is None:
        try:
            return parse_environment(raw)
        except ProtocolError as exc:
            first_error = exc
    first_error.env = _lenient_environment(raw)
    first_error.framed = True
    raise first_error


def _lenient_environment(raw: list[bytes]) -> Environment:
    """What can be read of a malformed block: the well-formed lines, for logs and replies."""
    variables = {}
    for line in raw:
        try:
            key, value = parse_environment_line(line)
        except ProtocolError:
            continue
        variables.setdefault(key[4:], value)
    return Environment(variables, ())


class Server:
    """Serves FastAGI on ``host:port`` (port 0 picks a free one; see :attr:`port`), or on a
    listening socket it is given (``sock``: one that outlives the process, such as systemd's)."""

    def __init__(
        self,
        router: Router,
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        limits: Limits = Limits(),
        reuse_port: bool = False,
        admit: Callable[[str | None], bool] | None = None,
        sock: socket.socket | None = None,
    ):
        self.router = router
        self.sock = sock
        # Asked with each peer's address before anything is read; False closes the connection.
        self.admit = admit
        self.host = host
        self.requested_port = port
        self.limits = limits
        self.reuse_port = reuse_port
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()
        self._watchdog = Watchdog()
        self.sessions_refused = 0

    @property
    def active_sessions(self) -> int:
        return len(self._tasks)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._watchdog.start()
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await loop.create_server(
                lambda: Wire(self._connected), sock=self.sock, backlog=self.limits.backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: Wire(self._connected),
                self.host,
                self.requested_port,
                backlog=self.limits.backlog,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
            )
        for sock in self._server.sockets:
            # NOTE: replies are small and the caller's channel waits on each one.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = self._server.sockets[0].getsockname()[:2]
        handed = " (a socket handed over)" if self.sock is not None else ""
        log.info("FastAGI listening on %s:%d%s", host, port, handed)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    async def stop(self, grace: float = 10.0) -> int:
        """Stops accepting, lets sessions in flight finish for up to ``grace`` seconds, then
        cancels the rest. Returns how many had to be cancelled."""
        if self._server is not None:
            self._server.close()
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.limits.close_timeout + 1)
        await self._watchdog.stop()
        return len(pending)

    def _connected(self, wire: Wire) -> None:
        """A new connection: refused, or given its session task (counted from this moment,
        so that a burst of connections cannot slip past the limit before their tasks run)."""
        if self.admit is not None:
            peer = wire.peername()
            if not self.admit(peer[0] if isinstance(peer, tuple) else None):
                wire.close()
                return
        busy = len(self._tasks) >= self.limits.max_sessions
        if busy:
            self.sessions_refused += 1
            if len(self._busy) >= self.limits.busy_sessions:
                log.warning("dropping a FastAGI connection: %d sessions open, %d told busy",
                            len(self._tasks), len(self._busy))
                wire.close()
                return
        tasks = self._busy if busy else self._tasks
        task = asyncio.get_running_loop().create_task(self._accept(wire, busy))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _accept(self, wire: Wire, busy: bool) -> None:
        watch = self._watchdog.watch(asyncio.current_task(), self.limits.session_timeout)
        try:
            await self._serve(wire, watch, busy)
        finally:
            self._watchdog.forget(watch)

    async def _serve(self, wire: Wire, watch: Watch, busy: bool = False) -> None:
        limits = self.limits
        lines = LineReader(wire, limits.max_line_bytes)
        session: Session | None = None
        try:
            env = await self._environment(lines, watch)
            if env is None:
                return
            session = Session(lines, env, reply_timeout=limits.reply_timeout, watch=watch)
            if busy:
                await self._report(session, Overloaded(
                    f"the server is at its limit of {limits.max_sessions} sessions; try again"
                ), limits.close_timeout)
                return
            try:
                handler = self.router.resolve(env.script)
            except UnknownRoute as exc:
                await self._report(session, exc)
                return
            try:
                await handler(session)
            except asyncio.CancelledError:
                if not watch.claim("session"):
                    raise
                expired = AGITimeout(f"the session ran past its limit of {limits.session_timeout:g}s")
                await self._report(session, expired, limits.close_timeout)
        except HangupError as exc:
            log.info("FastAGI connection from %s ended early: %s", _peer(wire), exc)
        except AGIError as exc:
            log.warning("FastAGI connection from %s failed: %s", _peer(wire), exc)
        except asyncio.CancelledError:
            # NOTE: a session deadline that struck outside the handler (while reporting):
            # the connection is closed below like any other; anything else is a real cancel.
            if not watch.claim("session"):
                raise
            log.warning("FastAGI connection from %s ran past its session limit", _peer(wire))
        except Exception:
            log.exception("FastAGI handler failed on a connection from %s", _peer(wire))
        finally:
            if session is None:
                wire.close()
            else:
                watch.deadline = float("inf")
                await session.close(limits.close_timeout)

    async def _environment(self, lines: LineReader, watch: Watch) -> Environment | None:
        """The request's environment; None when it was malformed but complete and the
        dialplan has been told so."""
        limits = self.limits
        try:
            return await within(watch, limits.environment_timeout, read_environment(lines, limits), "environment")
        except TimeoutError:
            raise AGITimeout(f"no complete AGI environment within {limits.environment_timeout:g}s") from None
        except ProtocolError as exc:
            if not getattr(exc, "framed", False):
                raise
            session = Session(lines, exc.env, reply_timeout=limits.reply_timeout, watch=watch)
            await self._report(session, exc)
            await session.close(limits.close_timeout)
            return None

    async def _report(self, session: Session, error: AGIError, seconds: float | None = None) -> None:
        """Logs why a request was not served and lets ``on_error`` tell the dialplan, within
        ``seconds`` (a session deadline that already struck is moved to then)."""
        log.warning("FastAGI request %s (%s) from %s not served: %s",
                    session.env.uniqueid or "-", session.env.script or "-", session.peer, error)
        if seconds is not None:
            session.watch.deadline = time.monotonic() + seconds
        if self.router.on_error is not None:
            await self.router.on_error(session, error)


def _peer(wire: Wire) -> str:
    peer = wire.peername()
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
