"""The journal's file format and its rules: fsynced entries, crash-cut last lines, order,
and writes the database refuses at replay kept aside rather than lost or retried for ever."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from recording.domain import TagUpdate, UserRef
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


def test_a_damaged_line_in_the_middle_stops_replay(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append([leg("4.1")])
    (segment,) = journal.seal()
    segment.write_bytes(b"garbage\n" + segment.read_bytes())

    with pytest.raises(StorageUnavailable, match="line 1 is damaged"):
        journal.read(segment)


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

    async def replay():
        persister = Persister(store, journal, budget=1.0)
        await persister.start()
        for _ in range(100):
            if not persister.journaling:
                break
            await asyncio.sleep(0.05)
        await persister.stop()
        return persister

    persister = asyncio.run(replay())

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
