"""Webhooks are never lost: a receiver down for a while, a service SIGKILLed with deliveries
pending, the database away during calls (events emitted once, when the journal is replayed), and
two service processes on one database (each event delivered once)."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import defaultdict

import pytest
from sqlalchemy import text

from recording.storage.outbox import Outbox
from recording.storage.store import Store
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve
from tests.recording.test_outage import outage_settings, postgres  # noqa: F401 (fixtures)
from tests.recording.test_webhooks import receiver, subscribe  # noqa: F401 (fixture)
from tests.service_runner import RunningService
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow
KEY = f"apiKey={API_KEY}"


def calls(asterisk: FakeAsterisk, count: int, *, pause_every: int = 3, deferred: list | None = None
          ) -> dict[str, list[str]]:
    """``count`` calls, each started and stopped (every ``pause_every``th paused and resumed
    between): the kinds each leg must give, by leg id. ``deferred`` gets each start's
    RECORDING_DEFERRED."""
    expected = {}
    for number in range(count):
        call = asterisk.call(f"recording/start?{KEY}&tag=W{number}")
        assert call.status == "STARTED", call.error
        if deferred is not None:
            deferred.append(call.variables["RECORDING_DEFERRED"])
        kinds = ["started"]
        if number % pause_every == 0:
            assert asterisk.call(f"recording/pause?{KEY}", uniqueid=call.uniqueid).status == "PAUSED"
            assert asterisk.call(f"recording/resume?{KEY}", uniqueid=call.uniqueid).status == "RESUMED"
            kinds += ["paused", "resumed"]
        assert asterisk.call(f"recording/stop?{KEY}", uniqueid=call.uniqueid).status == "STOPPED"
        expected[call.variables["RECORDING_ID"]] = kinds + ["ended"]
    return expected


def arrived_in_order(receiver: Receiver, expected: dict[str, list[str]]) -> bool:
    """True once every leg's events arrived; each in order of first arrival."""
    return all(first_arrivals(receiver, leg) == kinds for leg, kinds in expected.items())


def first_arrivals(receiver: Receiver, leg: str) -> list[str]:
    seen, order = set(), []
    for r in receiver.events(leg):
        if r.id not in seen:
            seen.add(r.id)
            order.append(r.kind)
    return order


def assert_once_or_again_with_the_same_id(receiver: Receiver) -> None:
    """An event that came twice came with its own id both times, and no id stands for two."""
    ids = defaultdict(set)
    for r in receiver.events():
        ids[(r.leg, r.kind, r.body["timestamp"])].add(r.id)
    assert all(len(found) == 1 for found in ids.values()), ids
    assert all(r.verified for r in receiver.events())


def test_a_receiver_down_for_a_while_gets_everything_in_order(store, settings, cli, receiver):
    subscribe(cli, receiver)
    with RunningService(settings.with_(webhook_timeout=1.0)) as running:
        asterisk = FakeAsterisk(running.port)
        receiver.stop()
        expected = calls(asterisk, 9)
        outbox = Outbox(store)
        wait_until(lambda: any(d.attempts for d in outbox.deliveries()), 10, "a failed try while the receiver is down")
        time.sleep(1.0)
        receiver.start()
        wait_until(lambda: arrived_in_order(receiver, expected), 60, "every leg's events, in order")
    assert_once_or_again_with_the_same_id(receiver)
    assert {d.state for d in Outbox(store).deliveries(limit=1000)} == {"delivered"}


def test_sigkill_with_deliveries_pending_then_restart(store, database_url, tmp_path, cli, receiver):
    subscribe(cli, receiver)
    env = {"RECORDING_WEBHOOK_TIMEOUT": "1", "RECORDING_JOURNAL_DIR": str(tmp_path / "journal")}
    receiver.stop()
    server = Serve(database_url, tmp_path, extra_env=env)
    try:
        expected = calls(FakeAsterisk(server.port), 6)
        outbox = Outbox(store)
        wait_until(lambda: any(d.attempts for d in outbox.deliveries()), 10, "a failed try")
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.communicate(timeout=30)
    assert not receiver.events()
    pending = [d for d in outbox.deliveries(limit=1000) if d.state == "pending"]
    assert len(pending) == sum(len(kinds) for kinds in expected.values())

    receiver.start()
    again = Serve(database_url, tmp_path, extra_env=env)
    try:
        wait_until(lambda: arrived_in_order(receiver, expected), 60, "every leg's events after the restart")
    finally:
        code, _, log = again.stop()
    assert code == 0, log
    assert_once_or_again_with_the_same_id(receiver)


def test_two_processes_on_one_database_deliver_each_event_once(store, settings, cli, receiver, tmp_path):
    subscribe(cli, receiver)
    first_settings = settings.with_(journal_dir=str(tmp_path / "one"))
    second_settings = settings.with_(journal_dir=str(tmp_path / "two"))
    with RunningService(first_settings) as one, RunningService(second_settings) as two:
        expected = calls(FakeAsterisk(one.port), 8) | calls(FakeAsterisk(two.port), 8)
        wait_until(lambda: arrived_in_order(receiver, expected), 30, "every leg's events")
        time.sleep(1.0)  # time for a second copy to arrive, if one were sent
        delivered = one.app.webhooks.outcomes["delivered"] + two.app.webhooks.outcomes["delivered"]
    events = sum(len(kinds) for kinds in expected.values())
    assert len(receiver.events()) == len({r.id for r in receiver.events()}) == events
    assert delivered == events


def test_a_locked_sqlite_database_during_calls_emits_each_event_once_at_replay(
        store, settings, cli, receiver, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's database goes away in the next test (a cluster of the test's own)")
    subscribe(cli, receiver)
    path = database_url.removeprefix("sqlite:///")
    with RunningService(settings.with_(database_budget=0.25, webhook_timeout=1.0)) as running:
        asterisk = FakeAsterisk(running.port, timeout=15)
        expected = calls(asterisk, 2)
        # Another process holds the write lock: the service cannot write, so it journals.
        blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        deferred: list = []
        try:
            expected |= calls(asterisk, 4, deferred=deferred)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert "1" in deferred
        wait_until(lambda: not running.app.persister.journaling, 30, "journal replayed")
        wait_until(lambda: arrived_in_order(receiver, expected), 60, "every leg's events")
    with store.engine.connect() as conn:
        written = conn.execute(text("SELECT leg_id, kind FROM webhook_events ORDER BY id")).all()
    assert sorted(written) == sorted((leg, kind) for leg, kinds in expected.items() for kind in kinds)
    assert_once_or_again_with_the_same_id(receiver)


def test_the_database_away_during_calls_emits_each_event_once_at_replay(outage_settings, postgres, receiver):  # noqa: F811
    owner = Store(postgres.url)
    try:
        outbox = Outbox(owner)
        from recording.ops.webhooks import new_secret

        receiver.secret = new_secret()
        outbox.add(receiver.url(), receiver.secret)
        with RunningService(outage_settings.with_(webhook_timeout=1.0)) as service:
            asterisk = FakeAsterisk(service.port, timeout=10)
            before = calls(asterisk, 3)
            postgres.stop("immediate")
            during = calls(asterisk, 6)
            assert service.app.persister.journaling
            postgres.start()
            wait_until(lambda: not service.app.persister.journaling, 30, "journal replayed")
            expected = before | during
            wait_until(lambda: arrived_in_order(receiver, expected), 60, "every leg's events")
        with owner.engine.connect() as conn:
            written = conn.execute(text("SELECT leg_id, kind FROM webhook_events ORDER BY id")).all()
    finally:
        owner.close()
    assert sorted(written) == sorted((leg, kind) for leg, kinds in expected.items() for kind in kinds)
    assert_once_or_again_with_the_same_id(receiver)


def test_serve_with_two_workers_delivers_each_event_once(store, database_url, tmp_path, cli, receiver):
    from tests.recording.test_workers import Workers, place_calls

    subscribe(cli, receiver)
    service = Workers(database_url, tmp_path, extra_env={"RECORDING_WEBHOOK_TIMEOUT": "2"})
    try:
        placed = place_calls(service.port, 40, 4)
        assert [c.status for c in placed] == ["STARTED"] * 40
        legs = {c.variables["RECORDING_ID"] for c in placed}
        wait_until(lambda: {r.leg for r in receiver.events()} >= legs, 30, "every leg's start at the receiver")
        time.sleep(1.0)  # time for a second copy to arrive, if one were sent
    finally:
        code, log = service.stop()
    assert code == 0, log
    assert len(receiver.events()) == len({r.id for r in receiver.events()}) == 40
    assert {d.state for d in Outbox(store).deliveries(limit=100)} == {"delivered"}
