"""The journal's file format and its rules: fsynced entries, crash-cut last lines, order,
and writes the database refuses at replay kept aside rather than lost or retried for ever."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from recording.domain import LegChange, TagUpdate, UserRef
from recording.errors import StorageUnavailable
from recording.storage.journal import Journal, decode, encode
from recording.storage.persist import Persister
from tests.recording.test_store import NOW, leg


def test_entries_round_trip():
    writes = [
        replace(leg("1.1"), agent=UserRef(3, "fred"), ended_at=NOW),
        replace(leg("1.2", tag=None), agent_login="ghost", mixmonitor_id=None),
        TagUpdate("1.1", "newer", NOW),
    ]
    assert [decode(encode(w)) for w in writes] == [replace(writes[0], agent=UserRef(3, "fred")), *writes[1:]]


def test_appends_seal_and_read_in_order(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append([leg("2.1"), leg("2.2")])
    first = journal.seal()
    journal.append([leg("2.3")])
    segments = journal.seal()

    assert len(first) == 1 and segments[0] == first[0] and len(segments) == 2
    assert [w.unique_id for s in segments for w in journal.read(s)] == ["2.1", "2.2", "2.3"]
    assert journal.pending() == 3
    assert oct((tmp_path / "j").stat().st_mode & 0o777) == "0o700"


def test_a_last_line_cut_by_a_crash_is_dropped(tmp_path, caplog):
    journal = Journal(tmp_path)
    journal.open()
    journal.append([leg("3.1")])
    (segment,) = journal.seal()
    with open(segment, "ab") as file:
        file.write(b'{"kind":"leg","id":"cut')

    assert [w.unique_id for w in journal.read(segment)] == ["3.1"]
    assert "unfinished last entry" in caplog.text


def test_a_damaged_line_in_the_middle_is_set_aside_and_the_rest_is_read(tmp_path, caplog):
    journal = Journal(tmp_path)
    journal.open()
    journal.append([leg("4.1"), leg("4.2")])
    (segment,) = journal.seal()
    first, second, _ = segment.read_bytes().split(b"\n")
    segment.write_bytes(first + b"\n" + b"garb\xffage\n" + second + b"\n")

    assert [w.unique_id for w in journal.read(segment)] == ["4.1", "4.2"]
    assert journal.set_aside == 1
    rejected = tmp_path / "rejected.jsonl"
    (entry,) = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert entry["damaged"] == "garb\\xffage" and f"line 2 of {segment.name}" in entry["rejected"]
    assert oct(rejected.stat().st_mode & 0o777) == "0o600"
    assert f"set aside in {rejected}" in caplog.text


def test_replay_goes_past_a_damaged_line_and_does_not_blame_the_database(store, tmp_path, caplog):
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append([leg("4.3", tag="before")])
    (first,) = journal.seal()
    first.write_bytes(first.read_bytes() + b"{not json}\n")
    journal.append([leg("4.4", tag="after")])

    persister = asyncio.run(_replay(store, journal))

    assert sorted(v.tag for v in store.find_legs()) == ["after", "before"]
    assert journal.pending() == 0 and not persister.database_away
    assert "database unavailable" not in caplog.text


def test_a_journal_file_that_cannot_be_read_is_said_to_be_the_journals_fault(store, tmp_path, caplog):
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append([leg("4.5")])
    journal.seal()
    # A "file" that cannot be read, first in replay's order.
    (tmp_path / "j" / "journal-00000000000000000001.jsonl").mkdir()

    async def scenario():
        persister = Persister(store, journal, budget=1.0)
        await persister.start()
        await asyncio.sleep(0.3)
        away = persister.database_away
        await persister.stop()
        return away

    assert asyncio.run(scenario()) is False
    assert "journal replay stopped by the journal's own files, not the database" in caplog.text
    assert "database unavailable" not in caplog.text


def test_a_short_write_is_completed_or_fails_loudly_leaving_nothing_to_replay(tmp_path):
    """A file-size limit makes the kernel write only what fits (a short write), then refuse:
    as a full disk does. Run in a child, so that the limit binds nothing else."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from recording.storage.journal import Journal
        from recording.errors import StorageUnavailable
        from tests.recording.test_store import leg
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        journal = Journal({str(tmp_path / "j")!r})
        journal.open()
        journal.append([leg("7.1")])
        size = journal._current.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
        try:
            journal.append([leg("7.2"), leg("7.3")])
        except StorageUnavailable as exc:
            print("refused:", exc)
        (segment,) = journal.seal()
        print("entries:", [w.unique_id for w in journal.read(segment)])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])

    assert done.returncode == 0, done.stderr
    assert "refused: the journal in" in done.stdout and "cannot be written" in done.stdout
    # The entries no session was told are stored are not in the file to be replayed.
    assert "entries: ['7.1']" in done.stdout


def test_a_journal_replayed_twice_applies_each_pause_once(store, tmp_path):
    """A crash after replaying a file and before removing it replays it again."""
    started = leg("8.1")
    store.commit([started])
    at = started.started_at
    changes = [
        LegChange(started.id, "8.1", "pause", at + timedelta(seconds=10), by="fred", method="mute", key="p1"),
        LegChange(started.id, "8.1", "resume", at + timedelta(seconds=40), by="fred", key="r1"),
        LegChange(started.id, "8.1", "end", at + timedelta(seconds=60), state="stopped", by="fred", key="e1"),
    ]
    for _ in range(2):
        journal = Journal(tmp_path / "j")
        journal.open()
        journal.append(changes)
        asyncio.run(_replay(store, journal))
        journal.close()

    (view,) = store.find_legs(unique_id="8.1")
    assert len(view.pauses) == 1 and view.state == "stopped"
    assert (view.duration(at), view.recorded(at)) == (60.0, 30.0)


def test_a_journaled_change_older_than_the_legs_last_change_is_not_applied_over_it(store, tmp_path):
    started = leg("9.1")
    store.commit([started])
    at = started.started_at
    # Written directly by another process: paused at +20 s.
    store.commit([LegChange(started.id, "9.1", "pause", at + timedelta(seconds=20), method="mute", key="p2")])
    journal = Journal(tmp_path / "j")
    journal.open()
    # Journaled here earlier: a resume at +10 s (of no pause it knows), an end at +5 s.
    journal.append([LegChange(started.id, "9.1", "resume", at + timedelta(seconds=10), key="r2")])
    journal.append([LegChange(started.id, "9.1", "end", at + timedelta(seconds=5), state="ended", by="hangup",
                              key="e2")])
    asyncio.run(_replay(store, journal))

    (view,) = store.find_legs(unique_id="9.1")
    # The resume is older than the pause: not applied. The end did happen: it is applied, but
    # not before the leg's last change.
    assert view.state == "ended" and view.end == at + timedelta(seconds=20)
    assert [(p.paused_at, p.resumed_at) for p in view.pauses] == [(at + timedelta(seconds=20),) * 2]


async def _replay(store, journal):
    """Replays the journal into the store until it is empty (5 s at most); the persister."""
    persister = Persister(store, journal, budget=1.0)
    await persister.start()
    for _ in range(100):
        if not persister.journaling:
            break
        await asyncio.sleep(0.05)
    await persister.stop()
    return persister


def test_an_unwritable_journal_is_storage_unavailable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    journal = Journal(tmp_path / "file" / "j")

    with pytest.raises(StorageUnavailable, match="cannot be created"):
        journal.open()


def test_replay_writes_everything_once_and_sets_refused_writes_aside(store, tmp_path):
    journal = Journal(tmp_path / "j")
    journal.open()
    good = [leg("5.1", tag="A"), leg("5.2", tag="B")]
    refused = replace(leg("5.3"), state="bogus")
    journal.append([good[0], refused, good[1]])
    journal.append([good[0]])  # a write that reached the journal twice

    persister = asyncio.run(_replay(store, journal))

    assert not persister.journaling and journal.pending() == 0
    assert sorted((v.unique_id, v.tag) for v in store.find_legs()) == [("5.1", "A"), ("5.2", "B")]
    rejected = (tmp_path / "j" / "rejected.jsonl").read_text()
    assert '"unique_id": "5.3"' in rejected and "refused" in rejected


def test_a_write_begun_while_journaling_that_ends_after_the_replay_goes_to_the_database(store, tmp_path):
    # A start decides where its write goes when it begins (the write overlaps MixMonitor), and
    # finishes it after. If the replay empties the journal and writing to the database resumes
    # in between, the write must not land in the journal behind the switch, where nothing would
    # replay it until the next outage or restart.
    async def scenario():
        persister = Persister(store, Journal(tmp_path / "j"), budget=1.0)
        await persister.start(hold=True)
        persister.assume_away()
        pending = persister.begin(leg("6.1", tag="late"))
        persister.release()
        for _ in range(100):
            if not persister.journaling:
                break
            await asyncio.sleep(0.05)
        assert not persister.journaling
        persisted = await persister.finish(pending)
        backlog = persister.backlog
        await persister.stop()
        return persisted, backlog

    persisted, backlog = asyncio.run(scenario())

    assert (persisted.deferred, persisted.result.status, backlog) == (False, "STARTED", 0)
    assert [v.tag for v in store.find_legs(unique_id="6.1")] == ["late"]


def test_a_journaled_tag_older_than_the_calls_last_write_does_not_replace_its_tag(store, tmp_path):
    first = leg("10.1", tag="first")
    store.commit([first])
    # Written directly by another process, later: a new tag.
    store.commit([TagUpdate("10.1", "newer", first.started_at + timedelta(seconds=20))])
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append([TagUpdate("10.1", "older", first.started_at + timedelta(seconds=10))])
    asyncio.run(_replay(store, journal))
    (replayed,) = store.find_legs(unique_id="10.1")
    # A newer one replaces it as before.
    store.commit([TagUpdate("10.1", "newest", first.started_at + timedelta(seconds=30))])
    (view,) = store.find_legs(unique_id="10.1")

    assert replayed.external_reference == "newer"
    assert view.external_reference == "newest"
