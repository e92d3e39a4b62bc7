"""Integrity: once a leg has ended and its file (written by the fake Asterisk) stopped changing,
the service stores its size and SHA-256; `recordings verify` recomputes them and reports each
file that changed, vanished or was never hashed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fake_asterisk import FakeAsterisk, audio
from tests.recording.conftest import API_KEY
from tests.recording.test_recording_download import CHANNEL, recorded_call
from tests.recording.test_retention import age
from tests.recording.test_store import leg as new_leg
from tests.service_runner import RunningService
from tests.waiting import wait_until


def hashed(store, leg_id):
    return wait_until(lambda: store.leg(leg_id).file_sha256 and store.leg(leg_id), 10, f"leg {leg_id} hashed")


def test_a_complete_file_gets_its_size_and_sha256(pbx, store, people, cli):
    call, leg = recorded_call(pbx, store, seconds=1.5)
    content = Path(call.variables["RECORDING_FILE"]).read_bytes()

    done = hashed(store, leg.id)
    code, out, _ = cli("recordings", "find", "--unique-id", call.uniqueid, "--json")

    assert (done.file_size, done.file_sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert done.hashed_at >= done.end
    (row,) = json.loads(out)
    assert (row["fileSize"], row["sha256"], row["hashedAt"]) == (
        len(content), done.file_sha256, done.hashed_at.isoformat())


def test_a_file_still_being_written_is_not_hashed_until_it_stops(store, people, files_settings):
    # The leg ends (the h extension ran) but MixMonitor's thread still writes for a while:
    # Asterisk says nothing when the file is closed, so the file itself must fall quiet.
    with RunningService(files_settings.with_(file_quiet=1.0)) as running:
        pbx = FakeAsterisk(running.port, filesystem=Path("/"))
        call = pbx.call(f"recording/start?apiKey={API_KEY}&agentLoginName=fred", channel=CHANNEL)
        leg_id, path = call.variables["RECORDING_ID"], Path(call.variables["RECORDING_FILE"])
        rounds = running.app.aftercall.rounds
        wait_until(lambda: running.app.aftercall.rounds >= rounds + 5, 10, "the hasher passing while the leg records")
        assert store.leg(leg_id).file_sha256 is None
        ended = pbx.call(f"recording/hangup?apiKey={API_KEY}", channel=CHANNEL, uniqueid=call.uniqueid)
        assert ended.status == "ENDED"

        stop_writing = time.monotonic() + 2.0
        while time.monotonic() < stop_writing:
            pbx.talk(call.uniqueid, 0.02)
            last_write = datetime.now(timezone.utc)
            assert store.leg(leg_id).file_sha256 is None, "hashed while still being written"
            time.sleep(0.05)
        pbx.hang_up(call.uniqueid)

        done = hashed(store, leg_id)

    assert done.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert done.file_size == path.stat().st_size > 44 and done.hashed_at > last_write


def test_verify_reports_changed_vanished_and_unhashed_files(pbx, store, people, cli, monitor_dir):
    calls = {name: recorded_call(pbx, store, tag=name) for name in ("kept", "altered", "deleted", "grown")}
    for _, leg in calls.values():
        hashed(store, leg.id)
    paths = {name: Path(call.variables["RECORDING_FILE"]) for name, (call, _) in calls.items()}
    altered = bytearray(paths["altered"].read_bytes())
    altered[100] ^= 0xFF  # one sample changed, the size the same
    paths["altered"].write_bytes(bytes(altered))
    paths["deleted"].unlink()
    with open(paths["grown"], "ab") as handle:
        handle.write(audio(0.1))
    # A leg that ended long ago, never hashed (the service was not running then).
    unhashed = replace(new_leg("1795000000.1", state="ended"), file=str(monitor_dir / "old-1.wav"),
                       ended_at=datetime.now(timezone.utc) - timedelta(days=30))
    store.commit([unhashed])
    (monitor_dir / "old-1.wav").write_bytes(audio(0.1))

    code, out, err = cli("recordings", "verify")

    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert set(lines) == {calls["altered"][1].id, calls["deleted"][1].id, calls["grown"][1].id, unhashed.id}
    assert lines[calls["altered"][1].id].startswith("changed ") and "has SHA-256 " in lines[calls["altered"][1].id]
    assert lines[calls["grown"][1].id].startswith("changed ") and f"has {44 + 16000 + 1600} bytes" in out
    assert lines[calls["deleted"][1].id].startswith("vanished ") and f"no file at {paths['deleted']}" in out
    assert lines[unhashed.id].startswith("unhashed ") and "never hashed" in lines[unhashed.id]
    assert err.strip().endswith("5 legs checked: 1 unchanged, 2 changed, 1 vanished, 0 unreadable, 1 never hashed")


def test_verify_since_a_date_and_a_clean_run(pbx, store, people, cli):
    _, old = recorded_call(pbx, store, tag="old")
    _, new = recorded_call(pbx, store, tag="new")
    for leg in (old, new):
        hashed(store, leg.id)
    age(store, old.id, timedelta(days=10))
    Path(old.file).unlink()
    since = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()

    everything = cli("recordings", "verify")
    recent = cli("recordings", "verify", "--since", since)
    bad = cli("recordings", "verify", "--since", "last tuesday")

    assert everything[0] == 1 and "vanished " in everything[1]
    assert recent == (0, "1 legs checked: 1 unchanged, 0 changed, 0 vanished, 0 unreadable, 0 never hashed\n", "")
    assert bad[0] == 2 and "--since 'last tuesday' is not a date" in bad[2]


def test_verify_cannot_vouch_for_files_it_cannot_see(pbx, store, people, cli, monkeypatch, tmp_path):
    recorded_call(pbx, store)
    monkeypatch.setenv("RECORDING_MONITOR_MOUNT", str(tmp_path / "not-mounted"))

    code, out, err = cli("recordings", "verify")

    assert code == 1 and out == ""
    assert "nothing verified: the monitor directory" in err and "does not exist on this host" in err


def test_no_digest_is_stored_where_the_files_cannot_be_seen(store, files_settings, people, tmp_path, caplog):
    with RunningService(files_settings) as running:
        pbx = FakeAsterisk(running.port, filesystem=tmp_path / "elsewhere")
        _, leg = recorded_call(pbx, store)
        rounds = running.app.aftercall.rounds
        wait_until(lambda: running.app.aftercall.rounds >= rounds + 10, 10, "ten rounds of the after-call work")

        assert store.leg(leg.id).file_sha256 is None
    messages = [r.getMessage() for r in caplog.records if r.name == "recording.aftercall"]
    assert sum("not visible from this host, so none are hashed or purged" in m for m in messages) == 1


@pytest.fixture
def _threads_left():
    before = set(threading.enumerate())
    yield
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("recording-aftercall")]


def test_the_after_call_thread_stops_with_the_service(store, files_settings, _threads_left):
    with RunningService(files_settings):
        wait_until(lambda: any(t.name.startswith("recording-aftercall") for t in threading.enumerate()), 5,
                   "the after-call thread running")
