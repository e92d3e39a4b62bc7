"""The test harness's own AMI connection to the real Asterisk: a blocking client with a reader
thread, independent of the product's client (a test of the product must not read Asterisk
through the code under test). Answers are matched by ActionID; every event is kept, so a test
can wait for the one it expects, with a bounded wait."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Callable

Message = dict[str, str]


class ManagerError(Exception):
    """Asterisk answered ``Response: Error``; ``reply`` is the whole answer."""

    def __init__(self, reply: Message):
        super().__init__(reply.get("Message", "error"))
        self.reply = reply


class Manager:
    def __init__(self, port: int, username: str, secret: str, host: str = "127.0.0.1", timeout: float = 10.0):
        self.timeout = timeout
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")
        self.banner = self._file.readline().decode().strip()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        # NOTE: tests act from several threads at once (tests/real_asterisk/test_following.py):
        # one action's bytes must not interleave with another's.
        self._sending = threading.Lock()
        self._answers: dict[str, Message] = {}
        self._lists: dict[str, list[Message]] = {}
        self.events: list[Message] = []
        self._received: dict[int, float] = {}  # id(event) -> when it arrived (time.time())
        self._closed = False
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="test-ami", daemon=True)
        self._reader.start()
        self.action("Login", Username=username, Secret=secret, Events="on")

    def close(self) -> None:
        try:
            self.action("Logoff", timeout=2)
        except Exception:  # closing anyway: Asterisk may be gone already
            pass
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    # -- actions ---------------------------------------------------------------------------

    def action(self, name: str, timeout: float | None = None, **fields) -> Message:
        """Sends one action; its answer, or ManagerError for ``Response: Error``."""
        action_id = self._send(name, fields)
        reply = self._wait(lambda: self._answers.pop(action_id, None), timeout, f"answer to {name}")
        if reply.get("Response") == "Error":
            raise ManagerError(reply)
        return reply

    def list_action(self, name: str, timeout: float | None = None, **fields) -> list[Message]:
        """Sends a list action; the events up to its ``...Complete`` event (excluded)."""
        action_id = self._send(name, fields, listing=True)
        reply = self._wait(lambda: self._answers.pop(action_id, None), timeout, f"answer to {name}")
        if reply.get("Response") == "Error":
            raise ManagerError(reply)
        items = self._wait(lambda: self._complete(action_id), timeout, f"the events of {name}")
        return items

    def command(self, line: str) -> str:
        """A CLI command over AMI (``Action: Command``); its output."""
        reply = self.action("Command", Command=line)
        return reply.get("Output", "")

    def getvar(self, channel: str, variable: str) -> str:
        return self.action("Getvar", Channel=channel, Variable=variable).get("Value", "")

    # -- events ----------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the event stream, for :meth:`wait_event` ``after``."""
        with self._cond:
            return len(self.events)

    def wait_event(self, match: Callable[[Message], bool] | dict, timeout: float | None = None,
                   after: int = 0, what: str = "") -> Message:
        """The first event (from position ``after``) that ``match`` accepts (a dict: all its
        fields equal); AssertionError when none comes within ``timeout``."""
        accept = match if callable(match) else (lambda e: all(e.get(k) == v for k, v in match.items()))

        def find():
            for event in self.events[after:]:
                if accept(event):
                    return event
            return None

        return self._wait(find, timeout, what or f"an AMI event {match}")

    def received_at(self, event: Message) -> float:
        """When ``event`` (one of :attr:`events`) arrived, in ``time.time()`` seconds."""
        return self._received[id(event)]

    def find_events(self, match: dict, after: int = 0) -> list[Message]:
        with self._cond:
            return [e for e in self.events[after:] if all(e.get(k) == v for k, v in match.items())]

    # -- the wire --------------------------------------------------------------------------

    def _send(self, name: str, fields: dict, listing: bool = False) -> str:
        action_id = f"t{next(self._ids)}"
        if listing:
            # NOTE: before sending: the list's events may arrive before this thread runs again.
            with self._cond:
                self._lists[action_id] = []
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        for key, value in fields.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                lines.append(f"{key}: {item}")
        with self._sending:
            self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return action_id

    def _wait(self, probe, timeout: float | None, what: str):
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                found = probe()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise AssertionError(f"not within {timeout or self.timeout}s: {what}")
                self._cond.wait(min(left, 0.5))

    def _complete(self, action_id: str):
        items = self._lists.get(action_id, [])
        if items and items[-1].get("EventList") == "Complete":
            del self._lists[action_id]
            return items[:-1]
        return None

    def _read(self) -> None:
        message: Message = {}
        try:
            for raw in self._file:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    key, _, value = line.partition(":")
                    key, value = key.strip(), value.lstrip(" ")
                    message[key] = f"{message[key]}\n{value}" if key in message else value
                    continue
                if message:
                    self._dispatch(message)
                    message = {}
        except (OSError, ValueError):
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _dispatch(self, message: Message) -> None:
        with self._cond:
            action_id = message.get("ActionID", "")
            if "Response" in message and action_id:
                self._answers[action_id] = message
            elif "Event" in message and action_id in self._lists:
                self._lists[action_id].append(message)
            elif "Event" in message:
                self._received[id(message)] = time.time()
                self.events.append(message)
            self._cond.notify_all()
