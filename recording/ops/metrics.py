"""The service's metrics in the Prometheus text exposition format (version 0.0.4), without a
third-party client: counters and histograms with labels, gauges set or computed at scrape
time, and :class:`ServiceMetrics`, the metrics this service declares.

Updates take a lock per metric, so they may come from the event loop and from worker threads
(database commits) alike; :meth:`Registry.render` reads a consistent copy of each metric.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from bisect import bisect_left
from typing import Callable, Iterable

log = logging.getLogger("recording.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, from a millisecond (a commit on a quiet SQLite) to ten (a session near its timeout).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as the format writes it: ``+Inf``, ``-Inf``, ``NaN``, else Python's
    shortest round-tripping form (``1.0``, ``0.001``, ``1e-05``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [f'{name}="{escape_label_value(value)}"' for name, value in zip(names, values)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        labelnames = tuple(labelnames)
        if not _METRIC_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"{name}: {label!r} is not a valid label name")
        self.name, self.help, self.labelnames = name, help, labelnames
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, object]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, not {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def samples(self) -> list[tuple[str, str, float]]:
        """``(name suffix, label text, value)`` for each sample, as rendered."""
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        lines += [f"{self.name}{suffix}{labels} {format_value(value)}" for suffix, labels, value in self.samples()]
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    """A count that only goes up. Without labels it is shown (as 0) before the first inc();
    with labels, each combination appears from its first inc()."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down ({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[str, str, float]]:
        with self._lock:
            items = sorted(self._values.items())
        return [("", _label_text(self.labelnames, key), value) for key, value in items]


class Gauge(_Metric):
    """A value that goes up and down: set() / inc() / dec(), or, when ``callback`` is given,
    whatever the callback returns at scrape time (a callback that raises leaves the sample out
    of that scrape, and is logged)."""

    type = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 callback: Callable[[], float] | None = None):
        super().__init__(name, help, labelnames)
        if callback is not None and self.labelnames:
            raise ValueError(f"{self.name}: a gauge computed by a callback has no labels")
        self.callback = callback
        self._values: dict[LabelValues, float] = {} if self.labelnames else {(): 0.0}

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set_function(self, callback: Callable[[], float] | None) -> None:
        """Computes the (label-less) value by ``callback`` at each scrape from now on."""
        if callback is not None and self.labelnames:
            raise ValueError(f"{self.name}: a gauge computed by a callback has no labels")
        self.callback = callback

    def samples(self) -> list[tuple[str, str, float]]:
        callback = self.callback
        if callback is not None:
            try:
                return [("", "", float(callback()))]
            except Exception:
                log.exception("metric %s: its callback failed; left out of this scrape", self.name)
                return []
        with self._lock:
            items = sorted(self._values.items())
        return [("", _label_text(self.labelnames, key), value) for key, value in items]


class Histogram(_Metric):
    """Observations counted into fixed cumulative buckets (upper bounds ``buckets``, then
    ``+Inf``), with their sum and count, per label combination."""

    type = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS):
        super().__init__(name, help, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{self.name}: buckets must be distinct finite bounds, at least one")
        self.buckets = tuple(bounds)
        # per label values: [count in each bucket (not cumulative) ..., count above all], sum
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}
        if not self.labelnames:
            self._series[()] = ([0] * (len(self.buckets) + 1), [0.0])

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        index = bisect_left(self.buckets, value)  # the first bucket with value <= bound
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[index] += 1
            total[0] += value

    def count(self, **labels: object) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def samples(self) -> list[tuple[str, str, float]]:
        with self._lock:
            items = sorted((key, (list(counts), total[0])) for key, (counts, total) in self._series.items())
        out = []
        bounds = [format_value(b) for b in self.buckets] + ["+Inf"]
        for key, (counts, total) in items:
            running = 0
            for bound, count in zip(bounds, counts):
                running += count
                labels = _label_text(self.labelnames + ("le",), key + (bound,))
                out.append(("_bucket", labels, running))
            plain = _label_text(self.labelnames, key)
            out.append(("_sum", plain, total))
            out.append(("_count", plain, running))
        return out


class Registry:
    """The metrics to expose, rendered in the order they were added."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"a metric named {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self.add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = (),
              callback: Callable[[], float] | None = None) -> Gauge:
        return self.add(Gauge(name, help, labelnames, callback))

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self.add(Histogram(name, help, labelnames, buckets))

    def render(self) -> str:
        """Every metric in the text exposition format 0.0.4 (serve it as :data:`CONTENT_TYPE`)."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(metric.render() for metric in metrics)


class ServiceMetrics:
    """The recording service's metrics. The front doors and the persister call the
    ``record_...`` methods; the journal backlog and the AMI state are read at scrape time
    through the callbacks (given here or later with ``journal_backlog.set_function``).

    ``known_routes``, ``known_paths``: when given, a FastAGI route or HTTP path outside them is
    counted as ``other``, so that a peer asking for random names cannot make a new series per
    request.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        journal_backlog: Callable[[], float] | None = None,
        ami_connected: Callable[[], bool] | None = None,
        known_routes: Iterable[str] = (),
        known_paths: Iterable[str] = (),
    ):
        self.registry = registry or Registry()
        add = self.registry
        self.sessions = add.counter(
            "recording_sessions_total", "FastAGI sessions served, by route and RECORDING_STATUS",
            ("route", "status"),
        )
        self.session_seconds = add.histogram(
            "recording_session_seconds", "Time a FastAGI session took, by route", ("route",)
        )
        self.database_seconds = add.histogram(
            "recording_database_seconds", "Time a database commit of the sessions' writes took"
        )
        self.journal_backlog = add.gauge(
            "recording_journal_backlog", "Writes in the local journal waiting for the database",
            callback=journal_backlog,
        )
        self.ami_connected = add.gauge(
            "recording_ami_connected", "1 while logged in to Asterisk's manager interface, else 0",
            callback=None if ami_connected is None else (lambda: 1.0 if ami_connected() else 0.0),
        )
        self.http_requests = add.counter(
            "recording_http_requests_total", "HTTP API requests answered, by path and status code",
            ("path", "status"),
        )
        self.apikey_failures = add.counter(
            "recording_apikey_failures_total", "Requests refused for a missing or wrong apiKey"
        )
        self.known_routes = frozenset(known_routes)
        self.known_paths = frozenset(known_paths)

    def record_session(self, route: str, status: str, seconds: float) -> None:
        if self.known_routes and route not in self.known_routes:
            route = "other"
        self.sessions.inc(route=route, status=status)
        self.session_seconds.observe(seconds, route=route)

    def record_commit(self, seconds: float) -> None:
        self.database_seconds.observe(seconds)

    def record_http(self, path: str, status: int) -> None:
        if self.known_paths and path not in self.known_paths:
            path = "other"
        self.http_requests.inc(path=path, status=status)

    def record_apikey_failure(self) -> None:
        self.apikey_failures.inc()

    def render(self) -> str:
        return self.registry.render()
