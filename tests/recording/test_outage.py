"""Nothing lost when the database goes away: a PostgreSQL cluster of the test's own is stopped,
stalled, or outlived by a SIGKILLed service, while calls keep coming."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from recording.ops.config import Settings
from recording.storage.store import Store
from tests.recording.conftest import API_KEY
from tests.fake_asterisk import FakeAsterisk
from tests.recording.test_cli import Serve
from tests.service_runner import RunningService
from tests.throwaway_postgres import prepared_cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres(key_hash):
    def prepare(store):
        store.set_api_key_hash(key_hash)
        store.add_user("fred")

    with prepared_cluster(prepare) as cluster:
        yield cluster


@pytest.fixture
def outage_settings(postgres, tmp_path):
    return Settings(
        database_url=postgres.url, agi_listen="127.0.0.1:0", journal_dir=str(tmp_path / "journal"),
        database_budget=0.25, environment_timeout=2.0, reply_timeout=2.0, directory_refresh=0.5,
    )


def legs_by_unique_id(url: str) -> dict[str, list]:
    store = Store(url)
    try:
        found: dict[str, list] = {}
        for leg in store.find_legs():
            found.setdefault(leg.unique_id, []).append(leg)
        return found
    finally:
        store.close()


class Caller(threading.Thread):
    """Places calls one after another until told to stop, like a steady stream of callers."""

    def __init__(self, port: int, pace: float = 0.02):
        super().__init__(daemon=True)
        self.asterisk = FakeAsterisk(port, timeout=10)
        self.pace = pace
        self.calls = []
        self.halt = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.halt.is_set():
            number += 1
            agent = "&agentLoginName=fred" if number % 3 == 0 else ""
            self.calls.append(self.asterisk.call(f"recording/start?apiKey={API_KEY}&tag=T{number}{agent}"))
            time.sleep(self.pace)

    def finish(self) -> list:
        self.halt.set()
        self.join(30)
        return self.calls


def test_a_stopped_database_loses_no_call(outage_settings, postgres, caplog):
    caplog.set_level("INFO")
    with RunningService(outage_settings) as service:
        caller = Caller(service.port)
        caller.start()
        wait_until(lambda: len(caller.calls) >= 10, 20, "10 calls before the outage")
        postgres.stop("immediate")
        before = len(caller.calls)
        wait_until(lambda: len(caller.calls) >= before + 20, 30, "20 calls during the outage")
        postgres.start()
        during = caller.calls[before:before + 20]
        wait_until(lambda: not service.app.persister.journaling, 30, "journal replayed")
        calls = caller.finish()

    assert [c.status for c in calls] == ["STARTED"] * len(calls), [c.error for c in calls if c.status != "STARTED"]
    assert all(c.variables["RECORDING_DEFERRED"] == "1" for c in during[1:])
    assert all(c.variables["RECORDING_DEFERRED"] == "0" for c in calls[:5])
    found = legs_by_unique_id(postgres.url)
    for number, call in enumerate(calls, 1):
        (leg,) = found[call.uniqueid]
        assert leg.id == call.variables["RECORDING_ID"]
        assert leg.tag == leg.external_reference == f"T{number}"
        assert (leg.owner, leg.ownership) == (("fred", "AGENT") if number % 3 == 0 else (None, "DEFAULT"))
    # The log tells the outage once each way, not once per session.
    messages = [r.getMessage() for r in caplog.records if r.name == "recording.persist"]
    assert sum(m.startswith("database unavailable") for m in messages) == 1
    assert sum(m.startswith("database available again") for m in messages) == 1


def test_a_stalled_database_journals_within_the_budget(outage_settings, postgres):
    with RunningService(outage_settings) as service:
        asterisk = FakeAsterisk(service.port)
        assert asterisk.call(f"recording/start?apiKey={API_KEY}&tag=warm").status == "STARTED"
        postgres.stall()
        try:
            started = time.monotonic()
            stalled = [asterisk.call(f"recording/start?apiKey={API_KEY}&tag=S{n}") for n in range(5)]
            elapsed = time.monotonic() - started
            # The database answers no write within the budget: not away, but not up either.
            health = service.app.health()
        finally:
            postgres.resume()
        wait_until(lambda: not service.app.persister.journaling, 30, "journal replayed")

    assert [c.status for c in stalled] == ["STARTED"] * 5
    assert [c.variables["RECORDING_DEFERRED"] for c in stalled] == ["1"] * 5
    assert (health["ok"], health["status"], health["database"]) == (True, "degraded", "slow")
    assert "slower than RECORDING_DATABASE_BUDGET" in health["problems"][0]
    # One budget for the first session; the rest go to the journal without waiting.
    assert elapsed < 5
    found = legs_by_unique_id(postgres.url)
    assert [found[c.uniqueid][0].tag for c in stalled] == [f"S{n}" for n in range(5)]


def test_sigkill_during_an_outage_then_restart_replays_the_journal(postgres, tmp_path):
    journal = tmp_path / "journal"
    env_journal = {"RECORDING_JOURNAL_DIR": str(journal), "RECORDING_DATABASE_BUDGET": "0.25"}
    server = Serve(postgres.url, tmp_path, extra_env=env_journal)
    asterisk = FakeAsterisk(server.port)
    postgres.stop("fast")
    calls = [asterisk.call(f"recording/start?apiKey={API_KEY}&tag=K{n}") for n in range(10)]
    server.process.send_signal(signal.SIGKILL)
    server.process.communicate(timeout=30)

    assert [c.status for c in calls] == ["STARTED"] * 10
    assert all(c.variables["RECORDING_DEFERRED"] == "1" for c in calls)
    assert any(journal.iterdir())

    postgres.start()
    again = Serve(postgres.url, tmp_path, extra_env=env_journal)
    try:
        found = wait_until(
            lambda: legs if len(legs := legs_by_unique_id(postgres.url)) == 10 else None, 30, "10 legs replayed"
        )
    finally:
        code, _, log = again.stop()

    assert code == 0, log
    assert sorted(leg.tag for (leg,) in found.values()) == sorted(f"K{n}" for n in range(10))
    assert {c.variables["RECORDING_ID"] for c in calls} == {leg.id for (leg,) in found.values()}
    assert "journaled writes from an earlier run" in log
    assert not [p for p in journal.iterdir() if p.name.startswith("journal-")]


def test_journal_status_command_lists_what_waits(tmp_path, capsys):
    from datetime import datetime, timezone

    from recording.cli import main
    from recording.storage.journal import Journal
    from tests.recording.test_store import leg

    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append([leg("7.1"), leg("7.2")])
    journal.close()

    code = main(["journal", "status", "--journal-dir", str(tmp_path / "j")])
    out = capsys.readouterr().out
    assert code == 0 and "2 writes wait" in out
    assert datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc).isoformat() in out


def test_a_database_restarted_while_idle_costs_no_write_its_journal(outage_settings, postgres, monkeypatch):
    """The writer thread keeps its connection between batches; PostgreSQL restarted while the
    service was idle leaves it dead. It is checked before its next use after a quiet spell, so
    that write goes to the database, not to the journal."""
    from recording.storage import store as stores

    monkeypatch.setattr(stores, "KEPT_IDLE", 0.5)
    with RunningService(outage_settings.with_(database_budget=5.0)) as service:
        asterisk = FakeAsterisk(service.port)
        start = asterisk.call(f"recording/start?apiKey={API_KEY}&tag=before")
        paused = asterisk.call(f"recording/pause?apiKey={API_KEY}", uniqueid=start.uniqueid)
        postgres.stop()
        postgres.start()
        time.sleep(1.0)
        stopped = asterisk.call(f"recording/stop?apiKey={API_KEY}", uniqueid=start.uniqueid)
        journaled = service.app.journal.appended

    assert (start.status, paused.status, stopped.status) == ("STARTED", "PAUSED", "STOPPED")
    assert stopped.variables["RECORDING_DEFERRED"] == "0" and journaled == 0
    (leg,) = legs_by_unique_id(postgres.url)[start.uniqueid]
    assert leg.state == "stopped"
