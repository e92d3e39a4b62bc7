"""An asyncio client for the Asterisk manager interface (AMI), as the recording service uses it.

One long-lived, logged-in connection per client, re-established in the background with
exponential backoff whenever it drops (Asterisk restarted, network gone). Actions may run
concurrently: each gets its own ``ActionID`` and its answer is matched by that id, never by
order. Unsolicited events (``Hangup`` ...) go to subscribers.

The wire format, as ``../shared/asterisk/ami-exchange.txt`` shows it: a banner line
``Asterisk Call Manager/11.0.0``, then messages made of ``Key: Value`` lines ending in CRLF,
each message ending at an empty line. A list action (``CoreShowChannels``) is answered by a
``Response`` with ``EventList: start``, one event per item carrying the same ``ActionID``, and
an event whose name ends in ``Complete``.

The secret is sent once per login and never appears in a log line, an exception or a repr.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from agi import app_argument

from ..errors import ConfigError

log = logging.getLogger("recording.ami")

DEFAULT_PORT = 5038
BANNER_PREFIX = "Asterisk Call Manager/"
MUTE_DIRECTIONS = ("read", "write", "both")

# Bounds that keep a broken or hostile peer from eating memory. Asterisk's own lines are far
# shorter (its manager reads 1 KiB lines); a CoreShowChannels event is about 500 bytes.
MAX_LINE = 8 * 1024
MAX_MESSAGE = 64 * 1024
MAX_LIST_EVENTS = 50_000

Message = dict[str, str]
EventCallback = Callable[[Message], Any]
ConnectCallback = Callable[[], Any]


class AMIFailure(Exception):
    """Base of every failure of an AMI action."""


class AMIError(AMIFailure):
    """Asterisk answered ``Response: Error``. ``str(exc)`` is Asterisk's ``Message`` text
    (``No such channel``); ``reply`` is the whole parsed answer, ``action`` the action's name."""

    def __init__(self, message: str, reply: Message | None = None, action: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reply = dict(reply or {})
        self.action = action


class AMILoginRefused(AMIError):
    """Asterisk refused the username or secret. The client tries again only every
    ``refused_retry`` seconds (the same credentials are likely refused again, and each refusal
    costs Asterisk a one-second sleep), so a fixed manager.conf is picked up without a restart."""


class AMIUnavailable(AMIFailure):
    """There is no logged-in connection (not started, down and reconnecting, login refused,
    stopped), or it dropped before Asterisk answered. Raised at once, never after a wait."""


class AMITimeout(AMIFailure):
    """Asterisk did not answer within ``action_timeout``; the action may or may not have run."""


class AMIProtocolError(AMIFailure):
    """The peer does not speak AMI (no banner) or broke a bound (line or message too long).
    The connection is dropped; callers waiting on it get :class:`AMIUnavailable`."""


class AMIConfigError(ConfigError, ValueError):
    """The AMI URL cannot be used. The message never repeats the secret."""


# --- parsing: pure functions over bytes -------------------------------------------------------


def parse_banner(line: bytes) -> str:
    """The manager's version from its first line (``11.0.0``); AMIProtocolError if the peer
    is not an Asterisk manager."""
    text = _strip_eol(line).decode("utf-8", "replace")
    if not text.startswith(BANNER_PREFIX):
        raise AMIProtocolError(f"not an Asterisk manager: first line {text[:80]!r}")
    return text[len(BANNER_PREFIX):]


def parse_message(lines: list[bytes]) -> Message:
    """One message (its lines, without the empty line ending it) as a dict.

    Values keep everything after ``Key:`` but the blanks right after the colon, so
    ``AccountCode: `` gives ''. A repeated key (``Output:`` of Command, ``ChanVariable:``)
    keeps every value, joined by newlines in arrival order. Lines without a colon carry
    nothing AMI defines and are skipped. Undecodable bytes become U+FFFD.
    """
    message: Message = {}
    for raw in lines:
        key, colon, value = _strip_eol(raw).decode("utf-8", "replace").partition(":")
        key = key.strip()
        if not colon or not key:
            continue
        value = value.lstrip(" \t")
        message[key] = f"{message[key]}\n{value}" if key in message else value
    return message


# Messages read from the socket between two turns given back to the event loop.
YIELD_EVERY = 32


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message from ``reader``, or None at end of stream (a message cut short by the
    end of the stream is dropped). Empty lines between messages are skipped. Raises
    AMIProtocolError for a line longer than the reader's limit or a message over MAX_MESSAGE
    bytes; bare ``\\n`` line ends are accepted."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # NOTE: StreamReader's way of saying the line outgrew its limit
            raise AMIProtocolError("line longer than the reader's limit") from None
        if not raw.endswith(b"\n"):
            return None
        line = _strip_eol(raw)
        if not line:
            if lines:
                return parse_message(lines)
            continue
        size += len(raw)
        if size > MAX_MESSAGE:
            raise AMIProtocolError(f"message longer than {MAX_MESSAGE} bytes")
        lines.append(line)


def format_action(name: str, action_id: str, fields: dict[str, Any]) -> bytes:
    """The bytes of one action: ``Action``, ``ActionID``, then the fields in order; a list or
    tuple value repeats its key once per item, None leaves the field out. Raises ValueError for
    a key or value that would break the framing (CR, LF, or a colon in a key)."""
    lines = [("Action", name), ("ActionID", action_id)]
    for key, value in fields.items():
        if key in ("Action", "ActionID"):
            raise ValueError(f"{key} is set by the client, not by the caller")
        values = value if isinstance(value, (list, tuple)) else [value]
        lines.extend((key, item) for item in values if item is not None)
    out = []
    for key, value in lines:
        text = str(value)
        if not key or any(c in key for c in ":\r\n ") or "\r" in text or "\n" in text:
            raise ValueError(f"AMI field {key!r} has a name or value that breaks the framing")
        out.append(f"{key}: {text}\r\n")
    out.append("\r\n")
    return "".join(out).encode("utf-8")


def parse_ami_url(url: str) -> tuple[str, int, str, str]:
    """``ami://USER:SECRET@HOST[:PORT]`` as ``(host, port, user, secret)``, user and secret
    URL-decoded, port 5038 by default. Raises AMIConfigError naming what is wrong, never
    quoting the secret."""
    shape = "must look like ami://USER:SECRET@HOST[:PORT] (URL-encode / ? # @ : in the secret)"
    if not isinstance(url, str):
        raise AMIConfigError(f"the AMI URL {shape}")
    parts = urlsplit(url.strip())
    if parts.scheme != "ami":
        raise AMIConfigError(f"the AMI URL {shape}; it does not start with ami://")
    if parts.username is None or parts.password is None or "@" not in parts.netloc:
        raise AMIConfigError(f"the AMI URL {shape}; it has no USER:SECRET@")
    if not parts.hostname:
        raise AMIConfigError(f"the AMI URL {shape}; it has no HOST")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise AMIConfigError(f"the AMI URL {shape}; it has a path, query or fragment")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise AMIConfigError(f"the AMI URL {shape}; its port is not a number from 1 to 65535") from None
    user, secret = unquote(parts.username), unquote(parts.password)
    if not user or not secret:
        raise AMIConfigError(f"the AMI URL {shape}; USER and SECRET cannot be empty")
    return parts.hostname, port, user, secret


def _strip_eol(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw[:-1] if raw.endswith(b"\r") else raw


# --- the client -------------------------------------------------------------------------------


@dataclass
class _Pending:
    """An action waiting for its answer; a list action also for its events."""

    name: str
    future: asyncio.Future
    is_list: bool = False
    response: Message | None = None
    events: list[Message] = field(default_factory=list)

    @property
    def collecting(self) -> bool:
        return self.response is not None and not self.future.done()

    def on_response(self, reply: Message) -> None:
        if self.future.done():
            return
        if reply.get("Response") == "Error":
            error = AMIError(reply.get("Message", "Asterisk answered Error"), reply, self.name)
            self.future.set_exception(error)
        elif self.is_list and reply.get("EventList", "").lower() == "start":
            self.response = reply
        else:
            self.future.set_result((reply, []) if self.is_list else reply)

    def on_event(self, event: Message) -> None:
        if event.get("Event", "").endswith("Complete") or event.get("EventList") == "Complete":
            self.future.set_result((self.response, self.events))
            return
        if len(self.events) >= MAX_LIST_EVENTS:
            raise AMIProtocolError(f"{self.name} sent more than {MAX_LIST_EVENTS} events")
        self.events.append(event)


class AMIClient:
    """A logged-in AMI connection kept up in the background (see the module docstring).

    ``action_timeout`` bounds each action (and the login), ``connect_timeout`` the TCP connect
    and the banner; after a failure the next attempt waits ``backoff[0]`` seconds, doubling up
    to ``backoff[1]``, and starts again from ``backoff[0]`` once a connection was up.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        action_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        backoff: tuple[float, float] = (0.2, 5.0),
        refused_retry: float = 30.0,
    ) -> None:
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first delay, longest delay) with 0 < first <= longest, not {backoff}")
        if action_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("action_timeout and connect_timeout must be greater than 0")
        if any(c in text for text in (username, secret) for c in "\r\n") or not username:
            raise ValueError("the AMI username must be set and neither it nor the secret may hold CR or LF")
        self.host, self.port, self.username = host, int(port), username
        self._secret = secret
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self._backoff = backoff
        self._refused_retry = refused_retry
        self.version: str | None = None
        self._connected = False
        self._refused: AMILoginRefused | None = None
        self._ready: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, _Pending] = {}
        self._subscribers: list[EventCallback] = []
        self._connect_hooks: list[ConnectCallback] = []
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self._id_prefix = f"rec-{secrets.token_hex(3)}"
        self._was_up = False
        self._down_reported = False
        self._stopping = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AMIClient:
        """A client for ``ami://USER:SECRET@HOST[:PORT]`` (see :func:`parse_ami_url`); the
        keyword options are the constructor's."""
        host, port, user, secret = parse_ami_url(url)
        return cls(host, port, user, secret, **options)

    def __repr__(self) -> str:
        return f"AMIClient({self.host!r}, {self.port}, user={self.username!r}, connected={self._connected})"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while logged in; actions are only sent then."""
        return self._connected

    @property
    def in_flight(self) -> int:
        """How many actions are waiting for their answer."""
        return len(self._pending)

    # --- lifecycle ---

    async def start(self) -> None:
        """Begins connecting in the background and returns at once (see wait_connected)."""
        if self._runner is not None:
            return
        self._stopping, self._refused = False, None
        self._ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name=f"ami {self.address}")

    async def wait_connected(self, timeout: float) -> None:
        """Returns once logged in. Raises AMILoginRefused if Asterisk refused the login,
        AMIUnavailable if not logged in after ``timeout`` seconds or not started."""
        if self._refused is not None:
            raise self._refused
        if self._ready is None:
            raise AMIUnavailable(f"AMI client for {self.address} was not started")
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise AMIUnavailable(f"AMI at {self.address} not connected after {timeout:g} s") from None
        if self._refused is not None:
            raise self._refused
        if not self._connected:
            raise AMIUnavailable(f"AMI client for {self.address} stopped")

    async def stop(self) -> None:
        """Sends Logoff when connected, closes the connection and stops reconnecting. Actions
        still waiting fail with AMIUnavailable."""
        self._stopping = True
        if self._connected:
            try:
                await asyncio.wait_for(self.action("Logoff"), min(self.action_timeout, 2.0))
            except (AMIFailure, TimeoutError):
                pass  # closing anyway
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        await self._drop(AMIUnavailable(f"AMI client for {self.address} stopped"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ready is not None:
            self._ready.set()  # wake wait_connected(), which then reports the stop

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Calls ``callback(event)`` for every unsolicited event (a copy of the parsed dict; a
        coroutine function runs as its own task). Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def on_connect(self, callback: ConnectCallback) -> None:
        """Calls ``callback()`` after each successful login, the first and every reconnection
        (a coroutine function runs as its own task, so it may send actions)."""
        self._connect_hooks.append(callback)

    # --- actions ---

    async def action(self, name: str, /, **fields: Any) -> Message:
        """Sends one action and returns Asterisk's answer as a dict (``Response: Success``,
        ``Goodbye``, ... and whatever fields came with it). Raises AMIError for
        ``Response: Error``, AMITimeout after ``action_timeout``, AMIUnavailable when not
        connected or when the connection drops first, ValueError for fields that break the
        framing."""
        return await self._request(name, fields, is_list=False)

    async def list_action(self, name: str, /, **fields: Any) -> tuple[Message, list[Message]]:
        """Sends a list action (``CoreShowChannels``) and returns its answer and its events,
        without the final ``...Complete`` event. The whole list must arrive within
        ``action_timeout``. Raises as :meth:`action` does."""
        return await self._request(name, fields, is_list=True)

    async def system_name(self) -> str:
        """The Asterisk's ``systemname`` (asterisk.conf), '' when it has none (CoreSettings)."""
        reply = await self.action("CoreSettings")
        return reply.get("SystemName", "")

    async def core_show_channels(self) -> list[Message]:
        """Every live channel, one ``CoreShowChannel`` event each (Channel, Uniqueid,
        Linkedid, BridgeId, Application, ...)."""
        _, events = await self.list_action("CoreShowChannels")
        return [event for event in events if event.get("Event") == "CoreShowChannel"]

    async def mixmonitor(self, channel: str, file: str, options: str, id_variable: str) -> str | None:
        """Starts MixMonitor on ``channel`` writing ``file`` and returns its MixMonitorID
        (None if Asterisk gave none). ``options`` must not carry ``i()``: the client adds
        ``i(id_variable)``, which stores the id on the channel and makes the answer carry it.
        Asterisk answers Success even when it cannot write the file. AMIError ``No such
        channel`` if the channel is gone."""
        if "i(" in options:
            raise ValueError("MixMonitor options must not carry i(); the client adds its own")
        # NOTE: Asterisk joins File, Options and Command with commas and parses them as the
        # application's data (manager_mixmonitor), so the file name is escaped as one argument.
        reply = await self.action("MixMonitor", Channel=channel, File=app_argument(file),
                                  Options=f"{options}i({id_variable})")
        return reply.get("MixMonitorID") or None

    async def stop_mixmonitor(self, channel: str, mixmonitor_id: str) -> None:
        """Stops the MixMonitor with that id on ``channel``, never "the most recent one".
        AMIError ``Could not stop monitoring channel`` if that id is not running there,
        ``No such channel`` if the channel is gone."""
        if not mixmonitor_id:
            raise ValueError("stop_mixmonitor needs the MixMonitorID (without one Asterisk stops the latest)")
        await self.action("StopMixMonitor", Channel=channel, MixMonitorID=mixmonitor_id)

    async def getvar(self, channel: str, variable: str) -> str | None:
        """The value of a channel variable, None if unset or empty (AMI does not tell them
        apart). AMIError ``No such channel`` if the channel is gone."""
        reply = await self.action("Getvar", Channel=channel, Variable=variable)
        return reply.get("Value") or None

    async def mixmonitor_mute(
        self, channel: str, mixmonitor_id: str, state: bool, direction: str = "both"
    ) -> None:
        """Mutes (``state`` True) or unmutes a MixMonitor's ``read``, ``write`` or ``both``
        directions.

        NOTE: Asterisk 22's MixMonitorMute reads a MixMonitorID header (its documentation does
        not list it): with one it mutes exactly that MixMonitor, without one every MixMonitor of
        the channel (tests/real_asterisk/test_asterisk_facts.py). So it is always sent: another
        recording of the channel (a supervisor's) keeps its audio. AMIError ``No such channel``,
        or ``Cannot set mute flag`` when no MixMonitor with that id runs there.
        """
        if direction not in MUTE_DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(MUTE_DIRECTIONS)}, not {direction!r}")
        await self.action(
            "MixMonitorMute",
            Channel=channel,
            Direction=direction,
            State="1" if state else "0",
            MixMonitorID=mixmonitor_id,
        )

    async def _request(self, name: str, fields: dict[str, Any], *, is_list: bool) -> Any:
        if not self._connected or self._writer is None:
            raise AMIUnavailable(self._unavailable_reason())
        action_id = f"{self._id_prefix}-{next(self._ids)}"
        data = format_action(name, action_id, fields)
        pending = _Pending(name, asyncio.get_running_loop().create_future(), is_list)
        self._pending[action_id] = pending
        try:
            async with asyncio.timeout(self.action_timeout):
                self._writer.write(data)
                await self._writer.drain()
                return await pending.future
        except TimeoutError:
            raise AMITimeout(f"{name}: no answer from Asterisk within {self.action_timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise AMIUnavailable(f"{name}: AMI connection lost ({exc.__class__.__name__})") from None
        finally:
            self._pending.pop(action_id, None)

    def _unavailable_reason(self) -> str:
        if self._refused is not None:
            return f"AMI login to {self.address} as {self.username!r} was refused: {self._refused}"
        if self._runner is None:
            return f"AMI client for {self.address} is not running"
        return f"AMI at {self.address} is not connected (reconnecting in the background)"

    # --- the connection ---

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._session()
                reason = "closed by Asterisk"
            except AMILoginRefused as exc:
                await self._drop(AMIUnavailable(f"AMI login to {self.address} refused"))
                self._refuse(exc)
                if self._stopping:
                    return
                await asyncio.sleep(self._refused_retry)
                continue
            except (OSError, TimeoutError, AMIFailure) as exc:
                reason = _describe(exc)
            except Exception as exc:  # a bug here must not silently end the reconnecting
                log.exception("AMI connection to %s failed unexpectedly", self.address)
                reason = _describe(exc)
            finally:
                await self._drop(AMIUnavailable(f"AMI connection to {self.address} lost before Asterisk answered"))
            if self._stopping:
                return
            if self._was_up:
                delay = self._backoff[0]
            self._report_down(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _session(self) -> None:
        """One connection: connect, banner, login, then read until it ends."""
        async with asyncio.timeout(self.connect_timeout):
            reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
            line = await reader.readline()
        self.version = parse_banner(line)
        await self._login(reader)
        self._report_up()
        self._refused = None
        self._connected = True
        self._ready.set()
        for hook in self._connect_hooks:
            self._call(hook)
        read = 0
        while (message := await read_message(reader)) is not None:
            self._dispatch(message)
            read += 1
            if read % YIELD_EVERY == 0:
                # NOTE: a socket read brings many messages at once, and reading them from the
                # buffer never waits: without this, a burst of events (a busy PBX, a
                # reconnection) would hold the event loop, and every call with it, until parsed.
                await asyncio.sleep(0)

    async def _login(self, reader: asyncio.StreamReader) -> None:
        """Logs in with events on; raises AMILoginRefused when Asterisk says no."""
        action_id = f"{self._id_prefix}-{next(self._ids)}"
        fields = {"Username": self.username, "Secret": self._secret, "Events": "on"}
        self._writer.write(format_action("Login", action_id, fields))
        async with asyncio.timeout(self.action_timeout):
            await self._writer.drain()
            while (reply := await read_message(reader)) is not None:
                if reply.get("ActionID") != action_id:
                    continue  # NOTE: nothing else is expected before the answer; skip it
                if reply.get("Response") != "Success":
                    raise AMILoginRefused(reply.get("Message", "login refused"), reply, "Login")
                return
        raise AMIProtocolError("connection closed during login")

    def _dispatch(self, message: Message) -> None:
        pending = self._pending.get(message.get("ActionID", ""))
        if "Response" in message:
            if pending is not None:
                pending.on_response(message)
            else:  # an answer after its action timed out
                log.debug("AMI answer for an action no longer waiting (%s) dropped", message.get("ActionID"))
        elif "Event" in message:
            if pending is not None and pending.collecting:
                pending.on_event(message)
            else:
                for callback in list(self._subscribers):
                    self._call(callback, dict(message))

    def _call(self, callback: Callable, *args: Any) -> None:
        """Runs a subscriber or hook; a coroutine becomes its own task. Failures are logged,
        never allowed to stop the reader."""
        try:
            result = callback(*args)
        except Exception:
            log.exception("AMI callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("AMI callback task failed", exc_info=task.exception())

    async def _drop(self, error: AMIFailure) -> None:
        """Forgets the connection: closes it and fails every waiting action with ``error``."""
        self._connected = False
        if self._ready is not None and self._refused is None:
            self._ready.clear()
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, TimeoutError):
                pass  # already gone

    def _refuse(self, exc: AMILoginRefused) -> None:
        first = self._refused is None
        self._refused = exc
        self._ready.set()
        if first:
            log.error(
                "AMI login to %s as %r refused: %s; retrying every %gs (check the AMI user and secret)",
                self.address, self.username, exc, self._refused_retry,
            )

    def _report_up(self) -> None:
        if self._down_reported:
            log.info("AMI connection to %s restored", self.address)
        else:
            log.info("AMI connected to %s as %r (manager %s)", self.address, self.username, self.version)
        self._was_up, self._down_reported = True, False

    def _report_down(self, reason: str) -> None:
        if self._down_reported:
            return
        if self._was_up:
            log.warning("AMI connection to %s lost (%s); reconnecting in the background", self.address, reason)
        else:
            log.warning("AMI at %s not reachable (%s); retrying in the background", self.address, reason)
        self._was_up, self._down_reported = False, True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
