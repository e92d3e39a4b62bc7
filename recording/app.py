"""Puts the service together and runs it: store, journal, directory, service, FastAGI server."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from agi import Limits, Server

from . import apikey
from .config import Settings
from .directory import Directory
from .errors import ConfigError
from .fastagi import build_router
from .service import ActiveLeg, RecordingService
from .store import Store
from .journal import Journal
from .persist import Persister

log = logging.getLogger("recording.app")


def prepare_database(store: Store) -> str | None:
    """Makes an empty database ready (schema, and an apiKey if there is none) and refuses an
    outdated one. Returns the new apiKey when one was made, so that it can be shown once."""
    revision = store.schema_revision()
    if revision is None:
        log.info("empty database: creating the schema")
        store.upgrade()
    elif revision != store.head_revision():
        raise ConfigError(
            f"the database schema is at {revision} but this version needs {store.head_revision()}: "
            "run 'recording-agi db upgrade'"
        )
    if store.api_key_hash() is None:
        key = apikey.generate()
        store.set_api_key_hash(apikey.hash_key(key))
        return key
    return None


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_line_bytes=settings.max_line_bytes,
        max_environment_bytes=settings.max_environment_bytes,
        environment_timeout=settings.environment_timeout,
        reply_timeout=settings.reply_timeout,
        session_timeout=settings.session_timeout,
        max_sessions=settings.max_sessions,
        backlog=settings.backlog,
    )


class Application:
    """The running service. ``start()`` then ``stop()``; :attr:`agi_port` is the bound port."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recording-db")
        self.directory = Directory(self.store, refresh=settings.directory_refresh, executor=self.executor)
        self.journal = Journal(settings.journal_dir)
        self.persister = Persister(
            self.store, self.journal, budget=settings.database_budget, executor=self.executor
        )
        self.service = RecordingService(settings, self.directory, self.persister)
        host, port = settings.agi_address
        self.agi = Server(
            build_router(self.service, settings.api_key_variable), host=host, port=port, limits=limits_of(settings)
        )

    @property
    def agi_port(self) -> int:
        return self.agi.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.persister.start()
        await self.directory.start()
        for leg in await loop.run_in_executor(self.executor, self.store.active_legs):
            self.service.remember(leg.unique_id, leg.leg, ActiveLeg(leg.id, leg.leg, leg.file, leg.external_reference))
        await self.agi.start()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        cancelled = await self.agi.stop(grace)
        if cancelled:
            log.warning("%d sessions did not finish within %gs and were cancelled", cancelled, grace)
        await self.directory.stop()
        await self.persister.stop()
        self.executor.shutdown(wait=True)
        self.store.close()

    async def run_until_signalled(self) -> None:
        """Serves until SIGTERM or SIGINT, then stops gracefully."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        try:
            await stopping.wait()
            log.info("stopping: finishing the sessions in flight")
        finally:
            await self.stop()
