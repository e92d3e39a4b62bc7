"""Webhooks: every kind of leg event reaches a real receiver on 127.0.0.1, signed as the
Standard Webhooks reference library verifies, in the order it happened; subscriptions filter by
kind and tag; the commands; a receiver that misbehaves delays only its own deliveries."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook, WebhookVerificationError

from recording.domain import utcnow
from recording.ops.webhooks import headers, new_secret, payload, sign
from recording.storage.outbox import GIVE_UP_AFTER, Event, Outbox, backoff
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_recording_download import CHANNEL, recorded_call
from tests.recording.test_retention import age
from tests.service_runner import RunningService
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver

KEY = f"apiKey={API_KEY}"


@pytest.fixture
def receiver():
    running = Receiver().start()
    yield running
    running.close()


def subscribe(cli, receiver: Receiver, *options: str, path: str = "/hook") -> int:
    """``webhooks add`` for the receiver; gives it the secret printed once. Returns the id."""
    code, out, err = cli("webhooks", "add", receiver.url(path), *options)
    assert code == 0, err
    receiver.secret = re.search(r"^secret: (whsec_\S+)$", out, re.M).group(1)
    return int(out.split("\t", 1)[0])


def test_our_signature_is_what_the_reference_library_verifies():
    secret = new_secret()
    body = b'{"type":"recording.ended","data":{"Tag":"caf\xc3\xa9"}}'
    sent = headers(secret, "msg_1", body)

    assert Webhook(secret).verify(body, sent) == {"type": "recording.ended", "data": {"Tag": "café"}}
    assert sent["webhook-signature"] == sign(secret, "msg_1", int(sent["webhook-timestamp"]), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", sent)
    # An old timestamp is refused by the receiver's library: each try is signed anew.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers(secret, "msg_1", body, now=time.time() - 3600))


def test_the_backoff_grows_from_seconds_to_an_hour_for_three_days():
    waits = [backoff(n) for n in range(1, 100)]
    assert waits[0] == timedelta(seconds=5) and waits[1] == timedelta(seconds=10)
    assert waits == sorted(waits) and max(waits) == timedelta(hours=1)
    spent, tries = timedelta(0), 0
    while spent < GIVE_UP_AFTER:
        tries += 1
        spent += backoff(tries)
    assert 70 <= tries <= 90


def test_every_kind_of_event_arrives_signed_and_in_order(pbx, store, people, cli, receiver, monitor_dir):
    subscription = subscribe(cli, receiver)
    call, leg = recorded_call(pbx, store, seconds=0.5, end=False, tag="CRM-7")
    paused = pbx.call(f"recording/pause?{KEY}", channel=CHANNEL, uniqueid=call.uniqueid)
    resumed = pbx.call(f"recording/resume?{KEY}", channel=CHANNEL, uniqueid=call.uniqueid)
    stopped = pbx.call(f"recording/stop?{KEY}", channel=CHANNEL, uniqueid=call.uniqueid)
    assert (paused.status, resumed.status, stopped.status) == ("PAUSED", "RESUMED", "STOPPED")
    pbx.hang_up(call.uniqueid)
    wait_until(lambda: store.leg(leg.id).file_sha256, 10, "the file hashed")
    assert cli("recordings", "hold", leg.id, "--reason", "case 9", "--by", "boss")[0] == 0
    assert cli("recordings", "hold", leg.id, "--release")[0] == 0
    age(store, leg.id, timedelta(days=3))
    assert cli("recordings", "purge", "--older-than", "1d")[0] == 0
    failed = pbx.call(f"recording/start?{KEY}&tag=CRM-8", channel="PJSIP/411-00000001", mixmonitor_result=-1)
    assert failed.status != "STARTED"
    (failed_leg,) = store.find_legs(tag="CRM-8")

    kinds = ["started", "paused", "resumed", "ended", "ready", "held", "released", "purged"]
    wait_until(lambda: receiver.kinds(leg.id) == kinds, 15, f"{kinds} at the receiver, got {receiver.kinds(leg.id)}")
    wait_until(lambda: receiver.kinds(failed_leg.id) == ["started", "failed"], 10, "started and failed")
    events = {r.kind: r.body for r in receiver.events(leg.id)}
    final = store.leg(leg.id)
    assert all(r.verified for r in receiver.events())
    assert len({r.id for r in receiver.events()}) == len(receiver.events())
    for body in events.values():
        assert body["data"] | {"RecordingId": leg.id, "UniqueId": call.uniqueid, "Tag": "CRM-7", "Username": "fred",
                               "Ownership": "AGENT", "Leg": 1} == body["data"]
    assert events["started"]["timestamp"] == leg.start.isoformat()
    assert events["paused"]["data"]["Method"] == "restart" and events["resumed"]["data"]["Method"] == "restart"
    assert events["ended"]["data"]["State"] == "stopped" and events["ended"]["data"]["EndedBy"] == "dialplan"
    assert events["ready"]["data"]["FileSize"] == final.file_size
    assert events["ready"]["data"]["FileSha256"] == final.file_sha256
    assert events["ready"]["data"]["RecordingUrl"].endswith(f"retrieveRecording?recordingId={leg.id}")
    assert events["ready"]["timestamp"] == final.hashed_at.isoformat()
    assert (events["held"]["data"]["HeldBy"], events["held"]["data"]["HoldReason"]) == ("boss", "case 9")
    assert events["purged"]["data"]["StateBeforePurge"] == "stopped"
    assert events["purged"]["timestamp"] == final.purged_at.isoformat()
    failure = receiver.events(failed_leg.id)[1].body["data"]
    assert (failure["State"], failure["EndedBy"]) == ("failed", "mixmonitor")

    # (a delivery is marked done with the deliverer's next claim, a moment after it arrived)
    wait_until(lambda: cli("webhooks", "deliveries")[1].count("\tdelivered\t") == len(receiver.events()), 5,
               "every delivery marked done")
    code, out, _ = cli("webhooks", "list")
    assert out.startswith(f"{subscription}\t{receiver.url()}\tevents=all") and "pending=0" in out


def test_a_subscription_gets_only_the_kinds_and_tags_it_asked_for(pbx, store, people, cli, receiver):
    subscribe(cli, receiver, "--events", "ended,failed", "--tag-prefix", "CRM-")
    wanted, _ = recorded_call(pbx, store, seconds=0.2, tag="CRM-1")
    other, _ = recorded_call(pbx, store, seconds=0.2, tag="OTHER-1")

    wait_until(lambda: receiver.events(), 10, "the wanted leg's end")
    time.sleep(1.0)  # time for anything unwanted to arrive too
    assert [(r.kind, r.body["data"]["UniqueId"]) for r in receiver.events()] == [("ended", wanted.uniqueid)]
    assert cli("webhooks", "add", receiver.url(), "--events", "ended,bogus")[0] == 1
    assert cli("webhooks", "add", "ftp://127.0.0.1/x")[0] == 1


def test_no_subscription_no_event(store, asterisk):
    call = asterisk.call(f"recording/start?{KEY}&tag=T")
    asterisk.call(f"recording/stop?{KEY}", uniqueid=call.uniqueid)
    with store.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM webhook_events")) == 0


def test_test_remove_and_redeliver(store, cli, receiver):
    subscription = subscribe(cli, receiver)
    code, out, _ = cli("webhooks", "test", str(subscription))
    assert code == 0 and "answer: 200 (ok)" in out
    (test,) = receiver.events()
    assert test.verified and test.kind == "test" and out.startswith(f"webhook-id {test.id} ")

    # A delivery tried for three days is kept as failed, then sent again with the same id.
    outbox = Outbox(store)
    from tests.recording.test_store import leg as new_leg

    written = new_leg(unique_id="9.1")
    store.commit([written])
    (claimed,) = outbox.claim("me", timedelta(seconds=30), 10)
    later = claimed.queued_at + GIVE_UP_AFTER
    assert outbox.attempt_failed(claimed, "me", 500, "answered 500", now=later) == "failed"
    code, out, _ = cli("webhooks", "deliveries", "--failed")
    assert code == 0 and f"\tfailed\tstarted\tleg {written.id}\t{claimed.event.message_id}\t" in out
    code, out, _ = cli("check")
    assert "WARN webhooks: 1 deliveries given up" in out
    assert cli("webhooks", "redeliver", "--failed") == (0, "1 deliveries queued again\n", "")
    (again,) = outbox.claim("me", timedelta(seconds=30), 10)
    assert (again.id, again.event.message_id, again.attempts) == (claimed.id, claimed.event.message_id, 0)

    assert cli("webhooks", "remove", str(subscription))[0] == 0
    assert cli("webhooks", "remove", str(subscription))[0] == 1
    assert cli("webhooks", "list")[1] == ""


def test_check_warns_of_a_subscription_failing_for_an_hour(store, cli, receiver):
    subscription = subscribe(cli, receiver)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_subscriptions SET failing_since = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(minutes=61), "i": subscription})
    code, out, _ = cli("check")
    assert f"WARN webhooks: failing for an hour or more: {subscription} {receiver.url()}" in out
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_subscriptions SET failing_since = :t"), {"t": utcnow()})
    assert "ok   webhooks: 1 subscriptions, none failing" in cli("check")[1]


def test_a_hostile_receiver_delays_only_its_own_deliveries(store, settings, cli, receiver):
    good = subscribe(cli, receiver)
    hostile = {path: subscribe(cli, receiver, path=path) for path in ("/hang", "/500", "/redirect", "/huge")}
    with RunningService(settings.with_(webhook_timeout=2.0)) as running:
        asterisk = FakeAsterisk(running.port)
        latencies = []
        for _ in range(12):
            call = asterisk.call(f"recording/start?{KEY}&tag=H")
            stopped_at = time.monotonic()
            asterisk.call(f"recording/stop?{KEY}", uniqueid=call.uniqueid)
            leg = call.variables["RECORDING_ID"]
            arrived = wait_until(lambda: [r for r in receiver.events(leg) if r.kind == "ended"], 10,
                                 "the good receiver's ended event")
            latencies.append(arrived[0].at - stopped_at)
        # Each hostile receiver was tried, and none of them held the good one up for long.
        wait_until(lambda: all(receiver.hits.get(path) for path in hostile), 10, "every hostile receiver tried")
        assert max(latencies) < 3.0, latencies
        outcomes = running.app.webhooks.outcomes
    assert outcomes["delivered"] >= 24 and outcomes["retried"] >= 3
    deliveries = Outbox(store).deliveries(limit=1000)
    by_subscription = {}
    for d in deliveries:
        by_subscription.setdefault(d.subscription_id, []).append(d)
    assert all(d.state == "delivered" for d in by_subscription[good])
    for path in ("/500", "/redirect"):
        errors = {d.last_error for d in by_subscription[hostile[path]] if d.last_error}
        assert errors and all(e.startswith("answered 5" if path == "/500" else "answered 302 (redirect") for e in errors)
    # The endless answer was cut off after a few KiB: it counts as the 200 it began with.
    assert any(d.state == "delivered" for d in by_subscription[hostile["/huge"]])
    hung = {d.last_error for d in by_subscription[hostile["/hang"]] if d.last_error}
    # (an HTTP/1.0 receiver closes each connection: a reused one may be found closed)
    assert "no answer within 2 s" in hung and hung <= {"no answer within 2 s", "ServerDisconnectedError: Server disconnected"}


def test_internal_destinations_can_be_refused(store, settings, cli, receiver):
    subscribe(cli, receiver)
    with RunningService(settings.with_(webhook_deny="internal")) as running:
        asterisk = FakeAsterisk(running.port)
        asterisk.call(f"recording/start?{KEY}&tag=D")
        wait_until(lambda: [d for d in Outbox(store).deliveries() if d.last_error], 10, "a refused try")
    (delivery,) = Outbox(store).deliveries()
    assert delivery.state == "pending" and delivery.last_error == "not sent: 127.0.0.1 is in RECORDING_WEBHOOK_DENY"
    assert not receiver.events()
    with RunningService(settings.with_(webhook_deny="internal", webhook_allow="127.0.0.1/32")) as running:
        Outbox(store).redeliver([delivery.id])
        wait_until(lambda: receiver.events(), 10, "the delivery, 127.0.0.1 being allowed")


def test_payload_of_an_event_names_its_kind_and_time():
    at = utcnow()
    event = Event(1, "msg_x", "ready", "leg1", "1.1", 1, "T", None, "DEFAULT", at, file_size=10, file_sha256="a" * 64)
    body = payload(event)
    assert body.startswith(b'{"type":"recording.ready","timestamp":"' + at.isoformat().encode())


def test_the_readmes_receiver_check_accepts_our_requests_and_nothing_else():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("**Checking a request.**"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python"))]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    secret, body = new_secret(), b'{"type":"recording.started"}'
    sent = headers(secret, "msg_2", body)

    assert scope["verified"](secret, sent, body) is True
    assert scope["verified"](secret, sent, body + b"x") is False
    assert scope["verified"](new_secret(), sent, body) is False
    assert scope["verified"](secret, headers(secret, "msg_2", body, now=time.time() - 600), body) is False
