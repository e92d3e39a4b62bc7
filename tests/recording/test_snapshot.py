"""The directory snapshot next to the journal: written atomically and owner-only on every read of
the directory, never holding the key; found among the ``worker-N`` folders; served from by a
`serve` that cannot reach its database, refused when there is none or it is of another
database; and `check` telling that case (a warning) apart from a real fault."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recording.cli import main
from recording.domain import DirectorySnapshot, UserRef
from recording.storage import snapshot as snapshots
from recording.storage.store import normalize_url, redact_url
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY, POSTGRES
from tests.recording.test_cli import Serve
from tests.waiting import wait_until

NOW = datetime.now(timezone.utc)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def directory(key_hash: str | None) -> DirectorySnapshot:
    fred = UserRef(7, "Fred", frozenset({"Recording Manager"}))
    return DirectorySnapshot(key_hash, {"fred": fred}, {"410": 7})


def shown(url: str) -> str:
    return redact_url(normalize_url(url))


# --- the file ------------------------------------------------------------------------------------


def test_a_snapshot_round_trips_owner_only_and_leaves_no_temporary_file(tmp_path, key_hash):
    path = snapshots.save(tmp_path / "journal", directory(key_hash), "postgresql+psycopg://u:***@db/x", NOW)

    assert path == tmp_path / "journal" / snapshots.NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "journal").stat().st_mode & 0o777 == 0o700
    assert os.listdir(tmp_path / "journal") == [snapshots.NAME]
    raw = path.read_bytes()
    assert key_hash.encode() in raw and API_KEY.encode() not in raw
    found = snapshots.load(path)
    assert found.directory == directory(key_hash)
    assert found.directory.user("FRED").is_manager and found.directory.attached("410") == 7
    assert (found.taken_at, found.database) == (NOW, "postgresql+psycopg://u:***@db/x")


def test_a_new_snapshot_replaces_the_old_one_whole(tmp_path, key_hash):
    folder = tmp_path / "journal"
    snapshots.save(folder, directory(key_hash), "db", NOW - timedelta(hours=1))
    snapshots.save(folder, DirectorySnapshot(key_hash, {}, {}), "db", NOW)

    found = snapshots.find(folder, "db")
    assert found.taken_at == NOW and found.directory.users == {}
    assert os.listdir(folder) == [snapshots.NAME]


def test_the_newest_snapshot_of_this_database_is_found_among_worker_folders(tmp_path, key_hash):
    top = tmp_path / "journal"
    snapshots.save(top / "worker-1", directory(key_hash), "db", NOW - timedelta(minutes=5))
    snapshots.save(top / "worker-2", directory(key_hash), "db", NOW - timedelta(minutes=1))
    snapshots.save(top / "worker-3", directory(key_hash), "another db", NOW)

    assert snapshots.find(top, "db").path == top / "worker-2" / snapshots.NAME
    # A worker looks in its own folder, its parent and its siblings.
    assert snapshots.find(top / "worker-1", "db").path == top / "worker-2" / snapshots.NAME
    assert snapshots.find(top / "worker-4", "db").path == top / "worker-2" / snapshots.NAME
    assert snapshots.find(top / "worker-3", "another db").taken_at == NOW
    assert snapshots.find(tmp_path / "elsewhere", "db") is None


def test_a_file_that_is_not_a_snapshot_is_ignored_and_said(tmp_path, caplog):
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / snapshots.NAME).write_text('{"version": 1, "taken_at": "yesterday"')

    assert snapshots.find(folder, "db") is None
    assert "is not a directory snapshot this version can use" in caplog.text


def test_the_service_keeps_the_snapshot_on_every_refresh(service, store, settings, key_hash):
    path = Path(settings.journal_dir) / snapshots.NAME
    first = wait_until(lambda: snapshots.load(path), 10, "a snapshot after the start")
    assert first.database == shown(settings.database_url)
    assert first.directory.api_key_hash == key_hash
    assert path.stat().st_mode & 0o777 == 0o600

    store.add_user("newbie", ["agents"])
    store.attach_extension("412", "newbie")

    later = wait_until(
        lambda: (s := snapshots.load(path)) and s.directory.user("newbie") and s, 10, "newbie in the snapshot"
    )
    newbie = later.directory.user("newbie")
    assert later.taken_at > first.taken_at
    assert newbie.groups == {"agents"} and later.directory.attached("412") == newbie.id
    assert API_KEY.encode() not in path.read_bytes()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{snapshots.NAME}")]


# --- serve without its database ------------------------------------------------------------------


def serve_env(tmp_path: Path, **extra) -> dict:
    return {"RECORDING_JOURNAL_DIR": str(tmp_path / "journal"), "RECORDING_DATABASE_BUDGET": "0.25", **extra}


def test_serve_from_a_week_old_snapshot_with_a_warning(tmp_path, key_hash):
    url = f"postgresql+psycopg://root:hunter2@127.0.0.1:{closed_port()}/recording"
    snapshots.save(tmp_path / "journal", directory(key_hash), shown(url), NOW - timedelta(days=8))

    server = Serve(url, tmp_path, extra_env=serve_env(tmp_path))
    asterisk = FakeAsterisk(server.port)
    try:
        started = asterisk.call(f"recording/start?apiKey={API_KEY}&tag=old", channel="PJSIP/410-00000001")
        agent = asterisk.call(f"recording/start?apiKey={API_KEY}&tag=agent&agentLoginName=FRED")
        wrong = asterisk.call("recording/start?apiKey=not-the-key&tag=wrong")
        # fred is attached to 410 in the snapshot, so the leg is his to stop.
        stopped = asterisk.call(f"recording/stop?apiKey={API_KEY}&agentLoginName=fred", uniqueid=started.uniqueid,
                                channel="PJSIP/410-00000001")
    finally:
        code, _, log = server.stop()

    assert [c.status for c in (started, agent, wrong, stopped)] == ["STARTED", "STARTED", "DENIED", "STOPPED"]
    assert started.variables["RECORDING_DEFERRED"] == agent.variables["RECORDING_DEFERRED"] == "1"
    assert wrong.error == "the apiKey is not valid"
    assert code == 0, log
    assert log.count("started without the database") == 1
    assert "is 8.0 days old, older than RECORDING_SNAPSHOT_MAX_AGE" in log
    assert "hunter2" not in log and API_KEY not in log
    journaled = "".join(p.read_text() for p in (tmp_path / "journal").glob("journal-*.jsonl"))
    assert journaled.count('"kind":"leg"') == 2 and '"login":"Fred"' in journaled
    assert journaled.count('"kind":"change"') == 1


def refusal(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECORDING_DATABASE_URL": url, **serve_env(tmp_path)}
    for name in ("RECORDING_AGI_LISTEN", "RECORDING_WORKERS", "RECORDING_WORKER_INDEX"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "recording", "serve", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [("--listen", "127.0.0.1:0"), ("--workers", "2", "--listen", "127.0.0.1:4599")])
def test_no_snapshot_and_no_database_refuses_in_one_sentence(tmp_path, args):
    url = f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/recording"
    started = time.monotonic()
    result = refusal(url, tmp_path, *args)

    assert result.returncode == 1 and time.monotonic() - started < 30
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("recording-agi:")]
    assert "unavailable" in line and "Connection refused" in line
    assert f"and there is no directory snapshot in {tmp_path / 'journal'} to serve from" in line
    assert "Traceback" not in result.stderr and "listening" not in result.stderr


def test_a_snapshot_of_another_database_is_not_served_from(tmp_path, key_hash):
    url = f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/recording"
    snapshots.save(tmp_path / "journal", directory(key_hash), "postgresql+psycopg://root@db9/other", NOW)

    result = refusal(url, tmp_path, "--listen", "127.0.0.1:0")

    assert result.returncode == 1
    assert "is of another database (postgresql+psycopg://root@db9/other)" in result.stderr


def test_a_database_that_turns_the_connection_away_is_a_fault_not_an_outage(tmp_path, key_hash):
    # The server answers, and says the database does not exist: waiting will not fix that.
    url = POSTGRES.rsplit("/", 1)[0] + "/no_such_database_13"
    snapshots.save(tmp_path / "journal", directory(key_hash), shown(url), NOW)

    result = refusal(url, tmp_path, "--listen", "127.0.0.1:0")

    assert result.returncode == 1 and 'database "no_such_database_13" does not exist' in result.stderr
    assert "started without the database" not in result.stderr


# --- check ----------------------------------------------------------------------------------------


def check_lines(url: str, tmp_path: Path, capsys) -> tuple[int, dict[str, str]]:
    code = main(["--database-url", url, "check"])
    out = capsys.readouterr().out
    return code, {line.split(":", 1)[0].split(None, 1)[1]: line for line in out.splitlines()}


@pytest.fixture
def check_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDING_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("RECORDING_AGI_LISTEN", "127.0.0.1:0")
    for name in ("RECORDING_HTTP_LISTEN", "RECORDING_AMI_URL"):
        monkeypatch.delenv(name, raising=False)


def test_check_warns_of_an_unreachable_database_with_a_snapshot_and_passes(tmp_path, key_hash, capsys, check_env):
    url = f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/recording"
    code, lines = check_lines(url, tmp_path, capsys)
    assert code == 1 and lines["database"].startswith("FAIL database: ")
    assert "no directory snapshot of it" in lines["database"]

    snapshots.save(tmp_path / "journal", directory(key_hash), shown(url), NOW - timedelta(minutes=3))
    code, lines = check_lines(url, tmp_path, capsys)

    assert code == 0, lines
    assert lines["database"].startswith(
        f"WARN database: database unreachable, will serve from the snapshot of {(NOW - timedelta(minutes=3)).isoformat(timespec='seconds')} "
    )
    assert "Connection refused" in lines["database"] and "older" not in lines["database"]
    assert lines["schema"].startswith("WARN schema: not checked")
    assert lines["apikey"] == "WARN apikey: the snapshot holds an apiKey hash"

    snapshots.save(tmp_path / "journal", directory(key_hash), shown(url), NOW - timedelta(days=9))
    code, lines = check_lines(url, tmp_path, capsys)
    assert code == 0 and "older than RECORDING_SNAPSHOT_MAX_AGE: it serves all the same" in lines["database"]

    snapshots.save(tmp_path / "journal", directory(None), shown(url), NOW)
    code, lines = check_lines(url, tmp_path, capsys)
    assert code == 1 and lines["apikey"].startswith("FAIL apikey: none in the snapshot")


def test_check_fails_a_database_that_turns_the_connection_away_even_with_a_snapshot(tmp_path, key_hash, capsys,
                                                                                    check_env):
    url = POSTGRES.rsplit("/", 1)[0] + "/no_such_database_13"
    snapshots.save(tmp_path / "journal", directory(key_hash), shown(url), NOW)

    code, lines = check_lines(url, tmp_path, capsys)

    assert code == 1
    assert lines["database"].startswith("FAIL database: ") and "does not exist" in lines["database"]
