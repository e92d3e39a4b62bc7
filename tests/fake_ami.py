"""A fake Asterisk 22 manager interface (AMI) on a real loopback socket, for tests.

It answers as the capture in ``../shared/asterisk/ami-exchange.txt`` shows and as
app_mixmonitor.c / manager.c answer: the banner ``Asterisk Call Manager/11.0.0``, CRLF line ends,
``ActionID`` echoed, fields in Asterisk's order. Login is checked (a wrong secret gets
``Authentication failed`` and the connection closed, as Asterisk does, optionally after its
one-second sleep); actions before Login get ``Permission denied``. Known actions: Login, Logoff,
Ping, CoreSettings, CoreShowChannels, MixMonitor (``i(VAR)`` sets VAR and answers
``MixMonitorID``), StopMixMonitor (by id, or the latest), MixMonitorMute (by id, or all), Getvar; anything else
gets ``Invalid/unknown command: X. Use Action: ListCommands to show available commands.``

The test drives it from its own thread: channels to add and hang up, events to send to the
sessions that logged in with events on, stalls (actions recorded, never answered), answers in
random order, dropped connections, and stop()/start()/restart() on the same port. Everything it
received is recorded, so tests assert from the peer's side of the socket. It runs on its own
asyncio loop in a background thread and imports nothing from the project.

It also replays a captured scenario (``../shared/asterisk/transfers``, read by
tests/capture_files.py): ``replay(events)`` gives the events new unique ids, Linkedids, bridge
ids and channel names (``rewrite_ids``), so that several replays, or the same one twice, are
calls of their own; sends them in order to every session with events on; and keeps its channel
table as the events say (Newchannel adds, BridgeEnter/Leave set the bridge, Hangup removes), so
MixMonitor, Getvar and CoreShowChannels find the replayed channels mid-call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import quote

BANNER = "Asterisk Call Manager/11.0.0"
UNKNOWN_COMMAND = "Invalid/unknown command: {}. Use Action: ListCommands to show available commands."
MUTE_DIRECTION_ERROR = "Must be read, write or both"
_FALSE = {"no", "false", "n", "f", "0", "off"}  # what ast_false() accepts
_UID_OPTION = re.compile(r"i\(([^)]*)\)")
_mixmonitor_ids = itertools.count(0x7FCD9C00A580, 0x40)
_unique = itertools.count(20)
_ids_lock = threading.Lock()

Pairs = list[tuple[str, str]]
_replays = itertools.count(1)
# The fields that name a channel, a call or a bridge (their values are rewritten by rewrite_ids).
_ID_SUFFIXES = ("Uniqueid", "Linkedid", "Channel")
_ID_KEYS = ("Newname", "DestUniqueId", "SwapUniqueid")


def new_unique_id() -> str:
    with _ids_lock:
        return f"1795825873.{next(_unique)}"


def _new_mixmonitor_id() -> str:
    with _ids_lock:
        return f"0x{next(_mixmonitor_ids):x}"


@dataclass
class FakeMixMonitor:
    id: str
    file: str
    options: str
    running: bool = True
    muted_read: bool = False
    muted_write: bool = False


@dataclass
class FakeChannel:
    """A live channel as CoreShowChannels and the MixMonitor actions see it."""

    name: str
    uniqueid: str = field(default_factory=new_unique_id)
    linkedid: str = ""
    bridge_id: str = ""
    application: str = "Echo"
    application_data: str = ""
    context: str = "acceptance"
    exten: str = "104"
    priority: int = 1
    state: int = 6
    state_desc: str = "Up"
    caller_id_num: str = "<unknown>"
    caller_id_name: str = "<unknown>"
    connected_line_num: str = "<unknown>"
    connected_line_name: str = "<unknown>"
    language: str = "en"
    account_code: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    mixmonitors: list[FakeMixMonitor] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.linkedid = self.linkedid or self.uniqueid

    def event_fields(self) -> list[tuple[str, str]]:
        """The channel's fields as every channel event carries them."""
        return [("Channel", self.name), ("ChannelState", str(self.state)), ("ChannelStateDesc", self.state_desc),
                ("CallerIDNum", self.caller_id_num), ("CallerIDName", self.caller_id_name),
                ("ConnectedLineNum", self.connected_line_num), ("ConnectedLineName", self.connected_line_name),
                ("Language", self.language), ("AccountCode", self.account_code), ("Context", self.context),
                ("Exten", self.exten), ("Priority", str(self.priority)), ("Uniqueid", self.uniqueid),
                ("Linkedid", self.linkedid)]

    @property
    def running(self) -> list[FakeMixMonitor]:
        return [m for m in self.mixmonitors if m.running]

    def snapshot(self) -> Pairs:
        """The channel's fields, in the order of Asterisk's channel snapshot lines."""
        return [
            ("Channel", self.name),
            ("ChannelState", str(self.state)),
            ("ChannelStateDesc", self.state_desc),
            ("CallerIDNum", self.caller_id_num),
            ("CallerIDName", self.caller_id_name),
            ("ConnectedLineNum", self.connected_line_num),
            ("ConnectedLineName", self.connected_line_name),
            ("Language", self.language),
            ("AccountCode", self.account_code),
            ("Context", self.context),
            ("Exten", self.exten),
            ("Priority", str(self.priority)),
            ("Uniqueid", self.uniqueid),
            ("Linkedid", self.linkedid),
        ]

    def show_fields(self) -> Pairs:
        """The fields of its ``CoreShowChannel`` event, as in the capture."""
        seconds = int(time.monotonic() - self.started)
        duration = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        return self.snapshot() + [
            ("Application", self.application),
            ("ApplicationData", self.application_data),
            ("Duration", duration),
            ("BridgeId", self.bridge_id),
        ]


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    logged_in: bool = False
    events: bool = False


class FakeAMI:
    """See the module docstring. ``start()`` binds 127.0.0.1 on a free port the first time
    and the same port on every later start, so a client can reconnect to it."""

    def __init__(
        self,
        username: str = "recording",
        secret: str = "s3cret",
        *,
        banner: str = BANNER,
        login_failure_delay: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.username, self.secret, self.banner = username, secret, banner
        # asterisk.conf's systemname, as CoreSettings tells it ('' when none is set).
        self.system_name = ""
        # NOTE: real Asterisk sleeps 1 s before refusing a login; 0 keeps tests fast.
        self.login_failure_delay = login_failure_delay
        self.host, self.port = host, 0
        self.channels: dict[str, FakeChannel] = {}
        self.global_variables: dict[str, str] = {}
        self.actions: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self.replied: list[str] = []
        self.connections = 0
        self._lock = threading.RLock()
        self._stalled: set[str] | None = set()
        self._reorder = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        self._handlers: set[asyncio.Task] = set()  # one per connection, run by asyncio's server
        self._tasks: set[asyncio.Task] = set()  # answers delayed by reorder()

    # --- lifecycle, from the test's thread ---

    def start(self) -> FakeAMI:
        if self._thread is not None:
            raise RuntimeError("the fake AMI is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run_loop, args=(ready, failure), daemon=True)
        self._thread.start()
        ready.wait(5)
        if failure:
            self._thread.join(5)
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, as an Asterisk that goes away."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = self._loop = self._server = None

    def restart(self, *, keep_channels: bool = False) -> None:
        """stop() then start() on the same port; like a real restart, channels are gone
        unless ``keep_channels``."""
        self.stop()
        if not keep_channels:
            with self._lock:
                self.channels.clear()
        self.start()

    def __enter__(self) -> FakeAMI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def url(self) -> str:
        return f"ami://{quote(self.username, safe='')}:{quote(self.secret, safe='')}@{self.host}:{self.port}"

    # --- what the test controls ---

    def add_channel(self, name: str, **fields: object) -> FakeChannel:
        """A live channel; keyword fields are FakeChannel's (uniqueid, bridge_id, ...)."""
        channel = FakeChannel(name, **fields)
        with self._lock:
            self.channels[name] = channel
        return channel

    def remove_channel(self, name: str) -> FakeChannel | None:
        with self._lock:
            return self.channels.pop(name, None)

    def channel(self, name: str) -> FakeChannel:
        with self._lock:
            return self.channels[name]

    def hangup(self, name: str, cause: int = 16, cause_txt: str = "Normal Clearing") -> int:
        """Removes the channel and sends ``Event: Hangup`` to the sessions with events on;
        returns how many sessions it went to."""
        channel = self.remove_channel(name)
        if channel is None:
            raise KeyError(name)
        fields = channel.snapshot() + [("Cause", str(cause)), ("Cause-txt", cause_txt)]
        return self.emit_event("Hangup", fields, privilege="call,all")

    def emit_event(self, name: str, fields: Iterable[tuple[str, str]] | dict[str, str] = (),
                   *, privilege: str = "call,all") -> int:
        """Sends ``Event: name`` with ``Privilege`` and the fields to every session that logged
        in with events on; returns how many sessions it went to."""
        pairs = list(fields.items()) if isinstance(fields, dict) else list(fields)
        pairs = [("Event", name), ("Privilege", privilege)] + pairs
        return self._in_loop(lambda: self._broadcast(pairs))

    def replay(self, events: Iterable[tuple[float, dict[str, str]] | dict[str, str]], *,
               tag: str | None = None) -> Replay:
        """A replay of ``events`` (``(time, event)`` pairs as tests/capture_files.py reads
        them, or bare event dicts) with its ids rewritten by ``rewrite_ids`` under ``tag``
        (a fresh ``r<N>`` by default). Nothing is sent until its ``play()``."""
        tag = tag or f"r{next(_replays)}"
        timed = [item if isinstance(item, tuple) else (0.0, item) for item in events]
        mapping = id_mapping([event for _, event in timed], tag)
        return Replay(self, [(at, rewrite_event(event, mapping)) for at, event in timed], mapping)

    def _play(self, events: list[dict[str, str]]) -> int:
        """Sends the events in order (one loop turn, so nothing of the test's comes between
        two of them) and keeps the channel table; returns how many sessions got them."""

        def send() -> int:
            sessions = 0
            for event in events:
                with self._lock:
                    self._follow(event)
                pairs = [(key, line) for key, value in event.items() for line in value.split("\n")]
                sessions = self._broadcast(pairs)
            return sessions

        return self._in_loop(send)

    def _follow(self, event: dict[str, str]) -> None:
        """The channel table as a replayed event leaves it (called under the lock)."""
        name, uniqueid = event.get("Channel", ""), event.get("Uniqueid", "")
        kind = event.get("Event")
        channel = self.channels.get(name)
        if kind == "Newchannel" and name and channel is None:
            self.channels[name] = FakeChannel(name, uniqueid=uniqueid, linkedid=event.get("Linkedid", ""),
                                              context=event.get("Context", ""), exten=event.get("Exten", ""))
        elif channel is None:
            return
        elif kind == "Hangup":
            del self.channels[name]
        elif kind == "Rename" and event.get("Newname"):
            self.channels[event["Newname"]] = self.channels.pop(name)
            self.channels[event["Newname"]].name = event["Newname"]
        elif kind == "BridgeEnter":
            channel.bridge_id = event.get("BridgeUniqueid", "")
        elif kind == "BridgeLeave":
            channel.bridge_id = ""
        elif kind == "Newexten":
            channel.context, channel.exten = event.get("Context", ""), event.get("Exten", "")
            channel.application, channel.application_data = event.get("Application", ""), event.get("AppData", "")
        if channel is not None and event.get("Linkedid") and kind != "Hangup":
            self.channels.get(name, channel).linkedid = event["Linkedid"]

    def drop_connections(self) -> int:
        """Closes every client connection but keeps listening (a network drop)."""
        return self._in_loop(self._close_sessions)

    def stall(self, *actions: str) -> None:
        """From now on the named actions (all of them if none is named) are recorded and
        never answered."""
        with self._lock:
            self._stalled = None if not actions else {a.lower() for a in actions}

    def unstall(self) -> None:
        with self._lock:
            self._stalled = set()

    def reorder(self, enabled: bool = True) -> None:
        """Answers each action after a random delay of up to 20 ms, so answers overtake each
        other (Login and Logoff excepted)."""
        self._reorder = enabled

    def received(self, action: str | None = None) -> list[dict[str, str]]:
        """The actions received so far (every connection), optionally only one kind."""
        with self._lock:
            return [dict(a) for a in self.actions if action is None or a.get("Action", "").lower() == action.lower()]

    @property
    def sessions(self) -> int:
        """Connections open now."""
        return len(self._sessions)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # --- the loop thread ---

    def _run_loop(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    def _in_loop(self, func: Callable[[], int]) -> int:
        if self._loop is None:
            raise RuntimeError("the fake AMI is not running")

        async def call() -> int:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # NOTE: a closed connection ends its handler (its reader sees EOF); cancelling the
        # handler instead makes asyncio's stream callback log the CancelledError.
        self._close_sessions()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2)
        await self._server.wait_closed()

    def _close_sessions(self) -> int:
        sessions = list(self._sessions)
        for session in sessions:
            session.writer.close()
        return len(sessions)

    def _broadcast(self, pairs: Pairs) -> int:
        targets = [s for s in self._sessions if s.logged_in and s.events and not s.writer.is_closing()]
        for session in targets:
            self._send(session, pairs)
        return len(targets)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        task = asyncio.current_task()
        self._handlers.add(task)
        self._sessions.add(session)
        with self._lock:
            self.connections += 1
        try:
            writer.write(f"{self.banner}\r\n".encode())
            while (message := await _read_message(reader, self)) is not None:
                if not await self._handle(session, message):
                    break
        except (ConnectionError, ValueError):
            pass  # the client went away, or sent a line longer than the reader's limit
        finally:
            self._sessions.discard(session)
            self._handlers.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _handle(self, session: _Session, message: dict[str, str]) -> bool:
        """Answers one action; False when the connection must close after it."""
        name = message.get("Action", "").lower()
        with self._lock:
            self.actions.append(dict(message))
            stalled = self._stalled is None or name in self._stalled
        if stalled:
            return True
        if self._reorder and name not in ("login", "logoff"):
            task = asyncio.create_task(self._answer_later(session, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        return await self._answer(session, message)

    async def _answer_later(self, session: _Session, message: dict[str, str]) -> None:
        await asyncio.sleep(random.uniform(0, 0.02))
        if not session.writer.is_closing():
            await self._answer(session, message)

    async def _answer(self, session: _Session, message: dict[str, str]) -> bool:
        name = message.get("Action", "")
        aid = message.get("ActionID")
        if not name:
            self._respond(session, aid, "Error", "Missing action in request")
            return True
        if name.lower() == "login":
            return await self._login(session, message, aid)
        if name.lower() == "logoff":
            self._respond(session, aid, "Goodbye", "Thanks for all the fish.")
            return False
        if not session.logged_in:
            self._respond(session, aid, "Error", "Permission denied")
            return True
        handler = getattr(self, f"_action_{name.lower()}", None)
        if handler is None:
            self._respond(session, aid, "Error", UNKNOWN_COMMAND.format(name))
        else:
            handler(session, message, aid)
        return True

    async def _login(self, session: _Session, message: dict[str, str], aid: str | None) -> bool:
        user, secret = message.get("Username", ""), message.get("Secret", "")
        if user.lower() != self.username.lower() or secret != self.secret:
            await asyncio.sleep(self.login_failure_delay)
            self._respond(session, aid, "Error", "Authentication failed")
            return False
        session.logged_in = True
        session.events = message.get("Events", "on").strip().lower() not in _FALSE
        self._respond(session, aid, "Success", "Authentication accepted")
        if session.events:
            self._send(session, [("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", "5"),
                                 ("LastReload", "5"), ("Status", "Fully Booted")])
        return True

    # --- the actions, each answering as Asterisk 22 does ---

    def _action_ping(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        self._respond(session, aid, "Success", None, [("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")])

    def _action_coresettings(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        self._respond(session, aid, "Success", None, [
            ("AMIversion", self.banner.rpartition("/")[2]), ("AsteriskVersion", "22.10.1"), ("SystemName", self.system_name),
            ("CoreMaxCalls", "0"), ("CoreMaxLoadAvg", "0.000000"), ("CoreRunUser", "root"),
            ("CoreRunGroup", "root"), ("CoreMaxFilehandles", "0"), ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "Yes"), ("CoreHTTPenabled", "No"), ("SoundsSearchCustomDir", "No"),
        ])

    def _action_coreshowchannels(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        with self._lock:
            items = [channel.show_fields() for channel in self.channels.values()]
        self._send(session, _with_id([("Response", "Success")], aid)
                   + [("EventList", "start"), ("Message", "Channels will follow")])
        for fields in items:
            self._send(session, _with_id([("Event", "CoreShowChannel")], aid) + fields)
        self._send(session, _with_id([("Event", "CoreShowChannelsComplete")], aid)
                   + [("EventList", "Complete"), ("ListItems", str(len(items)))])

    def _action_mixmonitor(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        channel = self._find_channel(session, message, aid)
        if channel is None:
            return
        options = message.get("Options", "")
        # NOTE: manager_mixmonitor joins File, Options and Command with commas and MixMonitor
        # parses that as its data (app_mixmonitor.c): the file comes back unescaped.
        from tests.fake_asterisk import separate_args

        joined = f"{message.get('File', '')},{options},{message.get('Command', '')}"
        monitor = FakeMixMonitor(_new_mixmonitor_id(), separate_args(joined, ",", 3)[0], options)
        variable = _UID_OPTION.search(options)
        with self._lock:
            channel.mixmonitors.append(monitor)
            if variable and variable.group(1):
                channel.variables[variable.group(1)] = monitor.id
        extra = [("MixMonitorID", monitor.id)] if variable and variable.group(1) else []
        self._respond(session, aid, "Success", None, extra)
        # NOTE: then what every session with events hears (ami-events-mixmonitor-ext393): the
        # VarSets of MIXMONITOR_FILENAME and of the i() variable, and MixMonitorStart.
        sets = [("MIXMONITOR_FILENAME", monitor.file)] + ([(variable.group(1), monitor.id)] if extra else [])
        for name, value in sets:
            self._broadcast([("Event", "VarSet"), ("Privilege", "dialplan,all"), *channel.event_fields(),
                             ("Variable", name), ("Value", value)])
        self._broadcast([("Event", "MixMonitorStart"), ("Privilege", "call,all"), *channel.event_fields()])

    def _action_stopmixmonitor(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        channel = self._find_channel(session, message, aid)
        if channel is None:
            return
        wanted = message.get("MixMonitorID", "")
        with self._lock:
            running = channel.running
            # NOTE: without an id Asterisk stops the most recently started one only.
            target = next((m for m in running if m.id == wanted), None) if wanted else (running or [None])[-1]
            if target is not None:
                target.running = False
        if target is None:
            self._respond(session, aid, "Error", "Could not stop monitoring channel")
        else:
            self._respond(session, aid, "Success")

    def _action_mixmonitormute(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        direction = message.get("Direction", "").lower()
        if not direction:
            return self._respond(session, aid, "Error", f"No direction specified. {MUTE_DIRECTION_ERROR}")
        if direction not in ("read", "write", "both"):
            return self._respond(session, aid, "Error", f"Invalid direction specified. {MUTE_DIRECTION_ERROR}")
        if not message.get("Channel"):
            return self._respond(session, aid, "Error", "No channel specified")
        state = message.get("State", "")
        if not state:
            return self._respond(session, aid, "Error", "No state specified")
        channel = self._find_channel(session, message, aid)
        if channel is None:
            return None
        muted = state.strip().lower() not in _FALSE
        wanted = message.get("MixMonitorID", "")
        with self._lock:
            # NOTE: as Asterisk 22 does (tests/real_asterisk/test_asterisk_facts.py): with a
            # MixMonitorID exactly that MixMonitor, without one every MixMonitor of the channel.
            targets = [m for m in channel.running if m.id == wanted] if wanted else list(channel.running)
            for target in targets:
                target.muted_read = muted if direction in ("read", "both") else target.muted_read
                target.muted_write = muted if direction in ("write", "both") else target.muted_write
        if not targets:
            return self._respond(session, aid, "Error", "Cannot set mute flag")
        return self._respond(session, aid, "Success")

    def _action_getvar(self, session: _Session, message: dict[str, str], aid: str | None) -> None:
        variable = message.get("Variable", "")
        if not variable:
            return self._respond(session, aid, "Error", "No variable specified")
        if message.get("Channel"):
            channel = self._find_channel(session, message, aid)
            if channel is None:
                return None
            with self._lock:
                value = channel.variables.get(variable, "")
        else:
            value = self.global_variables.get(variable, "")
        return self._respond(session, aid, "Success", None, [("Variable", variable), ("Value", value)])

    # --- helpers ---

    def _find_channel(self, session: _Session, message: dict[str, str], aid: str | None) -> FakeChannel | None:
        name = message.get("Channel", "")
        if not name:
            self._respond(session, aid, "Error", "No channel specified")
            return None
        with self._lock:
            channel = self.channels.get(name)
        if channel is None:
            self._respond(session, aid, "Error", "No such channel")
        return channel

    def _respond(self, session: _Session, aid: str | None, response: str, text: str | None = None,
                 extra: Pairs = ()) -> None:
        pairs = _with_id([("Response", response)], aid)
        if text is not None:
            pairs.append(("Message", text))
        self._send(session, pairs + list(extra))
        if aid is not None:
            with self._lock:
                self.replied.append(aid)

    def _send(self, session: _Session, pairs: Pairs) -> None:
        data = "".join(f"{key}: {value}\r\n" for key, value in pairs) + "\r\n"
        session.writer.write(data.encode())


@dataclass
class Replay:
    """A scenario being replayed by a FakeAMI (see FakeAMI.replay). ``events`` are the
    rewritten ``(time, event)`` pairs, ``ids`` maps each original id and channel name to its
    rewritten one (``replay.ids["Local/s1@capx-in-00000082;2"]``), ``position`` counts the
    events sent so far."""

    fake: FakeAMI
    events: list[tuple[float, dict[str, str]]]
    ids: dict[str, str]
    position: int = 0

    def play(self, until: float | None = None) -> int:
        """Sends the events not sent yet whose time is at most ``until`` (all of them by
        default), in order; returns how many were sent."""
        end = self.position
        while end < len(self.events) and (until is None or self.events[end][0] <= until):
            end += 1
        batch = [event for _, event in self.events[self.position:end]]
        if batch:
            self.fake._play(batch)
        self.position = end
        return len(batch)

    @property
    def done(self) -> bool:
        return self.position >= len(self.events)


def id_mapping(events: Iterable[dict[str, str]], tag: str) -> dict[str, str]:
    """New names for every id the events carry, so that a replay under ``tag`` is a call of
    its own: a unique id or Linkedid ``1796434729.260`` becomes ``<tag>-1796434729.260`` (the
    ``system-epoch.sequence`` form Asterisk gives them when a system name is set), a bridge id
    is prefixed the same way, and a channel name gets the tag before its sequence number
    (``Local/410@capx-agents-00000083;1`` becomes ``Local/410@capx-agents-<tag>00000083;1``),
    so its extension is unchanged. ``tag`` must be letters and digits."""
    if not tag.isalnum():
        raise ValueError("a replay tag is letters and digits only")
    mapping: dict[str, str] = {}
    for event in events:
        for key, value in event.items():
            if not value or key in ("Event", "Privilege"):
                continue
            if key.endswith("Channel") or key == "Newname":
                if "-" in value:
                    head, _, tail = value.rpartition("-")
                    mapping[value] = f"{head}-{tag}{tail}"
            elif key.endswith(_ID_SUFFIXES) or key in _ID_KEYS:
                mapping[value] = f"{tag}-{value}"
    return mapping


def rewrite_event(event: dict[str, str], mapping: dict[str, str]) -> dict[str, str]:
    """The event with every known id or channel name in its values replaced (whole tokens
    only, also inside other values such as a VarSet of BRIDGEPEER)."""
    if not mapping:
        return dict(event)
    pattern = _token_pattern(tuple(sorted(mapping, key=len, reverse=True)))
    return {key: value if key in ("Event", "Privilege") else pattern.sub(lambda m: mapping[m.group(0)], value)
            for key, value in event.items()}


def rewrite_ids(events: Iterable[tuple[float, dict[str, str]]], tag: str) -> list[tuple[float, dict[str, str]]]:
    """``(time, event)`` pairs with their ids rewritten under ``tag`` (see id_mapping)."""
    timed = list(events)
    mapping = id_mapping([event for _, event in timed], tag)
    return [(at, rewrite_event(event, mapping)) for at, event in timed]


_patterns: dict[tuple[str, ...], re.Pattern] = {}


def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    pattern = _patterns.get(tokens)
    if pattern is None:
        alternatives = "|".join(re.escape(token) for token in tokens)
        pattern = _patterns[tokens] = re.compile(rf"(?<![\w.])(?:{alternatives})(?![\w.])")
        if len(_patterns) > 64:
            _patterns.pop(next(iter(_patterns)))
    return pattern


def _with_id(pairs: Pairs, aid: str | None) -> Pairs:
    return pairs + [("ActionID", aid)] if aid is not None else pairs


async def _read_message(reader: asyncio.StreamReader, fake: FakeAMI) -> dict[str, str] | None:
    """One action as a dict; as astman_get_header() does, the first of repeated keys wins."""
    message: dict[str, str] = {}
    raw = b""
    while True:
        line = await reader.readline()
        if not line:
            return None
        raw += line
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if message:
                with fake._lock:
                    fake.raw.append(raw)
                return message
            raw = b""
            continue
        key, _, value = text.partition(":")
        message.setdefault(key.strip(), value.lstrip(" \t"))
