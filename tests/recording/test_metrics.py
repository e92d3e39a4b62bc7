"""The metrics registry: its output checked line by line against the text exposition format
0.0.4 with a strict grammar, then parsed back (escapes undone) to compare values."""

from __future__ import annotations

import re
import threading

import pytest

from recording.ops.metrics import CONTENT_TYPE, DEFAULT_BUCKETS, Registry, ServiceMetrics

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
HELP_LINE = re.compile(rf"^# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*$")
TYPE_LINE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_LINE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? ({VALUE})$")
PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of an exposition, after checking every line against the format: HELP and
    TYPE once per family and before its samples, sample names within their family."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    family = None
    for line in text.splitlines():
        if match := HELP_LINE.match(line):
            family = match.group(1)
            assert family not in types, f"{family} described twice"
        elif match := TYPE_LINE.match(line):
            assert match.group(1) == family, line
            types[family] = match.group(2)
        else:
            match = SAMPLE_LINE.match(line)
            assert match, f"not a valid exposition line: {line!r}"
            name, labels, value = match.groups()
            assert name in {family + s for s in SUFFIXES[types[family]]}, f"{name} outside family {family}"
            pairs = frozenset(
                (key, re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw))
                for key, raw in PAIR.findall(labels or "")
            )
            assert (name, pairs) not in samples, f"duplicate sample {line!r}"
            samples[(name, pairs)] = float(value)
    return samples


def labels(**values) -> frozenset:
    return frozenset(values.items())


def test_counter_with_labels_and_escaping():
    registry = Registry()
    counter = registry.counter("demo_total", 'Help with a \\ backslash\nand a "quote"', ("path", "status"))
    counter.inc(path="/a", status=200)
    counter.inc(2, path="/a", status=200)
    counter.inc(path='we"ird\\pa\nth', status=404)
    text = registry.render()
    assert text.splitlines()[:2] == [
        '# HELP demo_total Help with a \\\\ backslash\\nand a "quote"',
        "# TYPE demo_total counter",
    ]
    assert 'demo_total{path="/a",status="200"} 3.0' in text.splitlines()
    assert 'demo_total{path="we\\"ird\\\\pa\\nth",status="404"} 1.0' in text.splitlines()
    assert parse(text) == {
        ("demo_total", labels(path="/a", status="200")): 3.0,
        ("demo_total", labels(path='we"ird\\pa\nth', status="404")): 1.0,
    }
    with pytest.raises(ValueError):
        counter.inc(-1, path="/a", status=200)
    with pytest.raises(ValueError):
        counter.inc(path="/a")  # a label missing


def test_a_counter_without_labels_shows_zero_before_its_first_increment():
    registry = Registry()
    registry.counter("quiet_total", "never incremented")
    assert registry.render() == "# HELP quiet_total never incremented\n# TYPE quiet_total counter\nquiet_total 0.0\n"


def test_gauges_set_and_computed_at_scrape_time():
    registry = Registry()
    level = registry.gauge("level", "set by hand")
    level.set(5)
    level.dec(2)
    depth = [7]
    registry.gauge("depth", "computed", callback=lambda: depth[0])
    broken = registry.gauge("broken", "its callback raises", callback=lambda: 1 / 0)
    assert parse(registry.render()) == {("level", labels()): 3.0, ("depth", labels()): 7.0}
    depth[0] = 9
    broken.set_function(lambda: True)
    assert parse(registry.render()) == {("level", labels()): 3.0, ("depth", labels()): 9.0, ("broken", labels()): 1.0}


def test_histogram_buckets_are_cumulative_with_sum_count_and_inf():
    registry = Registry()
    histogram = registry.histogram("latency_seconds", "how long", ("route",))
    for value in (0.0005, 0.001, 0.03, 0.03, 7.0, 42.0):
        histogram.observe(value, route="start")
    text = registry.render()
    samples = parse(text)
    bucket = {float(le): value for (name, pairs), value in samples.items() if name == "latency_seconds_bucket"
              for key, le in pairs if key == "le"}
    assert list(bucket) == [*DEFAULT_BUCKETS, float("inf")]
    assert bucket[0.001] == 2 and bucket[0.025] == 2 and bucket[0.05] == 4 and bucket[5.0] == 4
    assert bucket[10.0] == 5 and bucket[float("inf")] == 6
    assert samples[("latency_seconds_count", labels(route="start"))] == 6
    assert samples[("latency_seconds_sum", labels(route="start"))] == pytest.approx(49.0615)
    assert 'latency_seconds_bucket{route="start",le="+Inf"} 6.0' in text.splitlines()
    assert 'latency_seconds_bucket{route="start",le="0.001"} 2.0' in text.splitlines()
    assert histogram.count(route="start") == 6


def test_names_are_checked():
    registry = Registry()
    registry.counter("a_total", "x")
    with pytest.raises(ValueError):
        registry.counter("a_total", "again")
    with pytest.raises(ValueError):
        registry.counter("bad-name", "x")
    with pytest.raises(ValueError):
        registry.histogram("h", "x", ("le",))
    with pytest.raises(ValueError):
        registry.gauge("g", "x", ("a",), callback=lambda: 1)


def test_service_metrics():
    backlog = [0]
    connected = [False]
    metrics = ServiceMetrics(journal_backlog=lambda: backlog[0], ami_connected=lambda: connected[0],
                             known_routes={"recording/start"}, known_paths={"/metrics"})
    metrics.record_session("recording/start", "STARTED", 0.02)
    metrics.record_session("recording/start", "DENIED", 0.01)
    metrics.record_session("random/thing", "INVALID", 0.001)
    metrics.record_commit(0.004)
    metrics.record_http("/metrics", 200)
    metrics.record_http("/x/../etc/passwd", 404)
    metrics.record_apikey_failure()
    backlog[0], connected[0] = 12, True
    samples = parse(metrics.render())
    assert samples[("recording_sessions_total", labels(route="recording/start", status="STARTED"))] == 1
    assert samples[("recording_sessions_total", labels(route="other", status="INVALID"))] == 1
    assert samples[("recording_session_seconds_count", labels(route="recording/start"))] == 2
    assert samples[("recording_database_seconds_count", labels())] == 1
    assert samples[("recording_journal_backlog", labels())] == 12
    assert samples[("recording_ami_connected", labels())] == 1
    assert samples[("recording_http_requests_total", labels(path="/metrics", status="200"))] == 1
    assert samples[("recording_http_requests_total", labels(path="other", status="404"))] == 1
    assert samples[("recording_apikey_failures_total", labels())] == 1
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_service_metrics_without_callbacks_still_render_valid_text():
    metrics = ServiceMetrics()
    samples = parse(metrics.render())
    assert samples[("recording_journal_backlog", labels())] == 0
    assert samples[("recording_apikey_failures_total", labels())] == 0


def test_updates_from_many_threads_are_all_counted():
    metrics = ServiceMetrics()

    def work():
        for _ in range(2000):
            metrics.record_commit(0.002)
            metrics.record_apikey_failure()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        parse(metrics.render())  # rendering while updates run stays valid
    for thread in threads:
        thread.join()
    samples = parse(metrics.render())
    assert samples[("recording_database_seconds_count", labels())] == 16000
    assert samples[("recording_apikey_failures_total", labels())] == 16000
