"""One thread that does blocking work in batches for many asyncio sessions at once.

Sessions hand it an item and await a future; the thread takes everything queued (up to
``max_batch``), processes it in one call, and answers all of those futures together. Under load
a batch grows by itself, so the number of commits or fsyncs per second stays low while no single
session waits for a timer. Used for the database's group commit and the journal's group fsync.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, Sequence

_STOP = object()


class BatchThread:
    """``process(items) -> outcomes`` runs on the thread; an outcome that is an exception is
    raised in the session that submitted the item, any other is its result. If ``process``
    itself raises, every item of the batch gets ``failure(exc)`` raised (``failure`` decides
    what the sessions see, and logs what was not expected)."""

    def __init__(
        self,
        name: str,
        process: Callable[[Sequence[Any]], Sequence[Any]],
        failure: Callable[[Exception], BaseException],
        *,
        max_batch: int = 256,
    ):
        self.name = name
        self._process = process
        self._failure = failure
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Processes what is queued, then ends the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, item: Any) -> Any:
        return await self.enqueue(item)

    def enqueue(self, item: Any) -> asyncio.Future:
        """Queues ``item`` and returns the future of its outcome (for a caller that bounds the
        wait itself; a future settled or cancelled meanwhile is left as it is)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((item, future, loop))
        return future

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            batch = [entry]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop = True
                    break
                batch.append(entry)
            self._answer(batch, self._outcomes(batch))
            if stop:
                return

    def _outcomes(self, batch: Sequence[tuple]) -> Sequence[Any]:
        try:
            return self._process([item for item, _, _ in batch])
        except Exception as exc:  # a bug must not strand the sessions waiting on this batch
            return [self._failure(exc)] * len(batch)

    def _answer(self, batch: Sequence[tuple], outcomes: Sequence[Any]) -> None:
        self.batches += 1
        self.items += len(batch)
        by_loop: dict = {}
        for (_, future, loop), outcome in zip(batch, outcomes):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the loop was closed while its session waited
                pass


def _settle(answers) -> None:
    for future, outcome in answers:
        settle(future, outcome)


def settle(future: asyncio.Future, outcome: Any) -> None:
    """Answers a write's future with its outcome (raised when it is an exception), unless the
    wait has ended already (a write past the database budget)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
