"""Group commit: the writes of concurrent sessions go to the database together, one transaction
per batch, while each session still waits for its own write to be committed.

One thread owns the writing connection. Sessions hand it their write and await a future; the
thread takes everything queued (up to ``max_batch``), commits it in one transaction, and
answers all of those futures at once. Under load a batch grows by itself, so the number of
commits (and of fsyncs) per second stays low while no single session waits for a timer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Sequence

from .domain import CommitResult, NewLeg, TagUpdate
from .errors import StorageUnavailable
from .store import Store

log = logging.getLogger("recording.writer")

_STOP = object()


class CommitWriter:
    def __init__(self, store: Store, *, max_batch: int = 256):
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commits what is queued, then ends the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, write: NewLeg | TagUpdate) -> CommitResult:
        """Commits ``write`` (batched with others) and returns its result; raises
        StorageUnavailable when the database cannot take it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((write, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: Sequence[tuple]) -> None:
        writes = [write for write, _, _ in batch]
        try:
            outcomes: list = self._store.commit(writes)
        except StorageUnavailable as exc:
            outcomes = [exc] * len(batch)
        except Exception as exc:  # a bug must not strand the sessions waiting on this batch
            log.exception("committing a batch of %d writes failed", len(batch))
            outcomes = [StorageUnavailable(f"the write failed: {exc}")] * len(batch)
        self.batches += 1
        self.writes += len(batch)
        by_loop: dict = {}
        for (_, future, loop), outcome in zip(batch, outcomes):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_answer, answers)
            except RuntimeError:  # the loop was closed while its session waited
                pass


def _answer(answers) -> None:
    for future, outcome in answers:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
