"""Running it as a service: metrics, health, allow lists, wrong keys slowed down and logged
once, JSON logs, `check`, and SIGHUP reloading a config file."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import threading
import time

from sqlalchemy import text

from recording.cli import main
from recording.ops.logs import configure
from tests.fake_asterisk import FakeAsterisk
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve
from tests.service_runner import RunningService

START = f"recording/start?apiKey={API_KEY}"


def sample(metrics: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text; 0 when it is absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    for line in metrics.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return 0.0


def test_metrics_count_sessions_requests_and_wrong_keys(store, settings):
    with RunningService(settings.with_(http_listen="127.0.0.1:0")) as running:
        asterisk = FakeAsterisk(running.port)
        for _ in range(3):
            asterisk.call(START)
        asterisk.call("recording/start?apiKey=wrong")
        asterisk.call("health")
        http = HTTPClient(running.app.http_port)
        http.post("/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="410", apiKey=API_KEY)
        scraped = http.get("/metrics")

    body = scraped.body
    assert scraped.status == 200 and scraped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert sample(body, "recording_sessions_total", route="recording/start", status="STARTED") == 3
    assert sample(body, "recording_sessions_total", route="recording/start", status="DENIED") == 1
    assert sample(body, "recording_session_seconds_count", route="recording/start") == 4
    assert sample(body, "recording_database_seconds_count") >= 3
    assert sample(body, "recording_apikey_failures_total") == 1
    assert sample(body, "recording_journal_backlog") == 0
    assert sample(body, "recording_http_requests_total",
                  path="/servicemanager/rest/CallManagementAPI/start", status="503") == 1


def test_a_scrape_in_the_format_the_scraper_asks_for(store, settings):
    with RunningService(settings.with_(metrics_listen="127.0.0.1:0")) as running:
        http = HTTPClient(running.app.metrics_port)
        openmetrics = http.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        unreadable = http.request("GET", "/metrics", headers={"Accept": "text/plain; version=four"})
        plain = http.get("/metrics")

    assert openmetrics.status == 200 and openmetrics.body.endswith("# EOF\n")
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "# TYPE recording_sessions counter" in openmetrics.body
    assert unreadable.status == 406
    assert unreadable.body == ("the Accept header 'text/plain; version=four' names a format version that is not "
                               "a number; ask for text/plain or application/openmetrics-text\n")
    assert plain.status == 200 and plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE recording_sessions_total counter" in plain.body


def test_health_over_http_and_fastagi(store, settings):
    with RunningService(settings.with_(metrics_listen="127.0.0.1:0")) as running:
        report = HTTPClient(running.app.metrics_port).get("/healthz")
        call = FakeAsterisk(running.port).call("health")

    assert report.status == 200
    assert report.json.items() >= {"ok": True, "status": "ok", "database": "up", "ami": "off",
                                   "journalBacklog": 0}.items()
    assert (call.status, call.error) == ("OK", "")


def test_without_an_api_key_the_service_says_it_cannot_record(store, settings):
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM system_variables"))
    with RunningService(settings.with_(metrics_listen="127.0.0.1:0")) as running:
        report = HTTPClient(running.app.metrics_port).get("/healthz")
        call = FakeAsterisk(running.port).call("health")

    assert report.status == 503 and report.json["status"] == "unavailable"
    assert call.status == "ERROR" and "no apiKey is known" in call.error


def test_fastagi_from_a_host_not_on_the_allow_list_is_refused(store, settings, caplog):
    with RunningService(settings.with_(agi_allow="10.0.0.0/8, 192.168.1.5")) as running:
        calls = [FakeAsterisk(running.port).call(START) for _ in range(3)]

    # Closed before a word is read or sent: no command, no status for the dialplan.
    assert [(c.commands, c.status) for c in calls] == [([], None)] * 3
    refusals = [r for r in caplog.records if r.name == "recording.audit" and "allow list" in r.getMessage()]
    assert len(refusals) == 1 and "127.0.0.1" in refusals[0].getMessage()
    assert store.find_legs() == []


def test_http_from_a_client_not_on_the_allow_list_is_refused(store, settings):
    with RunningService(settings.with_(http_listen="127.0.0.1:0", http_allow="10.0.0.0/8")) as running:
        answer = HTTPClient(running.app.http_port).post(
            "/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 403 and "not on this service's list of allowed clients" in answer.body


def test_repeated_wrong_keys_are_slowed_and_logged_once(store, settings, caplog):
    limits = {"apikey_failure_threshold": 2, "apikey_failure_max_delay": 0.2, "apikey_failure_window": 60.0}
    with RunningService(settings.with_(**limits)) as running:
        asterisk = FakeAsterisk(running.port)
        statuses = [asterisk.call("recording/start?apiKey=guess").status for _ in range(4)]
        slowed = running.app.gate.limiter.delay("127.0.0.1")
        assert asterisk.call(START).status == "STARTED"
        after_success = running.app.gate.limiter.delay("127.0.0.1")

    assert statuses == ["DENIED"] * 4
    assert slowed > 0 and after_success == 0
    warnings = [r.getMessage() for r in caplog.records if "wrong apiKeys from" in r.getMessage()]
    assert warnings == ["FastAGI: 2 wrong apiKeys from 127.0.0.1 within 60s; its answers are slowed down (up to 0.2s)"]


def test_an_address_that_keeps_sending_wrong_keys_waits_before_its_key_is_hashed(store, settings):
    """Hashing a key (scrypt) is what a guesser makes the service pay for: the limiter's delay
    comes first."""
    limits = {"apikey_failure_threshold": 1, "apikey_failure_max_delay": 1.0, "apikey_failure_window": 60.0}
    with RunningService(settings.with_(**limits)) as running:
        asterisk = FakeAsterisk(running.port)
        assert asterisk.call("recording/start?apiKey=guess-1").status == "DENIED"
        hashed = running.app.directory.key_checks
        delay = running.app.gate.limiter.delay("127.0.0.1")
        calls = []
        guess = threading.Thread(target=lambda: calls.append(asterisk.call("recording/start?apiKey=guess-2")))
        started = time.monotonic()
        guess.start()
        time.sleep(delay / 2)
        during = running.app.directory.key_checks
        guess.join(10)
        elapsed = time.monotonic() - started

    assert delay == 0.25 and during == hashed
    assert calls[0].status == "DENIED" and elapsed >= delay
    assert running.app.directory.key_checks == hashed + 1


def test_json_logs_are_one_object_per_line_and_redacted():
    stream = io.StringIO()
    handler = configure("INFO", stream=stream, fmt="json", prefix="worker 2")
    try:
        logging.getLogger("recording.test").warning("agi_request: agi://h/recording/start?apiKey=%s", "s3cr3t")
    finally:
        logging.getLogger().removeHandler(handler)

    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "process"}
    assert entry["level"] == "WARNING" and entry["process"] == "worker 2"
    assert "s3cr3t" not in line and "apiKey=[redacted]" in entry["message"]


def test_check_passes_on_a_good_setup_and_fails_on_a_broken_one(store, database_url, tmp_path, capsys):
    good = main(["--database-url", database_url, "check", "--listen", "127.0.0.1:0"])
    out = capsys.readouterr().out
    assert good == 0, out
    assert re.search(r"^ok +database", out, re.M) and re.search(r"^ok +schema", out, re.M)
    # Without AMI nothing can be followed through a transfer, and check says so.
    assert re.search(r"^ok +ami: not configured .* calls are not followed through transfers and queues$", out, re.M)

    empty = f"sqlite:///{tmp_path}/empty.sqlite3"
    broken = main(["--database-url", empty, "check", "--listen", "127.0.0.1:0"])
    out = capsys.readouterr().out
    assert broken == 1
    assert re.search(r"^FAIL +schema: .*db upgrade", out, re.M)


def test_sighup_reloads_the_config_file(store, database_url, tmp_path):
    config = tmp_path / "recording-agi.conf"
    config.write_text("[recording-agi]\nmonitor_template = /rec/a/{uniqueid}.wav\n")
    server = Serve(database_url, tmp_path, extra_env={
        "RECORDING_CONFIG": str(config), "RECORDING_JOURNAL_DIR": str(tmp_path / "journal")})
    try:
        before = FakeAsterisk(server.port).call(START)
        config.write_text("[recording-agi]\nmonitor_template = /rec/b/{uniqueid}.wav\nmax_sessions = 100\n")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("reloaded settings" in line for line in server.log) and time.monotonic() < deadline:
            server.log.append(server.process.stderr.readline())
        after = FakeAsterisk(server.port).call(START)
    finally:
        code, _, log = server.stop()

    assert before.variables["RECORDING_FILE"].startswith("/rec/a/")
    assert after.variables["RECORDING_FILE"].startswith("/rec/b/")
    assert "reloaded settings from" in log and "monitor_template" in log
    assert "these need a restart to change: max_sessions" in log
    assert code == 0
