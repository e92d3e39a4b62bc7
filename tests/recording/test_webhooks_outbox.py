"""The webhooks' outbox in the database: the triggers of migration 0007 (there at head, gone on
the way down), the claims (a leg's events in order, leases that run out, two claimers never
taking one delivery) and a subscription's filters."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import inspect, text

from recording.domain import LegChange, utcnow
from recording.storage.outbox import Outbox
from recording.storage.store import Store
from tests.recording.test_store import NOW, leg

TRIGGERS = {"webhook_legs_inserted", "webhook_leg_changed", "webhook_event_fan_out"}


def triggers(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        else:
            rows = conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))
        return {name for (name,) in rows}


def test_the_triggers_are_there_at_head(store):
    # NOTE: SQLite drops a table's triggers when a batch migration rebuilds it: a later
    # migration that rebuilds recording_legs must make them again, or this fails.
    assert TRIGGERS <= triggers(store)


def test_migration_0007_up_and_down(empty_database_url):
    from tests.recording.test_store import _leg_by_hand

    store = Store(empty_database_url)
    try:
        store.upgrade("0006")
        _leg_by_hand(store, "1.1", state="recording")  # (the store writes the newest schema's columns)
        store.upgrade()
        outbox = Outbox(store)
        outbox.add("http://127.0.0.1:9/x", "whsec_AAAA")
        store.commit([leg(unique_id="1.2")])
        assert [c.event.kind for c in outbox.claim("me", timedelta(seconds=5), 10)] == ["started"]
        store.downgrade("0006")
        assert store.schema_revision() == "0006"
        assert not TRIGGERS & triggers(store)
        with store.engine.connect() as conn:
            assert not {"webhook_events", "webhook_deliveries", "webhook_subscriptions"} & set(
                inspect(conn).get_table_names())
        _leg_by_hand(store, "1.3", state="recording", leg_id="b")  # legs are written as before
        store.upgrade()
        assert TRIGGERS <= triggers(store)
    finally:
        store.close()


def test_a_legs_events_are_claimed_one_at_a_time_in_order(store):
    outbox = Outbox(store)
    first = outbox.add("http://127.0.0.1:9/a", "whsec_AAAA")
    written = leg(unique_id="2.1")
    store.commit([written])
    store.commit([LegChange(written.id, "2.1", "pause", NOW, by="fred", method="mute")])
    store.commit([LegChange(written.id, "2.1", "end", NOW, state="stopped", by="dialplan")])

    (started,) = outbox.claim("a", timedelta(seconds=30), 10)
    assert started.event.kind == "started" and started.subscription_id == first.id
    # The next event of the leg waits for the first, even for another claimer.
    assert outbox.claim("b", timedelta(seconds=30), 10) == []
    outbox.delivered([(started, 200)])
    (paused,) = outbox.claim("b", timedelta(seconds=30), 10)
    assert (paused.event.kind, paused.event.actor, paused.event.method) == ("paused", "fred", "mute")
    # A failed try lets nothing past it: the leg waits for its retry.
    assert outbox.attempt_failed(paused, "b", 500, "answered 500") == "pending"
    assert outbox.claim("b", timedelta(seconds=30), 10, now=utcnow() + timedelta(seconds=1)) == []
    (again,) = outbox.claim("c", timedelta(seconds=30), 10, now=utcnow() + timedelta(seconds=6))
    assert (again.id, again.attempts) == (paused.id, 1)
    # A claim that ran out (its process died) is taken over, with the same event.
    later = utcnow() + timedelta(seconds=60)
    (taken,) = outbox.claim("d", timedelta(seconds=30), 10, now=later)
    assert taken.event.message_id == paused.event.message_id
    assert outbox.attempt_failed(again, "c", None, "late") == "taken"  # no longer c's to mark
    outbox.delivered([(taken, 204)])
    (ended,) = outbox.claim("d", timedelta(seconds=30), 10)
    assert (ended.event.kind, ended.event.state, ended.event.actor) == ("ended", "stopped", "dialplan")


def test_a_replayed_leg_stored_as_lost_gives_started_then_ended(store):
    outbox = Outbox(store)
    outbox.add("http://127.0.0.1:9/a", "whsec_AAAA")
    lost = replace(leg(unique_id="3.1"), state="lost", ended_at=NOW + timedelta(seconds=5))
    store.commit([lost], replay=True)
    first = outbox.claim("a", timedelta(seconds=30), 10)
    assert [(c.event.kind, c.event.at) for c in first] == [("started", NOW)]
    outbox.delivered([(first[0], 200)])
    (ended,) = outbox.claim("a", timedelta(seconds=30), 10)
    assert (ended.event.kind, ended.event.state, ended.event.at) == ("ended", "lost", NOW + timedelta(seconds=5))
    # Replaying it again writes nothing new.
    store.commit([lost], replay=True)
    outbox.delivered([(ended, 200)])
    assert outbox.claim("a", timedelta(seconds=30), 10) == []


def test_two_claimers_never_take_the_same_delivery(store):
    outbox = Outbox(store)
    outbox.add("http://127.0.0.1:9/a", "whsec_AAAA")
    store.commit([leg(unique_id=f"4.{n}") for n in range(60)])
    taken: dict[str, list[int]] = {"x": [], "y": []}

    def claimer(name: str) -> None:
        mine = Outbox(Store(store.url))
        try:
            while claims := mine.claim(name, timedelta(seconds=30), 3):
                taken[name].extend(c.id for c in claims)
        finally:
            mine.store.close()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = taken["x"] + taken["y"]
    assert len(everything) == len(set(everything)) == 60


def test_a_busy_subscription_is_passed_over_and_filters_apply(store):
    outbox = Outbox(store)
    slow = outbox.add("http://127.0.0.1:9/slow", "whsec_AAAA")
    picky = outbox.add("http://127.0.0.1:9/picky", "whsec_AAAA", ["ended"], "CRM-")
    store.commit([leg(unique_id="5.1", tag="CRM-1"), leg(unique_id="5.2", tag="X-1")])
    claims = outbox.claim("a", timedelta(seconds=30), 10, busy=[slow.id])
    assert claims == []  # the picky one wants no start
    written = store.find_legs(unique_id="5.1")[0]
    store.commit([LegChange(written.id, "5.1", "end", NOW, state="ended", by="hangup")])
    (ended,) = outbox.claim("a", timedelta(seconds=30), 10, busy=[slow.id])
    assert (ended.subscription_id, ended.event.kind, ended.event.tag) == (picky.id, "ended", "CRM-1")
    assert {c.subscription_id for c in outbox.claim("a", timedelta(seconds=30), 10)} == {slow.id}
