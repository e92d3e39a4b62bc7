"""The apiKey hash, the users and the extension attachments, held in memory and refreshed, so
that a session's checks cost no database round trip. A login not in memory is looked up in the
database before it is called unknown, so a user added a moment ago is found at once.

Each refresh also writes the directory to a snapshot file (:mod:`.snapshot`), and a service
that starts while the database cannot be reached serves from that file until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace

from .. import apikey
from ..domain import DirectorySnapshot, UserRef
from ..errors import StorageUnavailable, WrongKey
from . import snapshot as snapshots
from .reads import Reads
from .store import Store, redact_url

log = logging.getLogger("recording.directory")
# How many apiKey hashes (scrypt) may be computed at once.
HASHING_THREADS = 2


class Directory:
    """``keep_in``: the folder the snapshot file is written to on each read (None: none)."""

    def __init__(self, store: Store, *, refresh: float, executor: Executor | None = None,
                 keep_in: str | os.PathLike | None = None, reads: Reads | None = None):
        self._store = store
        self.refresh = refresh
        self._executor = executor
        # What a session waits for (a login not in memory, the hash after a key that did not
        # match) within the database budget; the refresh runs on ``executor``.
        self._reads = reads or Reads(0.25)
        # NOTE: scrypt on threads of its own, at most HASHING_THREADS at a time: a burst of
        # wrong keys cannot take the threads that replay the journal or read for calls.
        self._hashing = ThreadPoolExecutor(max_workers=HASHING_THREADS, thread_name_prefix="recording-scrypt")
        self._keep_in = keep_in
        self._keep_failed = False
        self._snapshot = DirectorySnapshot(None, {})
        # The snapshot file served from, while the database has not answered since the start.
        self.served_from: snapshots.Snapshot | None = None
        self._keys = apikey.KeyCache()
        self._checking: dict[tuple[bytes, str], asyncio.Future] = {}
        self.key_checks = 0  # scrypt runs, for tests and metrics
        self._task: asyncio.Task | None = None

    @property
    def snapshot(self) -> DirectorySnapshot:
        return self._snapshot

    async def _call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def load(self) -> None:
        """Reads the directory now and keeps it in the snapshot file; raises StorageUnavailable."""
        fresh = await self._call(self._store.directory)
        self._snapshot = fresh
        self.served_from = None
        if self._keep_in is not None:
            await self._call(self._keep, fresh)

    def _keep(self, fresh: DirectorySnapshot) -> None:
        try:
            snapshots.save(self._keep_in, fresh, redact_url(self._store.url))
        except OSError as exc:
            if not self._keep_failed:
                log.warning("directory snapshot not written to %s (a start without the database would "
                            "have none to serve from): %s", self._keep_in, exc)
            self._keep_failed = True
        else:
            if self._keep_failed:
                log.info("directory snapshot written to %s again", self._keep_in)
            self._keep_failed = False

    def serve_from(self, snapshot: snapshots.Snapshot) -> None:
        """Serves from a snapshot file until :meth:`start` reads the database: keys are
        checked against its hash, and a login it does not hold cannot be looked up."""
        self._snapshot = snapshot.directory
        self.served_from = snapshot

    async def start(self) -> None:
        """Reads the directory (raises StorageUnavailable) and refreshes it from then on."""
        await self.load()
        if self._task is None:
            self._task = asyncio.create_task(self._refresher(), name="directory-refresh")

    async def stop(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self.load()
            except StorageUnavailable as exc:
                log.debug("directory not refreshed: %s", exc)

    async def check_key(self, presented: str | None) -> None:
        """Returns when ``presented`` is the apiKey; raises Denied otherwise.

        A key that does not match the hash in memory is checked once more against the hash in
        the database, since the key may have been changed since the last refresh.
        """
        if not presented:
            raise WrongKey("no apiKey was given")
        stored = self._snapshot.api_key_hash
        if stored is not None and await self._verify(presented, stored):
            return
        if self.served_from is not None:
            # The database has not answered since the start: no fresher hash to ask for.
            raise WrongKey("the apiKey is not valid")
        try:
            fresh = await self._reads(self._store.api_key_hash)
        except StorageUnavailable:
            if stored is None:
                raise
            # The database is away: the hash in memory is the best knowledge there is.
            raise WrongKey("the apiKey is not valid") from None
        if fresh is None:
            raise WrongKey("no apiKey is configured on the service (recording-agi apikey generate)")
        if fresh != stored:
            self._snapshot = replace(self._snapshot, api_key_hash=fresh)
            if await self._verify(presented, fresh):
                return
        raise WrongKey("the apiKey is not valid")

    async def _verify(self, presented: str, stored: str) -> bool:
        verdict = self._keys.lookup(presented, stored)
        if verdict is not None:
            return verdict
        # NOTE: scrypt takes tens of milliseconds, so it runs off the event loop, and once per
        # key: the sessions that arrive while it runs (a burst after a restart) wait for that
        # one check instead of each starting their own and starving the worker threads.
        ask = (self._keys.fingerprint(presented), stored)
        pending = self._checking.get(ask)
        if pending is None:
            self.key_checks += 1
            pending = asyncio.get_running_loop().run_in_executor(self._hashing, apikey.verify, presented, stored)
            self._checking[ask] = pending
            pending.add_done_callback(lambda _: self._checking.pop(ask, None))
        verdict = await asyncio.shield(pending)
        self._keys.remember(presented, stored, verdict)
        return verdict

    async def user(self, login: str) -> UserRef | None:
        """The user with that login (any case), or None if there is none. Raises
        StorageUnavailable when the login is not in memory and the database cannot say."""
        found = self._snapshot.user(login)
        if found is None:
            if self.served_from is not None:
                raise StorageUnavailable(f"{login!r} is not in the directory snapshot of {self.served_from.when} "
                                         "and the database has not answered since the start")
            found = await self._reads(self._store.find_user, login)
        return found

    def attached(self, extension: str) -> int | None:
        """The id of the user attached to ``extension`` as last read (None: nobody)."""
        return self._snapshot.attached(extension)
