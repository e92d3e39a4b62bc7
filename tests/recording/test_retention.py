"""Retention and legal hold: `recordings purge` deletes the audio of ended legs past the period
(files the fake Asterisk wrote), keeps the leg as purged with when and why and one audit line;
held legs are kept; a purge killed half way is finished by the next one; the service purges by
itself once a day, in one process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from recording.errors import Conflict, NotFound
from recording.storage.models import RecordingLeg
from recording.storage.store import Store
from tests.recording.test_recording_download import begun_elsewhere, recorded_call
from tests.recording.test_store import leg as new_leg
from tests.service_runner import RunningService
from tests.waiting import wait_until

DAY = timedelta(days=1)


def age(store: Store, leg_id: str, by: timedelta) -> None:
    """Moves a leg back in time: it started and ended ``by`` earlier."""
    view = store.leg(leg_id)
    values = {"started_at": view.start - by}
    if view.end is not None:
        values["ended_at"] = view.end - by
    with store.engine.begin() as conn:
        conn.execute(update(RecordingLeg).where(RecordingLeg.id == leg_id).values(**values))


def old_call(pbx, store, **kwargs):
    """A recorded call that ended two days ago; returns its file and leg id."""
    call, leg = recorded_call(pbx, store, **kwargs)
    age(store, leg.id, 2 * DAY)
    return Path(call.variables["RECORDING_FILE"]), leg.id


def test_purge_deletes_old_audio_keeps_the_leg_and_writes_one_audit_line(pbx, store, people, cli, caplog):
    caplog.set_level(logging.INFO, logger="recording.audit")
    old_file, old = old_call(pbx, store, tag="OLD")
    held_file, held = old_call(pbx, store, tag="HELD")
    store.set_hold(held, held=True, by="boss", at=datetime.now(timezone.utc), reason="case 9")
    new_file = recorded_call(pbx, store, tag="NEW")[0].variables["RECORDING_FILE"]
    live_call, live = recorded_call(pbx, store, tag="LIVE", end=False)
    age(store, live.id, 2 * DAY)

    code, out, err = cli("recordings", "purge", "--older-than", "1d")

    assert code == 0, err
    assert not old_file.exists() and held_file.exists() and Path(new_file).exists()
    assert Path(live_call.variables["RECORDING_FILE"]).exists()
    purged = store.leg(old)
    assert (purged.state, purged.state_before_purge, purged.purge_reason) == (
        "purged", "ended", "older than 1d (recordings purge)")
    assert purged.purged_at is not None and purged.purge_started_at <= purged.purged_at
    assert purged.end is not None and purged.file == str(old_file)  # the leg itself stays whole
    assert (store.leg(held).state, store.leg(live.id).state) == ("ended", "recording")
    lines = out.splitlines()
    assert lines[0].startswith(f"purged    {old}") and f"deleted {old_file}" in lines[0]
    assert lines[1].startswith(f"held      {held}") and "by boss (case 9)" in lines[1]
    assert lines[-1].startswith("1 legs purged, 1 held legs kept (ended before ")
    audit = [r.getMessage() for r in caplog.records if r.name == "recording.audit" and "purged" in r.getMessage()]
    assert len(audit) == 1 and old in audit[0] and "older than 1d (recordings purge)" in audit[0]
    assert f"deleted {old_file}" in audit[0]

    code, out, _ = cli("recordings", "find", "--tag", "OLD", "--json")
    (row,) = __import__("json").loads(out)
    assert (row["state"], row["purgeReason"]) == ("purged", "older than 1d (recordings purge)")
    assert cli("recordings", "purge", "--older-than", "1d")[1].splitlines()[-1].startswith("0 legs purged")


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(pbx, store, people, cli):
    old_file, old = old_call(pbx, store)

    code, out, _ = cli("recordings", "purge", "--older-than", "1d", "--dry-run")

    assert code == 0 and out.startswith(f"would     {old}") and f"would delete {old_file}" in out
    assert "1 legs would be purged" in out
    assert old_file.exists() and store.leg(old).state == "ended" and store.leg(old).purge_started_at is None


def test_the_period_comes_from_the_option_or_the_setting(pbx, store, people, cli, monkeypatch):
    old_file, old = old_call(pbx, store)

    missing = cli("recordings", "purge")
    bad = cli("recordings", "purge", "--older-than", "90 days")
    monkeypatch.setenv("RECORDING_RETENTION", "36h")
    code, out, _ = cli("recordings", "purge")

    assert missing[0] == 2 and "no retention period: give --older-than" in missing[2]
    assert bad[0] == 2 and "--older-than '90 days' is not a period" in bad[2]
    assert code == 0 and not old_file.exists()
    assert store.leg(old).purge_reason == "older than 36h (RECORDING_RETENTION)"


def test_a_file_already_gone_is_marked_purged_and_said_so(pbx, store, people, cli):
    old_file, old = old_call(pbx, store)
    old_file.unlink()

    code, out, _ = cli("recordings", "purge", "--older-than", "1d")

    assert code == 0 and f"its file was already gone (no file at {old_file})" in out
    assert store.leg(old).state == "purged"


def test_nothing_is_purged_where_the_files_cannot_be_seen(pbx, store, people, cli, monitor_dir, monkeypatch):
    old_file, old = old_call(pbx, store)
    monkeypatch.setenv("RECORDING_MONITOR_MOUNT", str(monitor_dir.parent / "not-mounted"))
    (monitor_dir.parent / "empty-mount").mkdir()

    absent = cli("recordings", "purge", "--older-than", "1d")
    monkeypatch.setenv("RECORDING_MONITOR_MOUNT", str(monitor_dir.parent / "empty-mount"))
    empty = cli("recordings", "purge", "--older-than", "1d")

    assert absent[0] == 1 and "nothing purged: the monitor directory" in absent[2]
    assert "does not exist on this host" in absent[2]
    assert empty[0] == 1 and "is empty on this host (a share not mounted?)" in empty[2]
    assert old_file.exists() and store.leg(old).state == "ended" and store.leg(old).purge_started_at is None


def test_a_file_that_cannot_be_deleted_leaves_the_leg_unpurged(pbx, store, people, cli, monkeypatch):
    old_file, old = old_call(pbx, store)
    real_unlink = os.unlink

    def refuse(path, *args, **kwargs):
        # NOTE: the suite runs as root, which file modes do not stop: the refusal is simulated.
        if Path(path) == old_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    code, out, err = cli("recordings", "purge", "--older-than", "1d")

    assert code == 1 and f"not       {old}" in out and "could not be deleted: Permission denied" in out
    assert "1 could not be purged" in err
    leg = store.leg(old)
    # The begun purge is taken back: the leg may be held now, and the next purge decides again.
    assert old_file.exists() and (leg.state, leg.purge_started_at) == ("ended", None)


def test_hold_and_release_from_the_command_line(pbx, store, people, cli, caplog):
    caplog.set_level(logging.INFO, logger="recording.audit")
    _, leg = recorded_call(pbx, store)

    held = cli("recordings", "hold", leg.id, "--reason", "case 12", "--by", "legal")
    again = cli("recordings", "hold", leg.id)
    released = cli("recordings", "hold", leg.id, "--release")
    not_held = cli("recordings", "hold", leg.id, "--release")
    unknown = cli("recordings", "hold", "f" * 32)

    assert held[0] == 0 and f"leg {leg.id} is held since " in held[1] and "by legal (case 12)" in held[1]
    assert again[0] == 0 and again[1].startswith("already: ")
    assert released[:2] == (0, f"leg {leg.id}: hold released\n")
    assert not_held[1] == f"leg {leg.id} was not held\n"
    assert unknown[0] == 1 and f"no recording leg has the id '{'f' * 32}'" in unknown[2]
    audit = [r.getMessage() for r in caplog.records if r.name == "recording.audit"]
    assert any("held by legal (case 12)" in line for line in audit)
    assert any("released by" in line for line in audit)


def test_a_held_leg_is_never_purged_and_a_purge_under_way_cannot_be_held(store):
    now = datetime.now(timezone.utc)
    held, begun, purged = (new_leg(f"7.{n}", state="ended") for n in range(3))
    store.commit([held, begun, purged])
    with store.engine.begin() as conn:
        conn.execute(update(RecordingLeg).values(ended_at=now))
    store.set_hold(held.id, held=True, by="boss", at=now)
    assert store.begin_purge(begun.id, now, "test") and store.begin_purge(purged.id, now, "test")
    store.finish_purge(purged.id, now)

    assert not store.begin_purge(held.id, now, "test")
    with pytest.raises(Conflict, match="its purge .*began|purge of leg .* began"):
        store.set_hold(begun.id, held=True, by="boss", at=now)
    with pytest.raises(Conflict, match="was purged at .* nothing left to hold"):
        store.set_hold(purged.id, held=True, by="boss", at=now)
    with pytest.raises(NotFound):
        store.set_hold("nope", held=True, by="boss", at=now)
    assert not store.finish_purge(held.id, now)


CRASH = """
import os, signal, sys
real = os.{function}
def crash(*args, **kwargs):
    if {after}:
        real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
os.{function} = crash
from recording.cli import main
sys.exit(main(["recordings", "purge", "--older-than", "1d"]))
"""


@pytest.mark.parametrize("function,after,deleted", [
    ("unlink", False, 0), ("unlink", True, 1), ("fsync", True, 3),
], ids=["killed-before-deleting", "killed-after-deleting-one", "killed-after-syncing-the-deletions"])
def test_a_purge_killed_half_way_is_finished_by_the_next(pbx, store, people, cli, database_url, files_settings,
                                                         files_service, function, after, deleted, caplog):
    caplog.set_level(logging.INFO, logger="recording.audit")
    files = dict(old_call(pbx, store, tag=f"T{n}")[::-1] for n in range(3))
    # Only the next purge may finish what the killed one began, not the pbx service's start-up.
    wait_until(lambda: files_service.app.aftercall.recovered, 10, "the pbx service's start-up recovery")
    env = {**os.environ, "RECORDING_DATABASE_URL": database_url,
           "RECORDING_MONITOR_TEMPLATE": files_settings.monitor_template}

    killed = subprocess.run([sys.executable, "-c", CRASH.format(function=function, after=after)], env=env,
                            capture_output=True, text=True, timeout=60)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    legs = {leg_id: store.leg(leg_id) for leg_id in files}
    # Whatever the point of the crash: no leg purged whose file exists, no file gone whose leg
    # is not marked for purge (its intent, time and reason are written first).
    for leg_id, path in files.items():
        assert not (legs[leg_id].state == "purged" and path.exists())
        assert path.exists() or legs[leg_id].purge_started_at is not None
    assert all(leg.state == "ended" and leg.purge_reason == "older than 1d (recordings purge)" for leg in legs.values())
    assert sum(not path.exists() for path in files.values()) == deleted
    with pytest.raises(Conflict, match="it can no longer be held"):
        store.set_hold(next(iter(files)), held=True, by="boss", at=datetime.now(timezone.utc))

    code, out, err = cli("recordings", "purge", "--older-than", "1d")

    assert code == 0, err
    assert all(store.leg(leg_id).state == "purged" and not path.exists() for leg_id, path in files.items())
    assert "3 legs purged, 3 of them finishing an interrupted purge" in out
    audit = [r.getMessage() for r in caplog.records if r.name == "recording.audit" and "purged" in r.getMessage()]
    assert len(audit) == 3 and all("finishing an interrupted purge" in line for line in audit)


def second(files_settings, tmp_path, **changes):
    """Settings for another service process beside the ``pbx`` one (its own journal)."""
    return files_settings.with_(journal_dir=str(tmp_path / f"journal-{uuid.uuid4().hex[:8]}"), **changes)


def test_the_service_finishes_an_interrupted_purge_when_it_starts(store, files_settings, files_service, pbx, people,
                                                                 tmp_path):
    path, leg_id = old_call(pbx, store)
    begun_elsewhere(files_service, store, leg_id)

    with RunningService(second(files_settings, tmp_path)):
        wait_until(lambda: store.leg(leg_id).state == "purged", 10, "the begun purge finished")

    assert not path.exists()


def test_the_service_purges_once_a_day_when_retention_is_set(store, files_settings, pbx, people, tmp_path):
    path, leg_id = old_call(pbx, store)

    with RunningService(second(files_settings, tmp_path, retention="1d")) as running:
        wait_until(lambda: running.app.aftercall.purges == 1, 10, "the daily purge")
        assert store.leg(leg_id).state == "purged"
    again_file, again = old_call(pbx, store)
    with RunningService(second(files_settings, tmp_path, retention="1d")) as running:
        wait_until(lambda: running.app.aftercall.turns_asked == 1, 10, "the restarted service asking for its turn")
        assert running.app.aftercall.purges == 0

    # The day's turn was taken: a restart the same day does not purge again.
    assert not path.exists() and again_file.exists() and store.leg(again).state == "ended"
    assert store.leg(leg_id).purge_reason == "older than 1d (RECORDING_RETENTION)"


def test_turns_and_leases_are_one_process_at_a_time(store):
    now = datetime.now(timezone.utc)

    assert store.take_turn("test.turn", DAY, now)
    assert not store.take_turn("test.turn", DAY, now + timedelta(hours=23))
    assert store.take_turn("test.turn", DAY, now + timedelta(hours=25))

    ttl = timedelta(seconds=60)
    assert store.lease("test.lease", "a", ttl, now)
    assert not store.lease("test.lease", "b", ttl, now + timedelta(seconds=30))
    assert store.lease("test.lease", "a", ttl, now + timedelta(seconds=30))
    assert not store.lease("test.lease", "b", ttl, now + timedelta(seconds=80))
    assert store.lease("test.lease", "b", ttl, now + timedelta(seconds=91))
    assert not store.lease("test.lease", "a", ttl, now + timedelta(seconds=92))


@pytest.mark.slow
def test_under_workers_one_process_does_the_days_purge(store, files_settings, pbx, people, database_url, tmp_path):
    from tests.recording.test_workers import Workers

    files = dict(old_call(pbx, store, tag=f"W{n}")[::-1] for n in range(3))
    workers = Workers(database_url, tmp_path, extra_env={
        "RECORDING_RETENTION": "1d", "RECORDING_MONITOR_TEMPLATE": files_settings.monitor_template,
        "RECORDING_LOG_LEVEL": "DEBUG",
    })
    try:
        wait_until(lambda: all(store.leg(leg_id).state == "purged" for leg_id in files), 30, "the legs purged")
        wait_until(lambda: workers.text().count("the day's purge was done by another process") == 1, 30,
                   f"the other worker asking for the day's turn:\n{workers.text()}")
    finally:
        code, log = workers.stop()

    assert code == 0, log
    purges = [line for line in log.splitlines() if "recording.aftercall: daily purge: " in line]
    assert len(purges) == 1 and "3 legs purged" in purges[0], log
    audit = [line for line in log.splitlines() if "recording.audit: purged the audio of leg" in line]
    assert sorted(leg_id for leg_id in files if any(leg_id in line for line in audit)) == sorted(files)
    assert len(audit) == 3 and not any(path.exists() for path in files.values())


def test_a_purge_goes_through_its_legs_a_batch_at_a_time(store, monitor_dir):
    from recording.storage.audio import MonitorDirectory
    from recording.storage.retention import Purger
    from tests.fake_asterisk import audio, wav_header

    now = datetime.now(timezone.utc)
    legs = []
    for n in range(7):
        path = monitor_dir / f"b-{n}.wav"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(wav_header(1600) + audio(0.1))
        legs.append(new_leg(f"8.{n}", state="ended"))
        legs[-1].file = str(path)
    store.commit(legs)
    with store.engine.begin() as conn:
        for n, leg in enumerate(legs):  # ended 7, 6, ... 1 days ago; the newest is too young
            conn.execute(update(RecordingLeg).where(RecordingLeg.id == leg.id).values(ended_at=now - (7 - n) * DAY))
    store.set_hold(legs[2].id, held=True, by="boss", at=now)

    report = Purger(store, MonitorDirectory(f"{monitor_dir}/{{uniqueid}}.wav"), batch=2).run(DAY + DAY / 2, "test")

    assert [leg.id for leg, _ in report.purged] == [leg.id for n, leg in enumerate(legs) if n not in (2, 6)]
    assert [leg.id for leg in report.held] == [legs[2].id] and report.ok
    assert [Path(leg.file).exists() for leg in legs] == [False, False, True, False, False, False, True]


def test_a_service_that_starts_before_the_files_are_visible_finishes_the_purge_once_they_are(
        store, files_settings, files_service, pbx, people, tmp_path, monitor_dir):
    path, leg_id = old_call(pbx, store)
    begun_elsewhere(files_service, store, leg_id)
    mount = tmp_path / "share"

    with RunningService(second(files_settings, tmp_path, monitor_mount=str(mount))) as running:
        rounds = running.app.aftercall.rounds
        wait_until(lambda: running.app.aftercall.rounds >= rounds + 3, 10, "rounds while the share is not mounted")
        assert store.leg(leg_id).state == "ended" and path.exists()
        mount.symlink_to(monitor_dir)  # the share comes up
        wait_until(lambda: store.leg(leg_id).state == "purged", 10, "the begun purge finished")

    assert not path.exists()


def test_one_purge_at_a_time_and_a_dead_ones_lease_is_taken_over(pbx, store, people, cli):
    import socket as sockets

    from recording.storage.retention import LEASE, LEASE_TTL

    old_file, old = old_call(pbx, store, tag="OLD")
    now = datetime.now(timezone.utc)
    here = sockets.gethostname()

    # A purge under way in a live process (this one) holds the lease: the other waits its turn.
    assert store.lease(LEASE, f"{here}/{os.getpid()}/busy", LEASE_TTL, now)
    code, out, err = cli("recordings", "purge", "--older-than", "1d")
    assert code == 1 and "another purge is under way" in err and old_file.exists()

    # Its process gone (a purge killed half way), the next purge takes the lease at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert store.lease(LEASE, f"{here}/{int(dead.stdout)}/killed", LEASE_TTL, now, take_from=f"{here}/{os.getpid()}/busy")
    code, out, err = cli("recordings", "purge", "--older-than", "1d")
    assert code == 0, err
    assert not old_file.exists() and store.leg(old).state == "purged"
    # And it gave the lease up when done.
    assert store.lease_holder(LEASE) is None
