"""Puts the service together and runs it: store, journal, directory, service, the FastAGI server,
and when configured the manager connection and the HTTP API.

A service that cannot reach its database at the start serves from the directory snapshot next
to the journal (when there is one), journals every write, and keeps trying: once the database
answers, its schema is checked, the directory and the legs still active are read, and only then
is the journal replayed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Mapping

from agi import Limits, Server

from . import apikey
from .asterisk.ami import AMIClient
from .ops.aftercall import AfterCall
from .ops.delivery import Deliverer
from .ops.config import Settings
from .storage import snapshot as snapshots
from .storage.directory import Directory
from .errors import ConfigError, StorageUnavailable
from .ops.configfile import load_settings, reload_changes
from .doors.fastagi import ROUTES, Hooks, build_router
from .ops.gate import Gate
from .ops.health import PUBLISH_EVERY, Board
from .ops import heap
from .doors.http import RecordingAPI, probe_application, start_site
from .ops.metrics import ServiceMetrics
from .storage.journal import Journal
from .asterisk.manager import Manager
from .storage.persist import Persister
from .storage.reads import Reads
from .service import ActiveLeg, RecordingService
from .storage.store import Store, redact_url
from .doors.follower import Follower
from .doors.sweeper import Sweeper

log = logging.getLogger("recording.app")

# Seconds between tries to reach a database that was away at the start: doubling to the most.
CONNECT_RETRY_MIN, CONNECT_RETRY_MAX = 0.25, 2.0


def prepare_database(store: Store) -> str | None:
    """Makes an empty database ready (schema, and an apiKey if there is none) and refuses an
    outdated one. Returns the new apiKey when one was made, so that it can be shown once."""
    revision = store.schema_revision()
    if revision is None:
        log.info("empty database: creating the schema")
        store.upgrade()
    else:
        _require_head(revision, store.head_revision())
    if store.api_key_hash() is None:
        key = apikey.generate()
        store.set_api_key_hash(apikey.hash_key(key))
        return key
    return None


def check_schema(store: Store) -> None:
    """Refuses a database whose schema is not the one this version needs (ConfigError with the
    command to run); raises StorageUnavailable when it cannot be asked. Makes nothing: this is
    for a database that answers only after the start, whose journal must not be replayed into
    a schema that is behind, nor a schema or a key made for it behind the operator's back."""
    revision, head = store.schema_revision(), store.head_revision()
    if revision is None:
        raise ConfigError(
            "the database answers but has no schema, so it is not the one the service served from: "
            "run 'recording-agi db upgrade' and set the apiKey ('recording-agi apikey set -')"
        )
    _require_head(revision, head)


def _require_head(revision: str, head: str) -> None:
    if revision != head:
        raise ConfigError(
            f"the database schema is at {revision} but this version needs {head}: run 'recording-agi db upgrade'"
        )


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
    are the bound ports.

    ``unreachable``: the database could not be reached a moment ago (serve's own try), so the
    start goes straight to the snapshot instead of waiting for a second connect to fail.
    """

    def __init__(self, settings: Settings, store: Store | None = None, *, config: str | None = None,
                 overrides: dict | None = None, board: Board | None = None,
                 unreachable: StorageUnavailable | None = None, sockets: Mapping[str, socket.socket] | None = None):
        self.settings = settings
        # Listening sockets handed over by systemd (or by the supervisor), by role: see ops/sockets.py.
        self.sockets = dict(sockets or {})
        # Under serve --workers: where this worker publishes its health and reads its siblings'.
        self.board = board
        # Where SIGHUP re-reads the settings from: the config file, the environment, and the
        # command-line options (which still win).
        self.config = config
        self.overrides = dict(overrides or {})
        self.store = store or Store(settings.database_url)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recording-db")
        # The reads a call waits for: threads of their own, each within the database budget.
        self.reads = Reads(settings.database_budget)
        self.directory = Directory(self.store, refresh=settings.directory_refresh, executor=self.executor,
                                   keep_in=settings.journal_dir, reads=self.reads)
        self.journal = Journal(settings.journal_dir)
        self.metrics = ServiceMetrics(
            journal_backlog=lambda: self.persister.backlog,
            ami_connected=(lambda: int(self.manager.connected)) if settings.ami_url else None,
            ami_pending=(lambda: self.follower.pending) if settings.ami_url else None,
            known_routes=ROUTES, known_paths=[path for _, path, _ in RecordingAPI.ROUTES],
        )
        self.persister = Persister(
            self.store, self.journal, budget=settings.database_budget, executor=self.executor,
            on_commit=self.metrics.record_commit,
        )
        self.gate = Gate(settings, on_failure=self.metrics.record_apikey_failure)
        self.manager = None
        if settings.ami_url:
            self.manager = Manager(AMIClient.from_url(settings.ami_url, action_timeout=settings.ami_timeout))
        self.service = RecordingService(
            settings, self.directory, self.persister, self.store, executor=self.executor, muter=self.manager,
            reads=self.reads,
        )
        # Every AMI event, in order: the calls followed through transfers and queues, and the
        # end of a recorded channel's leg at its Hangup.
        self.follower = Follower(self.service, self.manager) if self.manager is not None else None
        self.service.calls = self.follower
        self.sweeper = Sweeper(
            self.service, self.manager, interval=settings.sweep_interval, max_age=settings.max_leg_age
        )
        self.aftercall = AfterCall(self.store, settings)
        self.webhooks = Deliverer(self.store, settings, on_outcome=self.metrics.record_webhook)
        self.metrics.webhook_source = self.webhooks.backlog_age
        host, port = settings.agi_address
        hooks = Hooks(observe=self.metrics.record_session, gate=self.gate, health=self.health_sentence)
        self.agi = Server(
            build_router(self.service, settings.api_key_variable, self.manager, hooks),
            host=host, port=port, limits=limits_of(settings), reuse_port=settings.reuse_port,
            admit=lambda address: self.gate.admits(self.gate.agi, address, "FastAGI"),
            sock=self.sockets.get("agi"),
        )
        self._http = None
        self._probes = None
        self._pages_site = None
        self.pages = None
        self.pages_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._background: set[asyncio.Task] = set()
        self._publisher: asyncio.Task | None = None
        self._unreachable = unreachable
        self._connector: asyncio.Task | None = None
        # Set to stop the service: by SIGTERM/SIGINT, or with :attr:`fatal` by a database that
        # came back with a schema this version cannot use.
        self.halt = asyncio.Event()
        self.fatal: ConfigError | None = None
        # Whether this process is the service's own (serve), whose start-up heap is frozen out
        # of the garbage collector's walks (ops/heap.py); not a test's, which shares its process.
        self.freezes_heap = False

    @property
    def agi_port(self) -> int:
        return self.agi.port

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def start(self) -> None:
        """Starts every part; raises StorageUnavailable when the database can be reached
        neither now nor through a snapshot, ConfigError for a schema that is not current."""
        await self.persister.start(hold=True)
        try:
            try:
                if self._unreachable is not None:
                    raise self._unreachable
                await self._connect()
            except StorageUnavailable as exc:
                if not exc.outage:
                    raise
                await self._start_without_database(exc)
        except BaseException:
            await self.persister.stop()
            raise
        if self.manager is not None:
            # NOTE: the follower hears every event from the first login on (and reads the calls
            # again at each login), before the sweeper's wake-up.
            self.follower.start()
            self.manager.client.on_connect(self.sweeper.wake)
            await self.manager.client.start()
        self.sweeper.start()
        if self.board is not None or self.metrics.shared is not None:
            self._publisher = asyncio.create_task(self._publish())
        self.aftercall.start()
        self.webhooks.start()
        await self.agi.start()
        pages = self._pages()
        if self.settings.http_address is not None:
            api = RecordingAPI(self.service, self.store, self.manager, gate=self.gate, metrics=self.metrics,
                               health=self.service_health)
            application = api.application()
            if pages is not None and self.settings.pages_listen == "http":
                pages.mount(application)
            self._http, self.http_port = await start_site(
                application, *self.settings.http_address, reuse_port=self.settings.reuse_port,
                sock=self.sockets.get("http"),
            )
            log.info("HTTP recording API listening on %s:%d%s", self.settings.http_address[0], self.http_port,
                     ", with the recordings pages" if pages is not None and self.settings.pages_listen == "http" else "")
        if pages is not None and self.settings.pages_address is not None:
            self._pages_site, self.pages_port = await start_site(
                pages.application(), *self.settings.pages_address, reuse_port=self.settings.reuse_port,
                sock=self.sockets.get("pages"),
            )
            log.info("recordings pages on %s:%d", self.settings.pages_address[0], self.pages_port)
        if self.settings.metrics_address is not None:
            self._probes, self.metrics_port = await start_site(
                probe_application(self.metrics, self.service_health), *self.settings.metrics_address,
                reuse_port=self.settings.reuse_port, sock=self.sockets.get("metrics"),
            )
            log.info("metrics and health on %s:%d", self.settings.metrics_address[0], self.metrics_port)

    def _pages(self):
        """The recordings pages when RECORDING_PAGES_LISTEN asks for them (README)."""
        if not self.settings.pages_listen:
            return None
        from .doors.pages import Pages

        self.pages = Pages(self.service, self.store, self.gate, self.metrics)
        return self.pages

    async def _connect(self) -> None:
        """What serving needs from the database: a current schema, the directory, the legs
        still active. Then the journal may be replayed. Raises StorageUnavailable, ConfigError."""
        await self._run(check_schema, self.store)
        await self.directory.start()
        for leg in await self._run(self.store.active_legs):
            # A leg started while the database was away is newer than the one it holds.
            if self.service.active(leg.unique_id) is None:
                self.service.remember(leg.unique_id, leg.leg, ActiveLeg.of(leg))
        self.persister.release()

    async def _start_without_database(self, unreachable: StorageUnavailable) -> None:
        snapshot = snapshots.require(self.settings.journal_dir, redact_url(self.store.url), unreachable)
        self.directory.serve_from(snapshot)
        self.persister.assume_away()
        recalled = self.service.recall(await self._run(self._journaled))
        log.warning("started without the database (%s): serving from the directory snapshot of %s in %s, "
                    "journaling every write until it answers%s", unreachable, snapshot.when, snapshot.path.parent,
                    f"; {recalled} legs the journal leaves recording are known" if recalled else "")
        age = snapshot.age()
        if age > self.settings.snapshot_max_age:
            log.warning("the directory snapshot of %s is %.1f days old, older than RECORDING_SNAPSHOT_MAX_AGE "
                        "(%gs): serving from it all the same; users, groups, attachments and an apiKey changed "
                        "since are not known until the database answers", snapshot.when, age / 86400,
                        self.settings.snapshot_max_age)
        self._connector = asyncio.create_task(self._reconnect(), name="database-connect")

    def _journaled(self) -> list:
        """The writes waiting in the journal, oldest first (none that cannot be read: the
        replay will say why)."""
        writes = []
        for segment in self.journal.seal():
            try:
                writes += self.journal.read(segment)
            except (OSError, StorageUnavailable) as exc:
                log.warning("journal file %s not read for the legs it leaves recording: %s", segment.name, exc)
        return writes

    async def _reconnect(self) -> None:
        """Tries the database until it answers; a schema that is not current then stops the
        service (the journal keeps every write, and nothing is replayed into it)."""
        delay = CONNECT_RETRY_MIN
        refusal_logged = False
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX)
            try:
                await self._connect()
            except StorageUnavailable as exc:
                if not exc.outage and not refusal_logged:
                    log.error("the database answers but turns the connection away (%s): still journaling", exc)
                    refusal_logged = True
                continue
            except ConfigError as exc:
                log.error("stopping: %s (every write of this run is in the journal in %s, replayed at the next "
                          "start)", exc, self.journal.directory)
                self.fatal = exc
                self.halt.set()
                return
            except Exception:
                # Not a known way for the database to fail: said, and tried again all the same,
                # since giving up would leave the service journaling for ever.
                log.exception("unexpected failure reaching the database; trying again")
                continue
            log.info("the database answers and its schema is current: replaying the journal")
            self._freeze_heap("the directory and the active legs are read")
            return

    def health(self) -> dict:
        """Whether a recording can start now, and why not. ``ok`` is False only when it
        cannot: no apiKey is known, or the database is away and the journal cannot be written."""
        problems = []
        if self.directory.snapshot.api_key_hash is None:
            problems.append("no apiKey is known (recording-agi apikey generate)")
        if (self.persister.database_away or self.persister.journaling) and self.persister.journal_broken:
            problems.append("the database is away and the journal cannot be written")
        away, journaling = self.persister.database_away, self.persister.journaling
        report = {
            "ok": not problems,
            "status": "unavailable" if problems else ("degraded" if away or journaling else "ok"),
            # NOTE: slow: it answers, but writes went past RECORDING_DATABASE_BUDGET, so they are
            # journaled until the replay has caught up.
            "database": "away" if away else ("slow" if journaling else "up"),
            "journalBacklog": self.persister.backlog,
            "ami": "off" if self.manager is None else ("connected" if self.manager.connected else "down"),
            "problems": problems,
        }
        snapshot = self.directory.served_from
        if snapshot is not None:
            report["directory"] = f"snapshot of {snapshot.when}"
        if journaling and not away and not problems:
            report["problems"] = [
                f"the database is slower than RECORDING_DATABASE_BUDGET ({self.settings.database_budget:g}s): "
                "recordings start and their legs are journaled until the journal is replayed"
            ]
        if self.persister.database_away and not problems:
            report["problems"] = ["the database is away: recordings start and their legs are journaled"]
            if snapshot is not None:
                old = snapshot.age() > self.settings.snapshot_max_age
                report["problems"].append(
                    f"the database has not answered since the start: apiKeys and agents are checked against the "
                    f"directory snapshot of {snapshot.when}{' (older than RECORDING_SNAPSHOT_MAX_AGE)' if old else ''}"
                )
        return report

    def service_health(self) -> dict:
        """What ``/healthz`` and the dialplan's ``health`` route tell: this process's
        :meth:`health`, or under ``serve --workers`` the service's, from every worker's
        (see ``ops/health.py``)."""
        own = self.health()
        return own if self.board is None else self.board.combine(own)

    def health_sentence(self) -> tuple[bool, str]:
        report = self.service_health()
        return report["ok"], "; ".join(report["problems"])

    async def _publish(self) -> None:
        """Under ``serve --workers``, every second: this worker's gauges into the shared
        metrics, and its health report for its siblings to read."""
        while True:
            try:
                self.metrics.refresh()
                if self.board is not None:
                    self.board.publish(self.health())
            except Exception:
                log.exception("publishing this worker's metrics and health failed; trying again")
            await asyncio.sleep(PUBLISH_EVERY)

    def _freeze_heap(self, when: str) -> None:
        if self.freezes_heap:
            log.info("%s: %d objects frozen out of the garbage collector's full collections", when, heap.freeze())

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        if self.board is not None:
            self.board.withdraw()
        for runner in (self._http, self._probes, self._pages_site):
            if runner is not None:
                await runner.cleanup()
        if self.pages is not None:
            self.pages.close()
        cancelled = await self.agi.stop(grace)
        if cancelled:
            log.warning("%d sessions did not finish within %gs and were cancelled", cancelled, grace)
        await self.sweeper.stop()
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        await self.aftercall.stop()
        await self.webhooks.stop()
        if self._background:
            await asyncio.wait(self._background, timeout=grace)
        if self.follower is not None:
            await self.follower.stop()
        if self.manager is not None:
            await self.manager.client.stop()
        await self.directory.stop()
        await self.persister.stop()
        self.executor.shutdown(wait=True)
        self.reads.close()
        self.store.close()

    def reload(self) -> None:
        """SIGHUP: reads the settings again (config file, environment, command line) and takes
        those that can change safely; the log says which changed and which need a restart.
        Logs go to stderr (journald), so there is no log file to reopen."""
        try:
            fresh = load_settings(self.config, **self.overrides)
        except ConfigError as exc:
            log.error("reload refused, the running settings stay: %s", exc)
            return
        changes, restart = reload_changes(self.settings, fresh)
        if changes:
            self.apply(replace(self.settings, **changes))
        log.warning(
            "reloaded settings%s: %s%s", f" from {self.config}" if self.config else "",
            ", ".join(sorted(changes)) or "nothing changed",
            f"; these need a restart to change: {', '.join(restart)}" if restart else "",
        )

    def apply(self, settings: Settings) -> None:
        """Puts reloadable settings into the running parts."""
        self.settings = settings
        logging.getLogger().setLevel(settings.log_level.upper())
        self.service.settings = settings
        self.directory.refresh = settings.directory_refresh
        self.persister.budget = settings.database_budget
        self.sweeper.interval = settings.sweep_interval
        self.sweeper.max_age = timedelta(seconds=settings.max_leg_age)
        self.aftercall.settings = settings
        self.webhooks.settings = settings
        self.agi.limits = replace(
            self.agi.limits, reply_timeout=settings.reply_timeout, session_timeout=settings.session_timeout,
            environment_timeout=settings.environment_timeout,
        )
        self.gate.reload(settings)

    async def run_until_signalled(self) -> None:
        """Serves until SIGTERM or SIGINT, then stops gracefully; SIGHUP reloads. Raises the
        ConfigError of a database that answered with a schema this version cannot use, once
        the service has stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.halt.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.freezes_heap = True
        await self.start()
        self._freeze_heap("started")
        try:
            await self.halt.wait()
            log.info("stopping: finishing the sessions in flight")
        finally:
            await self.stop()
        if self.fatal is not None:
            raise self.fatal
