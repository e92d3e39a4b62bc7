"""The service's metrics, through the standard Prometheus client (``prometheus_client``).

In one process they live in a registry of their own, with the client's process, platform and
garbage-collector collectors beside them. Under ``serve --workers N`` the supervisor gives each
worker ``PROMETHEUS_MULTIPROC_DIR`` in its environment, so the client is in multiprocess mode
from its first import on: every worker writes its samples to files there, and a scrape, whichever
worker it reaches, reads them all and shows their sum (the supervisor marks a dead worker's files
with :func:`worker_gone`, so that a worker started again neither loses its predecessor's counts
nor counts them twice).

The two gauges are set, not computed by a callback at scrape time (multiprocess mode cannot run
another process's callback): :meth:`ServiceMetrics.refresh` sets them from their sources, before
each scrape in the process that answers it and, under ``--workers``, every second in each worker.

A scrape is answered off the event loop (:meth:`ServiceMetrics.scrape`): under ``--workers`` it
reads and merges every worker's files, and that must not hold up the calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Iterable

import prometheus_client
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..errors import ConfigError

log = logging.getLogger("recording.metrics")

# The client reads this before its first metric is made; the supervisor sets it for its workers.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds, from a millisecond (a commit on a quiet SQLite) to ten (a session near its timeout).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# NOTE: the client adds a `..._created` sample (a start time) to each counter and histogram in
# one process, but not in multiprocess mode; without it a scrape shows the same series in both.
prometheus_client.disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The folder the workers' samples are shared in, or None in one process."""
    return os.environ.get(MULTIPROCESS_ENV) or None


def worker_gone(pid: int, directory: str) -> None:
    """The client's bookkeeping for a worker that ended: its gauges leave the live aggregates
    (its counters and histograms stay, so the service's totals keep them)."""
    mark_process_dead(pid, directory)


class ServiceMetrics:
    """The recording service's metrics. The front doors and the persister call the
    ``record_...`` methods; the journal backlog and the AMI state are read from the callbacks
    (given here or set later as :attr:`journal_source`) by :meth:`refresh`.

    ``known_routes``, ``known_paths``: when given, a FastAGI route or HTTP path outside them is
    counted as ``other``, so that a peer asking for random names cannot make a new series per
    request.
    """

    def __init__(
        self,
        *,
        journal_backlog: Callable[[], float] | None = None,
        ami_connected: Callable[[], bool] | None = None,
        ami_pending: Callable[[], float] | None = None,
        known_routes: Iterable[str] = (),
        known_paths: Iterable[str] = (),
    ):
        self.shared = multiprocess_dir()
        self.registry = CollectorRegistry()
        if self.shared is not None:
            if not os.path.isdir(self.shared):
                raise ConfigError(f"{MULTIPROCESS_ENV} {self.shared!r} is not a directory (the Prometheus "
                                  "client keeps the metrics of several processes there)")
            # NOTE: in multiprocess mode the metrics are not registered anywhere: the collector
            # reads every process's files, this one's included (registering them too would show
            # this process's samples twice).
            MultiProcessCollector(self.registry, path=self.shared)
            into = None
        else:
            into = self.registry
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.sessions = Counter(
            "recording_sessions_total", "FastAGI sessions served, by route and RECORDING_STATUS",
            ("route", "status"), registry=into,
        )
        self.session_seconds = Histogram(
            "recording_session_seconds", "Time a FastAGI session took, by route", ("route",),
            buckets=DEFAULT_BUCKETS, registry=into,
        )
        self.database_seconds = Histogram(
            "recording_database_seconds", "Time a database commit of the sessions' writes took",
            buckets=DEFAULT_BUCKETS, registry=into,
        )
        # Summed over the live workers: each worker's journal is its own, and a worker started
        # again takes over the journal of the one that died (so a dead worker's last value,
        # kept, would count those writes twice).
        self.journal_backlog = Gauge(
            "recording_journal_backlog", "Writes in the local journal waiting for the database",
            multiprocess_mode="livesum", registry=into,
        )
        # The least over the live workers: 1 only while every worker is logged in. Each worker
        # has its own manager connection and the kernel spreads HTTP requests over them, so one
        # worker logged out already fails its share of the HTTP API; the minimum keeps one series
        # with today's labels (a pid label would make a new series at each restart).
        self.ami_connected = Gauge(
            "recording_ami_connected", "1 while logged in to Asterisk's manager interface, else 0",
            multiprocess_mode="livemin", registry=into,
        )
        self.http_requests = Counter(
            "recording_http_requests_total", "HTTP API requests answered, by path and status code",
            ("path", "status"), registry=into,
        )
        self.apikey_failures = Counter(
            "recording_apikey_failures_total", "Requests refused for a missing or wrong apiKey", registry=into,
        )
        # Webhooks (README, "Webhooks"): every try by its outcome, and how long the oldest event
        # still undelivered has waited (the same database-wide figure in every worker: the most).
        self.webhook_deliveries = Counter(
            "recording_webhook_deliveries_total",
            "Webhook delivery tries, by outcome: delivered, retried (failed, tried again later) or given_up",
            ("outcome",), registry=into,
        )
        self.webhook_backlog_age = Gauge(
            "recording_webhook_oldest_pending_seconds",
            "Seconds since the oldest event still waiting for a webhook delivery was written; 0 if none",
            multiprocess_mode="livemax", registry=into,
        )
        self.webhook_source: Callable[[], float] | None = None
        # Summed over the live workers, each following every call from its own AMI connection.
        self.ami_pending = Gauge(
            "recording_ami_events_pending", "AMI events heard and not yet handled by the call follower",
            multiprocess_mode="livesum", registry=into,
        )
        self.journal_source = journal_backlog
        self.ami_source = ami_connected
        self.ami_pending_source = ami_pending
        self.known_routes = frozenset(known_routes)
        self.known_paths = frozenset(known_paths)

    def record_session(self, route: str, status: str, seconds: float) -> None:
        if self.known_routes and route not in self.known_routes:
            route = "other"
        self.sessions.labels(route, status).inc()
        self.session_seconds.labels(route).observe(seconds)

    def record_commit(self, seconds: float) -> None:
        self.database_seconds.observe(seconds)

    def record_http(self, path: str, status: int) -> None:
        if self.known_paths and path not in self.known_paths:
            path = "other"
        self.http_requests.labels(path, str(status)).inc()

    def record_apikey_failure(self) -> None:
        self.apikey_failures.inc()

    def record_webhook(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    def refresh(self) -> None:
        """Sets the gauges from their sources; a source that raises leaves its gauge as it was
        (and is logged)."""
        for name, gauge, source, convert in (
            ("recording_journal_backlog", self.journal_backlog, self.journal_source, float),
            ("recording_ami_connected", self.ami_connected, self.ami_source, lambda up: 1.0 if up else 0.0),
            ("recording_ami_events_pending", self.ami_pending, self.ami_pending_source, float),
            ("recording_webhook_oldest_pending_seconds", self.webhook_backlog_age, self.webhook_source, float),
        ):
            if source is None:
                continue
            try:
                gauge.set(convert(source()))
            except Exception:
                log.exception("metric %s: its source failed; it keeps its last value", name)

    async def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """:meth:`exposition` in a worker thread (the event loop's default executor), so that
        reading and merging the workers' files never stalls the sessions on the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.exposition, accept)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape's body and content type: the text format 0.0.4, or OpenMetrics when the
        ``Accept`` header asks for it. Raises ValueError, with a sentence to answer, when
        ``accept`` names a version that cannot be read."""
        try:
            encode, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            # NOTE: the client compares the version= parameter as numbers without checking it.
            raise ValueError(f"the Accept header {accept[:80]!r} names a format version that is not "
                             "a number; ask for text/plain or application/openmetrics-text") from None
        self.refresh()
        return encode(self.registry), content_type
