"""Database reads that a caller waits for (a dialplan in ``AGI()``, a CRM on the HTTP API): on
threads of their own, so that they never queue behind the journal's replay, a purge or an apiKey
hash, and each within a time limit, so that a database that hangs gives a clear answer instead
of a hang.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ..errors import StorageUnavailable

# Threads for reads: a few, since each holds a database connection while it waits.
READ_THREADS = 4


class Reads:
    """``await reads(function, *args)`` runs the blocking store read ``function`` on a read
    thread and returns its result; raises StorageUnavailable when it takes longer than
    ``budget`` seconds (the read may still finish on its thread; its answer is dropped) or when
    the store says the database is away."""

    def __init__(self, budget: float, threads: int = READ_THREADS):
        self.budget = budget
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recording-read")

    async def __call__(self, function, *args):
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        try:
            # NOTE: asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that comes as the read finishes, and a task being stopped would go on for ever.
            async with asyncio.timeout(self.budget):
                return await future
        except TimeoutError:
            raise StorageUnavailable(f"the database did not answer within {self.budget:g}s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
