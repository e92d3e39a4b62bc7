"""The store against each real backend: the schema the migrations make, and the rules the
database itself enforces (one active leg per call, leg numbers, replays, tags)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from recording.domain import NewLeg, TagUpdate, UserRef
from recording.errors import Invalid
from recording.storage.models import Base
from recording.storage.store import Store, normalize_url, redact_url

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc)


def leg(unique_id="1795825765.3", number=1, *, tag="T", agent=None, state="recording", extension="410", leg_id=None):
    return NewLeg(
        id=leg_id or uuid.uuid4().hex, unique_id=unique_id, leg=number, channel=f"PJSIP/{extension}-0000001a",
        extension=extension, file=f"/rec/{unique_id}-{number}.wav", mixmonitor_id="0x7f01", tag=tag,
        agent=agent, source="agi", state=state, started_at=NOW,
    )


def test_migrations_make_exactly_the_schema_the_models_describe(store):
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert differences == []
    assert store.schema_revision() == store.head_revision()


def test_a_started_leg_and_its_call_record_are_written_together(store):
    (result,) = store.commit([leg(tag="CRM-1")])

    assert (result.status, result.leg, result.ownership, result.owner_id) == ("STARTED", 1, "DEFAULT", None)
    (view,) = store.find_legs(tag="CRM-1")
    assert (view.id, view.external_reference, view.start) == (result.leg_id, "CRM-1", NOW)


def test_the_database_allows_one_active_leg_per_call(store):
    first = leg()
    (a,) = store.commit([first])
    (b,) = store.commit([leg(number=2)])

    assert a.status == "STARTED"
    assert (b.status, b.leg_id) == ("ALREADY_RECORDING", first.id)
    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO recording_legs (id, call_record_id, leg, unique_id, channel, extension, file,"
                " ownership, source, state, started_at) SELECT 'x', call_record_id, 9, unique_id, channel,"
                " extension, file, ownership, source, 'recording', started_at FROM recording_legs"
            ))


def test_a_taken_leg_number_gets_the_next_one(store):
    store.commit([leg(state="ended")])

    (result,) = store.commit([leg(number=1)])

    assert (result.status, result.leg) == ("STARTED", 2)


def test_writing_the_same_leg_again_is_a_no_op(store):
    once = leg()
    store.commit([once])

    (again,) = store.commit([once])

    assert (again.status, again.leg_id) == ("APPLIED", once.id)
    assert len(store.find_legs()) == 1


def test_a_batch_mixes_legs_tags_and_conflicts(store):
    existing = leg("1.1")
    store.commit([existing])

    results = store.commit([leg("1.2", tag=None), TagUpdate("1.1", "NEW", NOW), leg("1.1", 2, tag=None), leg("1.3")])

    assert [r.status for r in results] == ["STARTED", "TAGGED", "ALREADY_RECORDING", "STARTED"]
    assert [v.unique_id for v in store.find_legs(tag="NEW")] == ["1.1"]


def test_a_start_without_tag_keeps_the_reference_of_an_earlier_one(store):
    store.commit([leg("2.1", tag="KEEP", state="ended")])
    store.commit([leg("2.1", 2, tag=None)])

    assert [v.leg for v in store.find_legs(tag="KEEP")] == [1, 2]


def test_extension_ownership_is_resolved_inside_the_write(store):
    alice = store.add_user("alice")
    store.attach_extension("410", "alice")
    bob = store.add_user("Bob")

    results = store.commit([leg("3.1"), leg("3.2", extension="411"), leg("3.3", agent=bob)])

    assert [(r.ownership, r.owner_id) for r in results] == [
        ("EXTENSION", alice.id), ("DEFAULT", None), ("AGENT", bob.id)
    ]


def test_logins_are_unique_without_regard_to_case(store):
    fred = store.add_user("Fred", ["Recording Manager"])
    again = store.add_user("FRED", ["Sales"])

    assert again.id == fred.id
    assert again.groups == {"Recording Manager", "Sales"}
    assert store.find_user("fred").login == "Fred"
    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (login, created_at) VALUES ('fReD', :t)"), {"t": NOW})


def test_attaching_an_unknown_user_is_invalid(store):
    with pytest.raises(Invalid):
        store.attach_extension("410", "ghost")


def test_directory_holds_key_hash_users_and_groups(store, key_hash):
    store.add_user("Mia", ["Recording Manager"])

    snapshot = store.directory()

    assert snapshot.api_key_hash == key_hash
    assert snapshot.user("MIA").is_manager


def test_visibility_follows_the_ownership_rule(store):
    owner = store.add_user("owner")
    store.add_user("other")
    manager = store.add_user("boss", ["Recording Manager"])
    store.commit([leg("4.1", agent=owner), leg("4.2")])
    legs = {v.unique_id: v for v in store.find_legs()}

    def sees(login):
        user = store.find_user(login)
        return sorted(uid for uid, v in legs.items() if v.visible_to(user))

    assert sees("owner") == ["4.1"]
    assert sees("other") == []
    assert sees("boss") == ["4.1", "4.2"]
    assert manager.is_manager


def test_timestamps_come_back_in_utc(store):
    local = NOW.astimezone(timezone(timedelta(hours=2)))
    store.commit([replace(leg("5.1"), started_at=local)])

    (view,) = store.find_legs(unique_id="5.1")
    assert view.start == NOW and view.start.tzinfo == timezone.utc


def test_urls_default_to_psycopg_and_hide_passwords():
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert "secret" not in redact_url("postgresql+psycopg://u:secret@h/db")


@pytest.mark.parametrize("url", ["postgresql://u:se@cret@h:port/db", "postgresql://u:secret@h:port/db",
                                 "postgresql://u:sec/ret@h:x/db"])
def test_a_database_url_that_does_not_parse_is_refused_without_its_password(url):
    from recording.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        Store(url)
    assert "cret" not in str(error.value) and "not a database URL" in str(error.value)
    assert "secret" not in redact_url(url) and "cret" not in redact_url(url)


def test_an_unreachable_database_is_reported_as_unavailable(tmp_path):
    from recording.errors import StorageUnavailable

    store = Store("postgresql+psycopg://root:pw@127.0.0.1:1/none")
    with pytest.raises(StorageUnavailable) as error:
        store.commit([leg()])
    assert "unavailable" in str(error.value) and "pw" not in str(error.value)


def test_user_refs_know_managers():
    assert UserRef(1, "x", frozenset({"Recording Manager"})).is_manager
    assert not UserRef(1, "x", frozenset({"Sales"})).is_manager


def test_migration_0003_adds_the_failed_state_and_takes_it_back(empty_database_url):
    store = Store(empty_database_url)
    try:
        store.upgrade("0002")
        _leg_by_hand(store, "1.1", state="recording")
        store.upgrade()
        failed = replace(leg(unique_id="1.2"), state="failed", ended_at=NOW)
        (result,) = store.commit([failed])
        assert result.status == "STARTED"
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.execute(text("UPDATE recording_legs SET state = 'bogus' WHERE unique_id = '1.1'"))
        store.downgrade("0002")
        # Read by hand: the models describe the newest schema, which has columns 0002 lacks.
        with store.engine.connect() as conn:
            states = dict(conn.execute(text("SELECT unique_id, state FROM recording_legs")).all())
        assert states == {"1.1": "recording", "1.2": "lost"}
        # And up again: the downgrade left the constraint as 0002 had it.
        store.upgrade("0003")
        assert store.schema_revision() == "0003"
    finally:
        store.close()


def test_migration_0004_adds_digest_hold_and_purge_and_takes_them_back(empty_database_url):
    store = Store(empty_database_url)
    try:
        store.upgrade("0003")
        kept = _leg_by_hand(store, "1.1", state="ended")
        store.upgrade()
        assert store.schema_revision() == store.head_revision()
        (view,) = store.find_legs(unique_id="1.1")
        assert (view.state, view.file_sha256, view.held, view.purged_at) == ("ended", None, False, None)
        purged = replace(leg(unique_id="1.2"), state="stopped", ended_at=NOW)
        store.commit([purged])
        assert store.begin_purge(purged.id, NOW, "older than 1d (test)")
        assert store.finish_purge(purged.id, NOW)
        assert store.store_digest(kept.id, 44, "a" * 64, NOW)
        store.set_hold(kept.id, held=True, by="boss", at=NOW, reason="case 7")
        # The database itself keeps the rules: no purged leg without its time, no half digest,
        # no hold on a leg whose purge has begun.
        for statement in (
            "UPDATE recording_legs SET state = 'purged' WHERE unique_id = '1.1'",
            "UPDATE recording_legs SET file_size = NULL WHERE unique_id = '1.1'",
            "UPDATE recording_legs SET file_sha256 = 'abc' WHERE unique_id = '1.1'",
            "UPDATE recording_legs SET purge_started_at = hashed_at, purge_reason = 'x' WHERE unique_id = '1.1'",
            "UPDATE recording_legs SET state = 'bogus' WHERE unique_id = '1.1'",
        ):
            with pytest.raises(IntegrityError):
                with store.engine.begin() as conn:
                    conn.execute(text(statement))
        store.downgrade("0003")
        assert store.schema_revision() == "0003"
        with store.engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT unique_id, state FROM recording_legs")).all())
            columns = {c["name"] for c in inspect(conn).get_columns("recording_legs")}
        # A purged leg has no audio: 0003's one state for that is "failed" (back in the state it had
        # ended in, it would look playable); the new columns are gone.
        assert rows == {"1.1": "ended", "1.2": "failed"}
        assert not columns & {"file_sha256", "held_at", "purge_started_at", "purged_at", "state_before_purge"}
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.execute(text("UPDATE recording_legs SET state = 'purged' WHERE unique_id = '1.1'"))
        store.upgrade()
        assert store.schema_revision() == store.head_revision()
    finally:
        store.close()


def _leg_by_hand(store, unique_id: str, *, state: str, leg_id: str = "a"):
    """A leg in the columns every schema has since 0002 (ended at NOW unless active), written as
    SQL: the store's own statements write the newest schema's columns, and these tests start
    from older ones. Returns it as a NewLeg with its id."""
    ended = None if state in ("recording", "paused") else NOW
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO call_records (unique_id, created_at, updated_at) VALUES (:u, :t, :t)"),
            {"u": unique_id, "t": NOW})
        conn.execute(text(
            "INSERT INTO recording_legs (id, call_record_id, leg, unique_id, channel, extension, file, ownership,"
            " source, state, started_at, ended_at) SELECT :id, id, 1, unique_id, 'PJSIP/410-1', '410', '/m/a.wav',"
            " 'DEFAULT', 'agi', :state, :t, :e FROM call_records WHERE unique_id = :u"),
            {"id": leg_id, "u": unique_id, "state": state, "t": NOW, "e": ended})
    return replace(leg(unique_id=unique_id), id=leg_id, state=state, ended_at=ended)


def _paused_leg_by_hand(store) -> None:
    """Leg 'a' of call 1.1, paused once (see _leg_by_hand)."""
    _leg_by_hand(store, "1.1", state="paused")
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO recording_pauses (leg_id, paused_at, method) VALUES ('a', :t, 'mute')"), {"t": NOW})


def test_migration_0005_keys_pauses_and_dates_changes_and_takes_them_back(empty_database_url):
    store = Store(empty_database_url)
    try:
        store.upgrade("0004")
        _paused_leg_by_hand(store)
        store.upgrade("0005")
        with store.engine.connect() as conn:
            legs = {c["name"] for c in inspect(conn).get_columns("recording_legs")}
            pauses = {c["name"] for c in inspect(conn).get_columns("recording_pauses")}
        assert "changed_at" in legs and {"pause_key", "resume_key"} <= pauses
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE recording_pauses SET pause_key = 'k1'"))
            conn.execute(text(
                "INSERT INTO recording_pauses (leg_id, paused_at, resumed_at, method, pause_key)"
                " VALUES ('a', :t, :t, 'mute', 'k2')"), {"t": NOW})
        # A key is applied once: the database refuses a second row with it.
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO recording_pauses (leg_id, paused_at, method, pause_key) VALUES ('a', :t, 'mute', 'k1')"
                ), {"t": NOW})
        store.downgrade("0004")
        with store.engine.connect() as conn:
            legs = {c["name"] for c in inspect(conn).get_columns("recording_legs")}
            pauses = {c["name"] for c in inspect(conn).get_columns("recording_pauses")}
            count = conn.scalar(text("SELECT count(*) FROM recording_pauses"))
        assert "changed_at" not in legs and not {"pause_key", "resume_key"} & pauses and count == 2
        store.upgrade()
        assert store.schema_revision() == store.head_revision()
    finally:
        store.close()


def test_migrations_keep_every_pause(empty_database_url):
    """SQLite rebuilds recording_legs in 0004 (batch mode): with foreign keys enforced, dropping
    the old table deleted every pause by their ON DELETE CASCADE."""
    store = Store(empty_database_url)
    try:
        store.upgrade("0003")
        _paused_leg_by_hand(store)
        store.upgrade()
        (view,) = store.find_legs(unique_id="1.1")
        assert [p.method for p in view.pauses] == ["mute"]
        store.downgrade("0003")
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM recording_pauses")) == 1
    finally:
        store.close()


def test_migration_0008_adds_the_followed_calls_columns_in_place_and_takes_them_back(empty_database_url):
    store = Store(empty_database_url)
    try:
        store.upgrade("0005")
        _paused_leg_by_hand(store)
        store.upgrade("0008")
        with store.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("recording_legs")}
            indexes = {i["name"]: i["unique"] for i in inspect(conn).get_indexes("recording_legs")}
        assert {"linkedid", "part", "follows"} <= columns
        assert indexes["uq_recording_legs_linkedid_part"] and indexes["uq_recording_legs_follows"]
        # A part of a call is recorded once: a second leg of (call, part) is refused.
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE recording_legs SET linkedid = 'L', part = 2, follows = 'x' WHERE id = 'a'"))
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO recording_legs (id, call_record_id, leg, unique_id, channel, extension, file,"
                    " ownership, source, state, started_at, linkedid, part) SELECT 'b', call_record_id, 2, unique_id,"
                    " channel, extension, '/m/b.wav', ownership, 'follow', 'ended', started_at, 'L', 2"
                    " FROM recording_legs WHERE id = 'a'"))
        store.downgrade("0005")
        with store.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("recording_legs")}
            pauses = conn.scalar(text("SELECT count(*) FROM recording_pauses"))
        assert not {"linkedid", "part", "follows"} & columns and pauses == 1
        store.upgrade()
        assert store.schema_revision() == store.head_revision()
    finally:
        store.close()
