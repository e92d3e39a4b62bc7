"""Past a limit the dialplan still hears why, and nothing is lost: a server at its session
limit, a session past its deadline mid-start, and a SIGTERM with a call in flight."""

from __future__ import annotations

import signal
import socket
import threading
import time

from tests.fake_asterisk import FakeAsterisk, environment
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve
from tests.service_runner import RunningService

START = f"recording/start?apiKey={API_KEY}"


def test_a_server_at_its_session_limit_says_so(store, settings):
    with RunningService(settings.with_(max_sessions=1)) as running:
        holder = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        try:
            # A session that never answers holds the only slot until its reply timeout.
            holder.sendall(environment(START, channel="PJSIP/999-00000001", uniqueid="1795825765.900"))
            holder.recv(1024)
            call = FakeAsterisk(running.port).call(f"{START}&tag=busy")
        finally:
            holder.close()

    assert call.status == "ERROR"
    assert "limit of 1 sessions" in call.error
    assert call.mixmonitors == [] and store.find_legs(tag="busy") == []


def test_a_deadline_during_the_start_still_writes_the_leg_and_reports(store, settings):
    with RunningService(settings.with_(session_timeout=1.0, reply_timeout=5.0)) as running:
        started = time.monotonic()
        call = FakeAsterisk(running.port).call(f"{START}&tag=late", reply_delay=1.5, delay_only="EXEC MixMonitor")
        elapsed = time.monotonic() - started

    # The start was under way when the deadline came: it finished (the leg is written and the
    # dialplan told STARTED) and the session then ended at once.
    assert call.status == "STARTED"
    assert elapsed < 4
    (leg,) = store.find_legs(tag="late")
    assert call.variables[f"RECORDING_MIXMON_{leg.id}"] == call.mixmonitors[0].id and leg.state == "recording"


def test_sigterm_lets_the_call_in_flight_finish(store, database_url, tmp_path):
    server = Serve(database_url, tmp_path, extra_env={"RECORDING_JOURNAL_DIR": str(tmp_path / "journal")})
    calls = []
    caller = threading.Thread(target=lambda: calls.append(
        FakeAsterisk(server.port).call(f"{START}&tag=inflight", reply_delay=1.0, delay_only="EXEC")))
    caller.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    caller.join(15)
    code, _, log = server.stop()

    assert code == 0, log
    assert [c.status for c in calls] == ["STARTED"]
    assert [leg.tag for leg in store.find_legs(tag="inflight")] == ["inflight"]
    assert "stopping: finishing the sessions in flight" in log


def test_a_burst_at_start_up_checks_the_key_once(store, settings):
    with RunningService(settings) as running:
        calls = []
        threads = [threading.Thread(target=lambda: calls.append(FakeAsterisk(running.port).call(START)))
                   for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        checks = running.app.directory.key_checks

    assert [c.status for c in calls] == ["STARTED"] * 30
    # scrypt costs tens of milliseconds of CPU: one check for the burst, not thirty.
    assert checks == 1
