"""`serve --workers` seen from outside, as Prometheus and a load balancer see it: whichever
worker a scrape or a health check reaches answers for the whole service; a worker started again
neither loses nor doubles counts; and the workers run the supervisor's package whatever the
current folder holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from recording.ops import workers as workers_module
from recording.ops.config import Settings
from recording.ops.health import PUBLISH_EVERY, report_path
from recording.ops.workers import PACKAGE_ROOT, import_path, make_shared, worker_command, worker_environment
from recording.storage.store import Store
from tests.fake_asterisk import FakeAsterisk
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.recording.test_metrics import labels, samples
from tests.recording.test_outage import postgres  # noqa: F401  (a fixture)
from tests.recording.test_workers import Workers, alive, place_calls
from tests.waiting import wait_until

STARTED = ("recording_sessions_total", labels(route="recording/start", status="STARTED"))
SCRAPES = ("recording_http_requests_total", labels(path="/metrics", status=200))


def scrape_until_both_answered(service: Workers, at_least: int = 10, most: int = 60) -> list[dict]:
    """At least ``at_least`` scrapes, and more until both workers have answered one (the
    kernel picks the worker for each new connection), each parsed."""
    http = HTTPClient(service.http_port)
    scrapes = []
    before = len(service.answered_by("/metrics"))
    while len(scrapes) < at_least or set(service.answered_by("/metrics")[before:]) != {1, 2}:
        assert len(scrapes) < most, f"{most} scrapes, all answered by one worker:\n{service.text()}"
        answer = http.get("/metrics")
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        scrapes.append(samples(answer.body))
    return scrapes


def health_until_both_answered(service: Workers, most: int = 60) -> list:
    http = HTTPClient(service.http_port)
    answers = []
    before = len(service.answered_by("/healthz"))
    while len(answers) < 4 or set(service.answered_by("/healthz")[before:]) != {1, 2}:
        assert len(answers) < most, f"{most} health checks, all answered by one worker:\n{service.text()}"
        answers.append(http.get("/healthz"))
    return answers


def published(service: Workers, workers: set[int]) -> set[str]:
    """The statuses in the reports ``workers`` last published in the shared folder."""
    statuses = set()
    for worker in workers:
        try:
            statuses.add(json.loads(report_path(service.shared() / "health", worker).read_text())["report"]["status"])
        except (OSError, ValueError):
            statuses.add("not published")
    return statuses


@pytest.mark.slow
def test_every_scrape_shows_the_service_totals(store, database_url, tmp_path):
    service = Workers(database_url, tmp_path, http=True)
    try:
        calls = place_calls(service.port, 40, 4)
        assert [c.status for c in calls] == ["STARTED"] * 40, [c.error for c in calls if c.status != "STARTED"]
        wait_until(lambda: all(service.served_by(c.uniqueid) for c in calls), 10, "every session logged")
        served = {worker for c in calls for worker in service.served_by(c.uniqueid)}
        scrapes = scrape_until_both_answered(service)
        health = health_until_both_answered(service)
        shared = service.shared()
    finally:
        code, log = service.stop()

    assert code == 0, log
    assert served == {1, 2}  # each worker counted some of the 40, and no scrape shows less
    assert [s[STARTED] for s in scrapes] == [40] * len(scrapes)
    assert [s[("recording_session_seconds_count", labels(route="recording/start"))] for s in scrapes] == \
        [40] * len(scrapes)
    assert all(s[("recording_database_seconds_count", labels())] >= 40 for s in scrapes)
    # Each scrape counts the ones before it, wherever they were answered.
    assert [s.get(SCRAPES, 0) for s in scrapes] == list(range(len(scrapes)))
    assert all(s[("recording_journal_backlog", labels())] == 0 for s in scrapes)
    assert all(s[("recording_ami_connected", labels())] == 0 for s in scrapes)  # AMI is off
    for answer in health:
        assert answer.status == 200, answer.body
        assert answer.json["status"] == "ok" and answer.json["ok"] is True
        assert [w["worker"] for w in answer.json["workers"]] == [1, 2]
    # The supervisor made the shared folder and took it away.
    assert shared.name.startswith("recording-agi-workers-") and not shared.exists()


@pytest.mark.slow
def test_a_worker_started_again_neither_loses_nor_doubles_counts(store, database_url, tmp_path):
    service = Workers(database_url, tmp_path, http=True)
    try:
        first = place_calls(service.port, 30, 3)
        wait_until(lambda: all(service.served_by(c.uniqueid) for c in first), 10, "every session logged")
        before = scrape_until_both_answered(service, at_least=4)
        shared = service.shared()
        dead = service.pids()[1]
        mark = len(service.log)
        os.kill(dead, signal.SIGKILL)
        service.wait_for_listening([1], after=mark, timeout=30)
        after_restart = scrape_until_both_answered(service, at_least=10)
        metric_files = sorted(p.name for p in (shared / "metrics").iterdir())
        reports = sorted(p.name for p in (shared / "health").iterdir())
        second = place_calls(service.port, 20, 2)
        wait_until(lambda: all(service.served_by(c.uniqueid) for c in second), 10, "every session logged")
        later = scrape_until_both_answered(service, at_least=4)
        health = HTTPClient(service.http_port).get("/healthz").json
        pids = service.pids()
    finally:
        code, log = service.stop()

    assert code == 0, log
    assert not alive(dead) and pids[1] != dead
    assert [c.status for c in first + second] == ["STARTED"] * 50
    assert [s[STARTED] for s in before] == [30] * len(before)
    assert [s[STARTED] for s in after_restart] == [30] * len(after_restart)
    assert [s[STARTED] for s in later] == [50] * len(later)
    # The dead worker's counts stay in its files; its live gauges went with it.
    assert f"counter_{dead}.db" in metric_files and f"histogram_{dead}.db" in metric_files
    assert not [name for name in metric_files if name.startswith("gauge_live") and name.endswith(f"_{dead}.db")]
    assert [name for name in metric_files if name.startswith("gauge_live") and name.endswith(f"_{pids[1]}.db")]
    assert reports == ["worker-1.json", "worker-2.json"]
    assert sorted((w["worker"], w.get("status")) for w in health["workers"]) == [(1, "ok"), (2, "ok")]


@pytest.mark.slow
def test_workers_import_the_supervisors_package_whatever_the_folder_holds(store, database_url, tmp_path):
    """A folder with a `recording/` of its own, as a checkout is (without the installed
    package's `recording.migrations`): the workers must not import it."""
    (tmp_path / "recording").mkdir()
    (tmp_path / "recording" / "__init__.py").write_text(
        'raise SystemExit("imported the recording package of the current folder")\n')
    console_script = Path(sys.executable).parent / "recording-agi"
    service = Workers(database_url, tmp_path, program=[str(console_script)])
    try:
        calls = place_calls(service.port, 10, 2)
    finally:
        code, log = service.stop()

    assert code == 0, log
    assert "imported the recording package of the current folder" not in log
    assert "unexpectedly" not in log
    assert [c.status for c in calls] == ["STARTED"] * 10


def test_a_worker_is_started_without_the_current_folder_on_its_path(tmp_path):
    settings = Settings(journal_dir=str(tmp_path / "journal"), workers=2)
    command = worker_command()
    assert command[:4] == [sys.executable, "-P", "-m", "recording"]
    env = worker_environment(settings, 2, {"PYTHONPATH": "/opt/x"}, shared=tmp_path)
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")
    assert env["RECORDING_HEALTH_DIR"] == str(tmp_path / "health")
    assert env["RECORDING_WORKER_INDEX"] == "2"
    assert env["PYTHONPATH"].split(os.pathsep)[-1] == "/opt/x"


@pytest.mark.parametrize("first, safe, expected", [
    (str(PACKAGE_ROOT), False, str(PACKAGE_ROOT)),  # `python -m recording` run in the checkout
    ("/usr/local/bin", False, None),                 # the console script
    (str(PACKAGE_ROOT), True, None),                 # -P: the folder was not on the path
])
def test_the_folder_of_the_supervisors_script_when_it_gave_the_package(first, safe, expected):
    assert import_path([first, "/usr/lib/python3.11"], safe) == expected


def test_the_worker_environment_puts_that_folder_first(tmp_path, monkeypatch):
    monkeypatch.setattr(workers_module, "import_path", lambda: "/checkout")
    env = worker_environment(Settings(journal_dir=str(tmp_path)), 1, {"PYTHONPATH": "/opt/x"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/checkout", "/opt/x"])
    assert worker_environment(Settings(journal_dir=str(tmp_path)), 1, {})["PYTHONPATH"] == "/checkout"


@pytest.mark.slow
@pytest.mark.postgres
def test_healthz_tells_the_service_state_whichever_worker_answers(postgres, tmp_path):  # noqa: F811
    service = Workers(postgres.url, tmp_path, http=True, extra_env={"RECORDING_DIRECTORY_REFRESH": "0.5"})
    try:
        healthy = health_until_both_answered(service)

        # One worker journals: the database is stopped and one call reaches one worker.
        postgres.stop("fast")
        try:
            call = FakeAsterisk(service.port, timeout=15).call(f"recording/start?apiKey={API_KEY}&tag=away")
            wait_until(lambda: service.served_by(call.uniqueid), 10, "the call logged")
            journaling = service.served_by(call.uniqueid)
            # Each worker publishes its report every second (PUBLISH_EVERY); until then its
            # sibling answers from the one before.
            wait_until(lambda: published(service, journaling) == {"degraded"}, 2 * PUBLISH_EVERY + 1,
                       "the journaling worker's report published")
            degraded = health_until_both_answered(service)
        finally:
            postgres.start()
        wait_until(lambda: HTTPClient(service.http_port).get("/healthz").json["status"] == "ok", 60,
                   "the journal replayed")

        # No worker can start a recording: no apiKey is known any more.
        cleared = Store(postgres.url)
        try:
            with cleared.engine.begin() as conn:
                conn.execute(text("DELETE FROM system_variables"))
        finally:
            cleared.close()
        wait_until(lambda: published(service, {1, 2}) == {"unavailable"}, 30, "no apiKey, both workers said")
        failing = health_until_both_answered(service)
    finally:
        code, log = service.stop()

    assert code == 0, log
    assert all(a.status == 200 and a.json["status"] == "ok" for a in healthy)
    assert (call.status, call.variables["RECORDING_DEFERRED"]) == ("STARTED", "1")
    (worker,) = journaling
    for answer in degraded:
        report = answer.json
        assert answer.status == 200 and report["ok"] is True and report["status"] == "degraded", report
        assert report["database"] == "away" and report["journalBacklog"] >= 1
        assert report["problems"] == [
            f"worker {worker}: the database is away: recordings start and their legs are journaled"]
        assert {w["worker"]: w["database"] for w in report["workers"]} == {worker: "away", 3 - worker: "up"}
    for answer in failing:
        assert answer.status == 503 and answer.json["status"] == "unavailable" and answer.json["ok"] is False
        assert answer.json["problems"] == ["workers 1, 2: no apiKey is known (recording-agi apikey generate)"]


def test_a_folder_left_by_a_killed_supervisor_is_removed_by_the_next(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, timeout=30)
    dead = int(ended.stdout)
    left = tmp_path / f"recording-agi-workers-{dead}-x1"
    (left / "metrics").mkdir(parents=True)
    (left / "metrics" / "counter_1.db").write_bytes(b"\0" * 8)
    running = tmp_path / f"recording-agi-workers-{os.getppid()}-x2"
    running.mkdir()

    shared = make_shared(str(tmp_path))

    assert not left.exists() and running.exists()
    assert shared.name.startswith(f"recording-agi-workers-{os.getpid()}-")
    assert sorted(p.name for p in shared.iterdir()) == ["health", "metrics"]
    assert oct(shared.stat().st_mode & 0o777) == "0o700"
