"""A service (re)started while its PostgreSQL cannot be reached, after an earlier run made the
directory snapshot: it serves from the snapshot, journals every write, reports `degraded`, and
once the database answers checks the schema and replays, with nothing lost or doubled; as one
process and as `serve --workers 2`. The cluster is the test's own (tests/throwaway_postgres.py)."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import text

from recording.ops.config import Settings
from recording.storage import snapshot as snapshots
from recording.storage.journal import Journal
from recording.storage.store import Store, redact_url
from tests.fake_asterisk import FakeAsterisk
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve
from tests.recording.test_outage import legs_by_unique_id
from tests.recording.test_workers import Workers
from tests.service_runner import RunningService
from tests.throwaway_postgres import prepared_cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(key_hash):
    """A PostgreSQL of the test's own with the schema, the apiKey, fred attached to 410, and a
    Recording Manager."""
    def prepare(store):
        store.set_api_key_hash(key_hash)
        store.add_user("fred")
        store.add_user("boss", ["Recording Manager"])
        store.attach_extension("410", "fred")

    with prepared_cluster(prepare) as cluster:
        yield cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(asterisk: FakeAsterisk, tag: str, *, extension: str = "411", agent: str | None = None, key: str = API_KEY):
    agent_arg = f"&agentLoginName={agent}" if agent else ""
    return asterisk.call(f"recording/start?apiKey={key}&tag={tag}{agent_arg}",
                         channel=f"PJSIP/{extension}-{abs(hash(tag)) % 0xffffffff:08x}")


def test_a_restart_while_the_database_is_away_serves_journals_and_replays(cluster, tmp_path):
    journal = tmp_path / "journal"
    health_port = free_port()
    env = {"RECORDING_JOURNAL_DIR": str(journal), "RECORDING_DATABASE_BUDGET": "0.25",
           "RECORDING_DIRECTORY_REFRESH": "0.5", "RECORDING_METRICS_LISTEN": f"127.0.0.1:{health_port}"}
    first = Serve(cluster.url, tmp_path, extra_env=env)
    before = start(FakeAsterisk(first.port), "before")
    code, _, _ = first.stop()
    assert code == 0 and before.status == "STARTED"
    kept = journal / snapshots.NAME
    assert kept.stat().st_mode & 0o777 == 0o600 and API_KEY.encode() not in kept.read_bytes()

    cluster.stop("immediate")
    second = Serve(cluster.url, tmp_path, extra_env=env)
    asterisk = FakeAsterisk(second.port)
    health = HTTPClient(health_port)
    try:
        plain = [start(asterisk, f"R{n}") for n in range(8)]
        agent = start(asterisk, "agent", agent="fred")
        attached = start(asterisk, "attached", extension="410")
        stopped = asterisk.call(f"recording/stop?apiKey={API_KEY}&agentLoginName=fred", uniqueid=attached.uniqueid,
                                channel=attached.channel)
        wrong = start(asterisk, "wrong", key="not-the-key")
        during = wait_until(lambda: health.get("/healthz"), 10, "/healthz answers")
        calls = plain + [agent, attached]
        assert [c.status for c in calls] == ["STARTED"] * len(calls), [c.error for c in calls]
        assert {c.variables["RECORDING_DEFERRED"] for c in calls} == {"1"}

        cluster.start()
        found = wait_until(
            lambda: legs if len(legs := legs_by_unique_id(cluster.url)) == len(calls) + 1 else None, 30,
            "every journaled leg replayed",
        )
        after = wait_until(lambda: (a := health.get("/healthz")).json["status"] == "ok" and a, 30, "healthz ok")
        later = start(asterisk, "later")
    finally:
        code, _, log = second.stop()

    assert code == 0, log
    assert (stopped.status, wrong.status) == ("STOPPED", "DENIED")
    assert (during.status, during.json["status"], during.json["database"]) == (200, "degraded", "away")
    assert during.json["directory"].startswith("snapshot of ")
    assert after.status == 200 and "directory" not in after.json
    assert later.status == "STARTED"
    # Each session told STARTED is one leg, once, under the id it was told.
    for call in [before] + calls:
        (leg,) = found[call.uniqueid]
        assert leg.id == call.variables["RECORDING_ID"]
    assert sorted(leg.tag for (leg,) in found.values()) == sorted(["before", "agent", "attached"] +
                                                                  [f"R{n}" for n in range(8)])
    owners = {leg.tag: (leg.owner, leg.ownership, leg.state) for (leg,) in found.values()}
    assert owners["agent"] == ("fred", "AGENT", "recording")
    assert owners["attached"] == ("fred", "EXTENSION", "stopped")
    assert owners["R0"] == (None, "DEFAULT", "recording")
    assert not list(journal.glob("journal-*.jsonl"))
    assert log.count("started without the database") == 1
    assert log.count("database available again") == 1
    assert API_KEY not in log


def test_a_user_added_during_the_outage_is_unknown_until_the_database_is_back(cluster, tmp_path):
    settings = Settings(
        database_url=cluster.url, agi_listen="127.0.0.1:0", journal_dir=str(tmp_path / "journal"),
        database_budget=0.25, environment_timeout=2.0, reply_timeout=2.0, directory_refresh=0.5,
    )
    with RunningService(settings):
        pass  # a run that read the directory, and so left its snapshot
    # The database lives on but the service cannot reach it (TCP off); an admin adds a user
    # over the Unix socket.
    cluster.stop()
    cluster.start(tcp=False)
    with RunningService(settings) as service:
        admin = Store(cluster.socket_url)
        try:
            admin.add_user("newbie")
        finally:
            admin.close()
        asterisk = FakeAsterisk(service.port)
        newbie = start(asterisk, "newbie", agent="newbie")
        stop = asterisk.call(f"recording/stop?apiKey={API_KEY}&agentLoginName=newbie", uniqueid=newbie.uniqueid,
                             channel=newbie.channel)
        unknown_during = service.run(service.app.directory.user("fred")), stop.status, stop.error

        cluster.stop()
        cluster.start()
        wait_until(lambda: not service.app.persister.journaling, 30, "journal replayed")
        known_after = wait_until(lambda: service.run(service.app.directory.user("newbie")), 10, "newbie known")
        again = start(asterisk, "newbie-again", agent="newbie")

    assert newbie.status == "STARTED" and newbie.variables["RECORDING_DEFERRED"] == "1"
    fred, status, error = unknown_during
    assert fred.login == "fred"  # in the snapshot
    assert status == "ERROR" and "cannot check whether 'newbie' may stop this recording now" in error
    assert known_after.login == "newbie"
    assert again.status == "STARTED" and again.variables["RECORDING_DEFERRED"] == "0"
    legs = legs_by_unique_id(cluster.url)
    (leg,) = legs[newbie.uniqueid]
    # Resolved when the leg reached the database.
    assert (leg.owner, leg.ownership, leg.id) == ("newbie", "AGENT", newbie.variables["RECORDING_ID"])


@pytest.fixture
def cluster_behind(key_hash, tmp_path):
    """As after installing a newer version during an outage: a database whose schema is behind
    the code (0002), stopped, and the snapshot a run of the older version left. (That run
    cannot be this version's, which would refuse the schema: the snapshot is written here as
    a run writes it.)"""
    def prepare(store):
        store.set_api_key_hash(key_hash)
        snapshots.save(tmp_path / "journal", store.directory(), redact_url(store.url))

    with prepared_cluster(prepare, revision="0002") as cluster:
        cluster.stop("immediate")
        yield cluster


def test_a_schema_that_is_behind_when_the_database_answers_stops_the_service(cluster_behind, tmp_path):
    cluster = cluster_behind
    journal = tmp_path / "journal"
    env = {"RECORDING_JOURNAL_DIR": str(journal), "RECORDING_DATABASE_BUDGET": "0.25"}
    second = Serve(cluster.url, tmp_path, extra_env=env)
    asterisk = FakeAsterisk(second.port)
    calls = [start(asterisk, f"S{n}") for n in range(5)]
    cluster.start()
    try:
        second.process.wait(30)
    finally:
        code, _, log = second.stop()

    assert [c.status for c in calls] == ["STARTED"] * 5
    assert code == 2, log
    assert log.strip().endswith("run 'recording-agi db upgrade'")
    assert "stopping: the database schema is at 0002 but this version needs" in log
    # Nothing replayed into the old schema; every leg waits in the journal. (Counted by hand:
    # the store reads the newest schema's columns, which 0002 lacks.)
    store = Store(cluster.url)
    try:
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM recording_legs")) == 0
    finally:
        store.close()
    assert Journal(journal).pending() == 5

    store = Store(cluster.url)
    store.upgrade()
    store.close()
    third = Serve(cluster.url, tmp_path, extra_env=env)
    try:
        found = wait_until(lambda: len(legs := legs_by_unique_id(cluster.url)) == 5 and legs, 30, "replayed")
    finally:
        assert third.stop()[0] == 0
    assert {leg.id for (leg,) in found.values()} == {c.variables["RECORDING_ID"] for c in calls}


def test_workers_start_from_their_snapshots_while_the_database_is_away(cluster, tmp_path):
    journal = tmp_path / "journal"
    first = Workers(cluster.url, tmp_path, journal=journal)
    assert first.stop()[0] == 0
    assert {p.parent.name for p in journal.rglob(snapshots.NAME)} == {"worker-1", "worker-2"}

    cluster.stop("immediate")
    second = Workers(cluster.url, tmp_path, journal=journal)
    try:
        asterisk = FakeAsterisk(second.port)
        calls = [start(asterisk, f"W{n}") for n in range(12)]
        cluster.start()
        found = wait_until(lambda: len(legs := legs_by_unique_id(cluster.url)) == 12 and legs, 40, "replayed")
    finally:
        code, log = second.stop()

    assert code == 0, log
    assert [c.status for c in calls] == ["STARTED"] * 12
    assert {c.variables["RECORDING_DEFERRED"] for c in calls} == {"1"}
    assert {leg.id for (leg,) in found.values()} == {c.variables["RECORDING_ID"] for c in calls}
    assert log.count("the workers start from the directory snapshot of") == 1
    assert log.count("started without the database") == 2
    assert not list(journal.rglob("journal-*.jsonl"))


def test_calls_journaled_before_a_sigkill_can_be_ended_after_the_restart(cluster, tmp_path):
    """The process killed during the outage journaled a start and a pause; the one started in
    its place (still without the database) knows those legs from the journal."""
    journal = tmp_path / "journal"
    env = {"RECORDING_JOURNAL_DIR": str(journal), "RECORDING_DATABASE_BUDGET": "0.25"}
    first = Serve(cluster.url, tmp_path, extra_env=env)
    asterisk = FakeAsterisk(first.port)
    cluster.stop("immediate")
    hung_up = start(asterisk, "hung-up", extension="410")
    paused = start(asterisk, "paused", extension="410")
    pause = asterisk.call(f"recording/pause?apiKey={API_KEY}", uniqueid=paused.uniqueid, channel=paused.channel)
    first.process.kill()
    first.process.communicate(timeout=30)

    second = Serve(cluster.url, tmp_path, extra_env=env)
    asterisk.port = second.port
    try:
        hangup = asterisk.call(f"recording/hangup?apiKey={API_KEY}", uniqueid=hung_up.uniqueid,
                               channel=hung_up.channel)
        # fred is attached to 410 (in the snapshot), so the legs are his to resume.
        resume = asterisk.call(f"recording/resume?apiKey={API_KEY}&agentLoginName=fred", uniqueid=paused.uniqueid,
                               channel=paused.channel)
        cluster.start()
        wait_until(lambda: len(legs_by_unique_id(cluster.url)) == 2, 30, "replayed")
        wait_until(lambda: not list(journal.glob("journal-*.jsonl")), 30, "the journal emptied")
        # Read once the whole journal is in: the legs arrive before the changes behind them.
        found = legs_by_unique_id(cluster.url)
    finally:
        code, _, log = second.stop()

    assert [c.status for c in (hung_up, paused, pause)] == ["STARTED", "STARTED", "PAUSED"]
    assert (hangup.status, resume.status) == ("ENDED", "RESUMED"), (hangup.error, resume.error)
    assert code == 0, log
    assert "2 legs the journal leaves recording are known" in log
    (ended,) = found[hung_up.uniqueid]
    (resumed,) = found[paused.uniqueid]
    assert (ended.state, ended.ended_by) == ("ended", "hangup")
    assert resumed.state == "recording" and len(resumed.pauses) == 1 and resumed.pauses[0].resumed_at is not None
    assert resumed.mixmonitor_id == resume.mixmonitors[0].id
