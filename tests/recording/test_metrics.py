"""The service's metrics through the Prometheus client: the names and labels dashboards know,
read back with the client's own parser; OpenMetrics on request; and multiprocess mode for real,
in processes of their own (the client picks its mode when it is first imported)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recording.errors import ConfigError
from recording.ops.metrics import DEFAULT_BUCKETS, MULTIPROCESS_ENV, ServiceMetrics

# What a scrape shows of ours, by family: its type and its label names (the README lists them).
FAMILIES = {
    "recording_sessions": ("counter", {"route", "status"}),
    "recording_session_seconds": ("histogram", {"route"}),
    "recording_database_seconds": ("histogram", set()),
    "recording_journal_backlog": ("gauge", set()),
    "recording_ami_connected": ("gauge", set()),
    "recording_ami_events_pending": ("gauge", set()),
    "recording_http_requests": ("counter", {"path", "status"}),
    "recording_apikey_failures": ("counter", set()),
    "recording_webhook_deliveries": ("counter", {"outcome"}),
    "recording_webhook_oldest_pending_seconds": ("gauge", set()),
}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of a scrape in the text format, parsed by the client's parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    found = {}
    for family in text_string_to_metric_families(text):
        names = {label for sample in family.samples for label in sample.labels if label not in ("le",)}
        found[family.name] = (family.type, names)
    return found


def labels(**values) -> frozenset:
    return frozenset((key, str(value)) for key, value in values.items())


def scrape(metrics: ServiceMetrics, accept: str = "") -> str:
    body, content_type = metrics.exposition(accept)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode()


def test_service_metrics_names_labels_and_values():
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
    metrics.record_webhook("retried")
    metrics.webhook_source = lambda: 7.5
    backlog[0], connected[0] = 12, True
    text = scrape(metrics)
    found = samples(text)

    ours = {name: kind for name, kind in families(text).items() if name.startswith("recording_")}
    assert ours == FAMILIES
    assert found[("recording_sessions_total", labels(route="recording/start", status="STARTED"))] == 1
    assert found[("recording_sessions_total", labels(route="other", status="INVALID"))] == 1
    assert found[("recording_session_seconds_count", labels(route="recording/start"))] == 2
    assert found[("recording_database_seconds_count", labels())] == 1
    assert found[("recording_journal_backlog", labels())] == 12
    assert found[("recording_ami_connected", labels())] == 1
    assert found[("recording_http_requests_total", labels(path="/metrics", status=200))] == 1
    assert found[("recording_http_requests_total", labels(path="other", status=404))] == 1
    assert found[("recording_apikey_failures_total", labels())] == 1
    assert found[("recording_webhook_deliveries_total", labels(outcome="retried"))] == 1
    assert found[("recording_webhook_oldest_pending_seconds", labels())] == 7.5
    # The same series in one process as under --workers: no `_created` samples.
    assert not [name for name, _ in found if name.endswith("_created")]
    # The process itself, from the client's collectors (one process only).
    assert found[("process_cpu_seconds_total", labels())] > 0
    assert found[("process_resident_memory_bytes", labels())] > 0
    (info,) = [dict(pairs) for name, pairs in found if name == "python_info"]
    assert info["implementation"] == "CPython"


def test_histogram_buckets_are_cumulative_with_sum_count_and_inf():
    metrics = ServiceMetrics()
    for value in (0.0005, 0.001, 0.03, 0.03, 7.0, 42.0):
        metrics.record_session("recording/start", "STARTED", value)
    found = samples(scrape(metrics))
    bucket = {float(dict(pairs)["le"]): value for (name, pairs), value in found.items()
              if name == "recording_session_seconds_bucket"}
    assert list(bucket) == [*DEFAULT_BUCKETS, float("inf")]
    assert bucket[0.001] == 2 and bucket[0.025] == 2 and bucket[0.05] == 4 and bucket[5.0] == 4
    assert bucket[10.0] == 5 and bucket[float("inf")] == 6
    assert found[("recording_session_seconds_count", labels(route="recording/start"))] == 6
    assert found[("recording_session_seconds_sum", labels(route="recording/start"))] == pytest.approx(49.0615)


def test_before_anything_happens_the_unlabelled_series_show_zero():
    found = samples(scrape(ServiceMetrics()))
    assert found[("recording_journal_backlog", labels())] == 0
    assert found[("recording_ami_connected", labels())] == 0
    assert found[("recording_apikey_failures_total", labels())] == 0
    assert found[("recording_database_seconds_count", labels())] == 0
    assert not [name for name, _ in found if name == "recording_sessions_total"]


def test_a_gauge_whose_source_fails_keeps_its_last_value(caplog):
    source = [lambda: 3]
    metrics = ServiceMetrics(journal_backlog=lambda: source[0]())
    assert samples(scrape(metrics))[("recording_journal_backlog", labels())] == 3
    source[0] = lambda: 1 / 0
    with caplog.at_level(logging.ERROR, logger="recording.metrics"):
        assert samples(scrape(metrics))[("recording_journal_backlog", labels())] == 3
    assert "recording_journal_backlog: its source failed" in caplog.text


def test_openmetrics_when_the_scraper_asks_for_it():
    metrics = ServiceMetrics()
    metrics.record_apikey_failure()
    body, content_type = metrics.exposition("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    text = body.decode()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    assert "# TYPE recording_apikey_failures counter\nrecording_apikey_failures_total 1.0\n" in text


def test_an_accept_header_with_an_unreadable_version_is_refused_in_a_sentence():
    with pytest.raises(ValueError, match=r"names a format version that is not a number; ask for text/plain"):
        ServiceMetrics().exposition("application/openmetrics-text; version=garbage")


def test_a_scrape_is_answered_off_the_event_loop():
    # Under serve --workers a scrape reads and merges every worker's files: the sessions on the
    # loop must not wait for it. The gauges' sources are read by the scrape, so they tell where.
    readers = []
    metrics = ServiceMetrics(journal_backlog=lambda: readers.append(threading.get_ident()) or 3)

    async def scrape_on_a_loop():
        body, _ = await metrics.scrape()
        return threading.get_ident(), body.decode()

    loop_thread, text = asyncio.run(scrape_on_a_loop())

    assert readers and loop_thread not in readers
    assert samples(text)[("recording_journal_backlog", labels())] == 3


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
        samples(scrape(metrics))  # scraping while updates run stays valid
    for thread in threads:
        thread.join()
    found = samples(scrape(metrics))
    assert found[("recording_database_seconds_count", labels())] == 16000
    assert found[("recording_apikey_failures_total", labels())] == 16000


def test_a_shared_folder_that_is_not_there_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR .* is not a directory"):
        ServiceMetrics()


# --- multiprocess mode, in processes of their own --------------------------------------------------

WORKER = textwrap.dedent("""
    import os, sys
    from recording.ops.metrics import ServiceMetrics

    sessions, backlog, connected = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    metrics = ServiceMetrics(journal_backlog=lambda: backlog, ami_connected=lambda: connected)
    for _ in range(sessions):
        metrics.record_session("recording/start", "STARTED", 0.01)
    metrics.record_http("/metrics", 200)
    metrics.refresh()
    if len(sys.argv) > 4:
        sys.stdout.write(metrics.exposition()[0].decode())
    else:
        print(os.getpid())
""")


def run_worker(shared, *args) -> str:
    env = {**os.environ, MULTIPROCESS_ENV: str(shared)}
    done = subprocess.run([sys.executable, "-c", WORKER, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_in_multiprocess_mode_any_process_shows_the_sum_and_a_dead_one_keeps_its_counts(tmp_path):
    from recording.ops.metrics import worker_gone

    first = int(run_worker(tmp_path, 7, 2, 1))
    second = int(run_worker(tmp_path, 5, 3, 0))
    # A third process (as a worker answering a scrape): its own session, backlog 1, AMI up.
    found = samples(run_worker(tmp_path, 1, 1, 1, "scrape"))
    assert found[("recording_sessions_total", labels(route="recording/start", status="STARTED"))] == 13
    assert found[("recording_session_seconds_count", labels(route="recording/start"))] == 13
    assert found[("recording_http_requests_total", labels(path="/metrics", status=200))] == 3
    # The processes that ended were not marked: their gauges still count.
    assert found[("recording_journal_backlog", labels())] == 6
    assert found[("recording_ami_connected", labels())] == 0
    # No process metrics: each process could only tell its own.
    assert not [name for name, _ in found if name.startswith("process_")]

    worker_gone(first, str(tmp_path))
    worker_gone(second, str(tmp_path))
    found = samples(run_worker(tmp_path, 0, 4, 1, "scrape"))
    assert found[("recording_sessions_total", labels(route="recording/start", status="STARTED"))] == 13
    assert found[("recording_http_requests_total", labels(path="/metrics", status=200))] == 4
    # The gauges are those of the live: the third process's files went with no mark_process_dead,
    # so its 1 stays beside this one's 4 (the supervisor marks every worker that ends).
    assert found[("recording_journal_backlog", labels())] == 5
    assert found[("recording_ami_connected", labels())] == 1
