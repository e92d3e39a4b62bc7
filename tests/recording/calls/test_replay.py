"""The fake AMI replaying captured scenarios over a real loopback socket to the real AMI client,
whose subscriber feeds a call tracker: the transitions are those of the capture read from the
file, two replays at once do not collide, and the fake's channel table follows the replay
(what CoreShowChannels lists mid-call rebuilds the model)."""

from __future__ import annotations

import asyncio
import time

import pytest

from recording.asterisk.ami import AMIClient
from recording.calls import CallTracker, find_anchor, rebuild

from tests.capture_files import transfer_events
from tests.fake_ami import FakeAMI, id_mapping, rewrite_event, rewrite_ids
from tests.recording.calls.shorthand import by_call, replay, short


@pytest.fixture
def fake():
    with FakeAMI() as server:
        yield server


def run(scenario, deadline: float = 10.0):
    async def bounded():
        return await asyncio.wait_for(scenario(), deadline)

    return asyncio.run(bounded())


async def connected(fake: FakeAMI) -> tuple[AMIClient, list[dict[str, str]]]:
    """A logged-in client and the list its subscriber appends every event to."""
    client = AMIClient.from_url(fake.url, action_timeout=2.0, connect_timeout=1.0, backoff=(0.05, 0.2))
    received: list[dict[str, str]] = []
    client.subscribe(received.append)
    await client.start()
    await client.wait_connected(2)
    return client, received


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_two_replays_over_the_socket_give_each_call_its_captured_transitions(fake):
    blind, attended = fake.replay(transfer_events("1")), fake.replay(transfer_events("3"))

    async def scenario():
        client, received = await connected(fake)
        await asyncio.to_thread(blind.play, 4.0)
        await asyncio.to_thread(attended.play)
        await asyncio.to_thread(blind.play)
        await until(lambda: len(received) == 1 + len(blind.events) + len(attended.events))
        await client.stop()
        return received

    received = run(scenario)
    assert received[0]["Event"] == "FullyBooted"
    sent = [item for item in blind.events if item[0] <= 4.0] + attended.events + \
        [item for item in blind.events if item[0] > 4.0]
    assert received[1:] == [event for _, event in sent]  # in order, as parsed from the wire
    tracker = CallTracker()
    calls = by_call(t for at, event in sent for t in tracker.feed(event, at))
    assert set(calls) == {blind.ids["1796434729.260"], attended.ids["1796434840.280"]}
    assert [short(t) for t in calls[blind.ids["1796434729.260"]]] == [short(t) for t in replay(transfer_events("1"))]
    assert [short(t) for t in calls[attended.ids["1796434840.280"]]] == [short(t) for t in replay(transfer_events("3"))]
    assert {t.anchor_channel for t in calls[blind.ids["1796434729.260"]]} == {blind.ids["Local/s1@capx-in-00000082;2"]}
    assert fake.channels == {}


def test_the_fakes_channels_follow_the_replay_and_rebuild_the_model(fake):
    replay_ = fake.replay(transfer_events("3"))

    async def scenario():
        client, received = await connected(fake)
        await asyncio.to_thread(replay_.play, 10.0)
        listed = await client.core_show_channels()
        await client.stop()
        return listed

    listed = run(scenario)
    caller = replay_.ids["Local/s3@capx-in-0000008c;2"]
    assert {c["Channel"]: c["BridgeId"] for c in listed} == {
        replay_.ids["Local/s3@capx-in-0000008c;1"]: "",
        caller: replay_.ids["599b19c3-f86a-4d6a-a14b-7a327b963538"],
        replay_.ids["Local/410@capx-agents-0000008d;1"]: replay_.ids["7cb13962-f0a3-4595-85be-3e3b0f0be36c"],
        replay_.ids["Local/410@capx-agents-0000008d;2"]: "",
        replay_.ids["Local/411@capx-ext-0000008e;1"]: replay_.ids["7cb13962-f0a3-4595-85be-3e3b0f0be36c"],
        replay_.ids["Local/411@capx-ext-0000008e;2"]: replay_.ids["3bd3af5d-f971-44c1-8cf6-b1ed217ddc78"],
        replay_.ids["Local/411@capx-agents-0000008f;1"]: replay_.ids["3bd3af5d-f971-44c1-8cf6-b1ed217ddc78"],
        replay_.ids["Local/411@capx-agents-0000008f;2"]: "",
    }
    assert {c["Linkedid"] for c in listed} == {replay_.ids["1796434840.280"]}
    rebuilt, transitions = rebuild(listed, at=10.0)
    assert [short(t) for t in transitions] == [("began", 1, None, "seen", 10.0)]  # alone on hold
    assert find_anchor(rebuilt.model, "411").name == caller
    assert replay_.play() > 0 and replay_.done


def test_rewriting_keeps_extensions_and_replaces_whole_ids_only():
    events = [{"Event": "VarSet", "Channel": "PJSIP/410-0000000a", "Uniqueid": "1796.26", "Linkedid": "1796.26",
               "Variable": "BRIDGEPEER", "Value": "PJSIP/410-0000000a"},
              {"Event": "Newchannel", "Channel": "PJSIP/411-0000000b", "Uniqueid": "1796.260", "Linkedid": "1796.26"}]
    mapping = id_mapping(events, "t9")
    assert mapping == {"PJSIP/410-0000000a": "PJSIP/410-t90000000a", "1796.26": "t9-1796.26",
                       "PJSIP/411-0000000b": "PJSIP/411-t90000000b", "1796.260": "t9-1796.260"}
    assert rewrite_event(events[0], mapping)["Value"] == "PJSIP/410-t90000000a"
    assert rewrite_event(events[1], mapping)["Uniqueid"] == "t9-1796.260"
    with pytest.raises(ValueError):
        id_mapping(events, "t-9")
    assert rewrite_ids([(1.0, events[1])], "z")[0] == (1.0, rewrite_event(events[1], id_mapping([events[1]], "z")))
