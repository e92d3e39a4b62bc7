"""One timer for every session of a server.

Each wait of a session (the environment, a reply, the close) and the session as a whole have a
deadline of seconds. Giving each wait its own ``asyncio.timeout`` costs a timer handle, a heap
push and a cancel per command, which at thousands of sessions a second was a tenth of the
server's CPU. Here a session only writes its deadlines into its :class:`Watch`; one task looks
at every watch ten times a second and cancels the sessions past due, saying why in
``Watch.expired``. Deadlines are kept to within that tick.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, TypeVar

T = TypeVar("T")


class Watch:
    """The deadlines of one session's task. ``deadline`` bounds the whole session (deferred
    while ``held``); ``wait_deadline`` bounds the current wait, for ``wait_reason``."""

    __slots__ = ("task", "deadline", "wait_deadline", "wait_reason", "held", "expired")

    def __init__(self, task: asyncio.Task, deadline: float):
        self.task = task
        self.deadline = deadline
        self.wait_deadline: float | None = None
        self.wait_reason = ""
        self.held = 0
        self.expired: str | None = None

    def waiting(self, seconds: float, reason: str) -> None:
        self.wait_deadline = time.monotonic() + seconds
        self.wait_reason = reason

    def done_waiting(self) -> None:
        self.wait_deadline = None

    def bounded(self, seconds: float, reason: str) -> "Watch":
        """``with watch.bounded(seconds, reason):`` around one wait: raises TimeoutError when
        the watchdog ended it. (A plain context manager, not a coroutine around the wait:
        this runs for every command a session sends.)"""
        self.waiting(seconds, reason)
        return self

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        self.done_waiting()
        if kind is asyncio.CancelledError and self.claim(self.wait_reason):
            raise TimeoutError from None
        return False

    def claim(self, reason: str) -> bool:
        """True if the task was cancelled by this watch for ``reason``; the cancellation is
        then taken back, so that the task can go on (to report, to close)."""
        if self.expired != reason:
            return False
        self.expired = None
        self.task.uncancel()
        return True

    def hold(self) -> "_Held":
        """Defers the session deadline (not the waits' own) until the block ends: work that
        must finish once begun, such as writing the leg of a recording already started."""
        return _Held(self)

    def check(self, now: float) -> None:
        if self.expired is not None or self.task.done():
            return
        if self.wait_deadline is not None and now >= self.wait_deadline:
            self.expired = self.wait_reason
            self.task.cancel()
        elif now >= self.deadline and not self.held:
            self.expired = "session"
            self.task.cancel()


class _Held:
    """``with watch.hold():`` (a class: it runs twice per session)."""

    __slots__ = ("_watch",)

    def __init__(self, watch: Watch):
        self._watch = watch

    def __enter__(self) -> None:
        self._watch.held += 1

    def __exit__(self, *exc) -> bool:
        self._watch.held -= 1
        return False


class Watchdog:
    def __init__(self, tick: float = 0.1):
        self.tick = tick
        self._watches: set[Watch] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agi-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def watch(self, task: asyncio.Task, seconds: float) -> Watch:
        watch = Watch(task, time.monotonic() + seconds)
        self._watches.add(watch)
        return watch

    def forget(self, watch: Watch) -> None:
        self._watches.discard(watch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            for watch in list(self._watches):
                watch.check(now)


async def within(watch: Watch | None, seconds: float, waiting: Awaitable[T], reason: str) -> T:
    """Awaits ``waiting`` for at most ``seconds``, raising TimeoutError past them: through the
    watch when there is one (``reason`` says which wait it was), else with its own timer."""
    if watch is None:
        async with asyncio.timeout(seconds):
            return await waiting
    with watch.bounded(seconds, reason):
        return await waiting
