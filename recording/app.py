"""Puts the service together and runs it: store, journal, directory, service, the FastAGI server,
and when configured the manager connection and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from agi import Limits, Server

from . import apikey
from .ami import AMIClient
from .config import Settings
from .directory import Directory
from .errors import ConfigError
from .fastagi import build_router
from .http import RecordingAPI, start_site
from .journal import Journal
from .manager import Manager
from .persist import Persister
from .service import ActiveLeg, RecordingService
from .store import Store
from .sweeper import Sweeper

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
    """The running service. ``start()`` then ``stop()``; :attr:`agi_port` and :attr:`http_port`
    are the bound ports."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recording-db")
        self.directory = Directory(self.store, refresh=settings.directory_refresh, executor=self.executor)
        self.journal = Journal(settings.journal_dir)
        self.persister = Persister(self.store, self.journal, budget=settings.database_budget, executor=self.executor)
        self.manager = None
        if settings.ami_url:
            self.manager = Manager(AMIClient.from_url(settings.ami_url, action_timeout=settings.ami_timeout))
        self.service = RecordingService(
            settings, self.directory, self.persister, self.store, executor=self.executor, muter=self.manager
        )
        self.sweeper = Sweeper(
            self.service, self.manager, interval=settings.sweep_interval, max_age=settings.max_leg_age
        )
        host, port = settings.agi_address
        self.agi = Server(
            build_router(self.service, settings.api_key_variable, self.manager),
            host=host, port=port, limits=limits_of(settings), reuse_port=settings.reuse_port,
        )
        self._http = None
        self.http_port: int | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def agi_port(self) -> int:
        return self.agi.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.persister.start()
        await self.directory.start()
        for leg in await loop.run_in_executor(self.executor, self.store.active_legs):
            self.service.remember(leg.unique_id, leg.leg, ActiveLeg.of(leg))
        if self.manager is not None:
            self.manager.client.subscribe(self._on_event)
            self.manager.client.on_connect(self.sweeper.wake)
            await self.manager.client.start()
        self.sweeper.start()
        await self.agi.start()
        if self.settings.http_address is not None:
            api = RecordingAPI(self.service, self.store, self.manager)
            self._http, self.http_port = await start_site(
                api.application(), *self.settings.http_address, reuse_port=self.settings.reuse_port
            )
            log.info("HTTP recording API listening on %s:%d", self.settings.http_address[0], self.http_port)

    def _on_event(self, event: dict) -> None:
        # NOTE: Asterisk sends a Hangup for every channel; only ours are worth a look.
        if event.get("Event") == "Hangup" and self.service.active(event.get("Uniqueid", "")):
            task = asyncio.create_task(
                self.service.channel_gone(event["Uniqueid"], by="hangup", known_only=True)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._http is not None:
            await self._http.cleanup()
        cancelled = await self.agi.stop(grace)
        if cancelled:
            log.warning("%d sessions did not finish within %gs and were cancelled", cancelled, grace)
        await self.sweeper.stop()
        if self._background:
            await asyncio.wait(self._background, timeout=grace)
        if self.manager is not None:
            await self.manager.client.stop()
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
