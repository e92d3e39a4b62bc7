"""Every captured scenario of a real Asterisk 22.10.1 (tests/captures/transfers) replayed into
the call tracker: the anchor, the parts in order with their agent, causes and the capture's
times. The times are those of the events in each capture (its README and header give the same
bridge timeline)."""

from __future__ import annotations

import logging

import pytest

from recording.calls import CallTracker, PartBegan, PeerChanged

from tests.capture_files import TRANSFER_IDS, capture_channels, events_only, pickup_capture, transfer_events
from tests.recording.calls.shorthand import by_call, replay, short


def call(start, answer, *rest):
    """The parts of a call that starts at ``start`` with no agent and is answered at ``answer``
    by ``rest[0]`` = (extension, at), followed by ``rest[1:]``: (cause, extension or None, at)
    for each change, ("peer", cause, at) for a swap within the part, and ("end", at, ended_at)
    last: the anchor hangs up (the last part ended at ``ended_at``)."""
    extension, at = answer
    out = [("began", 1, None, "start", start), ("ended", 1, None, "answer", at), ("began", 2, extension, "answer", at)]
    part, current = 2, extension
    for step in rest:
        if step[0] == "peer":
            out.append(("peer", part, current, step[1], step[2]))
        elif step[0] == "end":
            out += [("ended", part, current, "hangup", step[2]), ("call ended", "hangup", step[1])]
        else:
            cause, extension, at = step
            out += [("ended", part, current, cause, at), ("began", part + 1, extension, cause, at)]
            part, current = part + 1, extension
    return out


EXPECTED = {
    # AMI BlindTransfer of 410 to 411: 410's part ends at the transfer, the caller rings 411
    # (1 ms with Local channels), 411's part begins when 411 answers.
    "1": call(0.001, ("410", 0.023), ("transfer", None, 4.557), ("answer", "411", 4.558), ("end", 17.091, 17.091)),
    # The same into the phone context: the caller runs the phone's dialplan itself, no agent.
    "1b": call(0.001, ("410", 0.022), ("transfer", None, 4.561), ("end", 17.081, 17.081)),
    "2": call(0.001, ("410", 0.022), ("transfer", None, 5.569), ("answer", "411", 5.569), ("end", 18.096, 18.096)),
    # Atxfer: 410 holds the caller and leaves for the consultation (the caller waits alone: a
    # part with no agent), the bridges merge when 410 hangs up (411's part begins when the
    # consultation's channel enters the caller's bridge: transfer), then the Local pair to 411
    # optimises away (same agent: no new part).
    "3": call(0.006, ("410", 0.028), ("hold", None, 5.991), ("transfer", "411", 12.571),
              ("peer", "optimisation", 12.587), ("end", 25.110, 25.110)),
    # The Atxfer that failed (Hold then Unhold, nothing else): one part until 410 hangs up.
    "3x": call(0.006, ("410", 0.028), ("hangup", None, 20.108), ("end", 20.109, 20.109)),
    "4a": call(0.001, ("410", 0.026), ("peer", "optimisation", 0.046), ("end", 10.115, 10.115)),
    "4b": call(0.001, ("410", 0.026), ("end", 10.147, 10.147)),
    "4c": call(0.001, ("410", 0.024), ("end", 10.161, 10.161)),
    "4d": call(0.001, ("410", 0.024), ("end", 10.139, 10.139)),
    "4e": call(0.001, ("410", 0.025), ("peer", "optimisation", 3.602), ("end", 7.145, 7.145)),
    # Queue ringall 410/411: 411 answers (410's ringing leg is cancelled, never bridged), then
    # 411 blind-transfers to 412.
    "5": call(0.005, ("411", 0.028), ("transfer", None, 4.575), ("answer", "412", 4.576), ("end", 17.107, 17.106)),
    # AMI Redirect of the caller: no transfer event, the anchor's dialplan jump says it.
    "6": call(0.001, ("410", 0.023), ("redirect", None, 5.574), ("answer", "411", 5.574), ("end", 18.100, 18.100)),
}
# Capture 3n holds two calls one after the other (each ended by the caller's hangup).
EXPECTED_3N = {
    "1796435342.472": call(0.006, ("410", 0.029), ("end", 6.049, 6.048)),
    "1796435350.476": call(8.049, ("410", 8.071), ("end", 18.608, 18.608)),
}


def anchor_of(capture_id: str) -> dict[str, str]:
    """Linkedid -> the name of the caller's ``;2`` Local half (C2, the captures' analogue of
    the PJSIP trunk channel), from the capture's header."""
    return {linkedid: name for name, (_, linkedid) in capture_channels(capture_id).items()
            if "@capx-in-" in name and name.endswith(";2")}


def test_every_capture_has_its_expectation():
    assert sorted([*EXPECTED, "3n"]) == sorted(TRANSFER_IDS)


@pytest.mark.parametrize("capture_id", sorted(EXPECTED))
def test_a_capture_gives_its_parts_on_the_callers_channel(capture_id):
    transitions = replay(transfer_events(capture_id))
    assert [short(t) for t in transitions] == EXPECTED[capture_id]
    ((linkedid, anchor),) = anchor_of(capture_id).items()
    assert {(t.call, t.anchor_channel) for t in transitions} == {(linkedid, anchor)}
    uniqueid = capture_channels(capture_id)[anchor][0]
    assert {t.anchor_uniqueid for t in transitions} == {uniqueid}


def test_two_calls_one_after_the_other():
    calls = by_call(replay(transfer_events("3n")))
    assert {linkedid: [short(t) for t in found] for linkedid, found in calls.items()} == EXPECTED_3N
    anchors = anchor_of("3n")
    assert all(t.anchor_channel == anchors[t.call] for found in calls.values() for t in found)


@pytest.mark.parametrize("capture_id", sorted(EXPECTED))
def test_each_agent_part_names_the_agents_channel_in_the_callers_bridge(capture_id):
    """The peer a part names is the channel bridged with the caller: the agent's Local ``;1``
    half (the analogue of PJSIP/410-...), its unique id that of the capture's table."""
    table = capture_channels(capture_id)
    for transition in replay(transfer_events(capture_id)):
        if isinstance(transition, (PartBegan, PeerChanged)) and transition.extension:
            assert transition.peer_channel.startswith(f"Local/{transition.extension}@capx-")
            assert transition.peer_channel.endswith(";1")
            assert table[transition.peer_channel][0] == transition.peer_uniqueid


def test_the_attended_transfer_peers_follow_the_optimisation():
    peers = [(t.part, t.peer_channel) for t in replay(transfer_events("3")) if isinstance(t, (PartBegan, PeerChanged))]
    assert peers == [(1, None), (2, "Local/410@capx-agents-0000008d;1"), (3, None),
                     (4, "Local/411@capx-ext-0000008e;1"), (4, "Local/411@capx-agents-0000008f;1")]


@pytest.mark.parametrize("capture_id", TRANSFER_IDS)
def test_nothing_is_left_once_every_channel_hung_up(capture_id):
    tracker = CallTracker()
    replay(transfer_events(capture_id), tracker)
    assert (tracker.model.channels, tracker.model.bridges, tracker.model.calls, tracker.waiting()) == ({}, {}, {}, [])


def test_one_log_line_per_transition(caplog):
    # NOTE: at DEBUG: most calls are recorded by nobody, and the following's own INFO lines say
    # what it did for those that are.
    caplog.set_level(logging.DEBUG, logger="recording.calls")
    replay(transfer_events("3"))
    assert [r.getMessage() for r in caplog.records] == [
        "call 1796434840.280: - -> start -> part 1 (no agent)",
        "call 1796434840.280: part 1 (no agent) -> answer -> part 2 (410 on Local/410@capx-agents-0000008d;1)",
        "call 1796434840.280: part 2 (410 on Local/410@capx-agents-0000008d;1) -> hold -> part 3 (no agent)",
        "call 1796434840.280: part 3 (no agent) -> transfer -> part 4 (411 on Local/411@capx-ext-0000008e;1)",
        "call 1796434840.280: part 4 (411 on Local/411@capx-ext-0000008e;1) -> optimisation -> "
        "part 4 (411 on Local/411@capx-agents-0000008f;1)",
        "call 1796434840.280: part 4 (411 on Local/411@capx-agents-0000008f;1) -> hangup -> ended",
    ]


def test_call_pickup_on_a_real_asterisk():
    """tests/captures/pickup: the caller rings 411, 410 picks up (PickupChan): the caller's
    part with 410 begins at the pickup; 410's own call (the picker's Local pair) is a call of
    its own with no agent."""
    calls = by_call(replay(events_only(pickup_capture())))
    assert {linkedid: [short(t) for t in found] for linkedid, found in calls.items()} == {
        "1796439877.6": [("began", 1, None, "start", 0.003), ("ended", 1, None, "pickup", 2.006),
                         ("began", 2, "410", "pickup", 2.006), ("ended", 2, "410", "hangup", 4.008),
                         ("call ended", "hangup", 4.008)],
        "1796439879.10": [("began", 1, None, "start", 2.005), ("ended", 1, None, "hangup", 4.008),
                          ("call ended", "hangup", 4.008)],
    }
    assert {t.anchor_channel for t in calls["1796439877.6"]} == {"Local/s@cap-in-00000003;2"}
    (began,) = [t for t in calls["1796439877.6"] if isinstance(t, PartBegan) and t.extension]
    assert (began.peer_channel, began.peer_uniqueid) == ("Local/410@cap-phone-00000005;1", "1796439879.10")


@pytest.mark.parametrize("capture_id", ["3", "4a", "4e"])
def test_an_optimisation_whose_end_event_is_lost_gives_the_same_parts(capture_id):
    events = [item for item in transfer_events(capture_id) if item[1]["Event"] != "LocalOptimizationEnd"]
    assert [short(t) for t in replay(events)] == EXPECTED[capture_id]


def test_an_optimisation_whose_end_event_is_lost_ends_with_the_local_pair():
    """Capture 4a without its LocalOptimizationEnd, then the agent's phone leaves and hangs up
    (taken from the capture's end, without the caller's hangup): the agent's part ends at
    once, as it would had the end event come."""
    events = transfer_events("4a")
    kept = [item for item in events if item[0] < 1 and item[1]["Event"] != "LocalOptimizationEnd"]
    agent = "Local/410@capx-agents-00000094;1"
    tail = [e for at, e in events if at > 10 and e.get("Channel") == agent and e["Event"] in ("BridgeLeave", "Hangup")]
    tracker = CallTracker()
    replay(kept, tracker)
    assert [short(t) for t in replay([(5.0, e) for e in tail], tracker)] == [
        ("ended", 2, "410", "hangup", 5.0), ("began", 3, None, "hangup", 5.0)]
