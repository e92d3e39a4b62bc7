"""The cases no capture shows, as made-up streams (tests/call_streams.py): SIP phones' blind
and attended transfers, a ringall queue whose loser is cancelled, the caller hanging up during
a transfer, call pickup; and other calls' events in between."""

from __future__ import annotations

import pytest

from recording.calls import CallTracker, PartBegan

from tests import call_streams
from tests.capture_files import transfer_events
from tests.fake_ami import rewrite_ids
from tests.recording.calls.shorthand import by_call, replay, short

CALLER = "1796500000.100"


def test_sip_blind_transfer_the_callers_bridgeleave_comes_before_the_blindtransfer():
    transitions = replay(call_streams.sip_blind_transfer())
    assert [short(t) for t in transitions] == [
        ("began", 1, None, "start", 0.5),
        ("ended", 1, None, "answer", 0.5),
        ("began", 2, "410", "answer", 0.5),
        # the part ends when the caller left 410's bridge, though the event saying why came after
        ("ended", 2, "410", "transfer", 10.5),
        ("began", 3, None, "transfer", 10.5),
        ("ended", 3, None, "answer", 13.552),
        ("began", 4, "411", "answer", 13.552),
        ("ended", 4, "411", "hangup", 33.552),
        ("call ended", "hangup", 33.552),
    ]
    assert {(t.call, t.anchor_channel) for t in transitions} == {(CALLER, "PJSIP/trunk-00000001")}


def test_the_part_waits_for_the_blindtransfer_event_then_ends_when_the_caller_left():
    # Without the BLINDTRANSFER variable (the next test has it), nothing says why the caller
    # left before the BlindTransfer event.
    tracker = CallTracker()
    events = [(at, e) for at, e in call_streams.sip_blind_transfer() if e.get("Variable") != "BLINDTRANSFER"]
    leave = next(i for i, (_, e) in enumerate(events) if e["Event"] == "BridgeLeave")
    replay(events[:leave + 1], tracker)
    assert tracker.waiting() == [CALLER]
    (_, transfer), *_ = events[leave + 1:]
    assert transfer["Event"] == "BlindTransfer"
    assert [short(t) for t in tracker.feed(transfer, 10.5004)] == [
        ("ended", 2, "410", "transfer", 10.5), ("began", 3, None, "transfer", 10.5)]
    assert tracker.waiting() == []


def test_the_blindtransfer_variable_ends_the_part_when_the_caller_leaves():
    tracker = CallTracker()
    events = call_streams.sip_blind_transfer()
    leave = next(i for i, (_, e) in enumerate(events) if e["Event"] == "BridgeLeave")
    transitions = replay(events[:leave + 1], tracker)
    assert tracker.waiting() == []
    assert [short(t) for t in transitions[-2:]] == [("ended", 2, "410", "transfer", 10.5),
                                                     ("began", 3, None, "transfer", 10.5)]


@pytest.mark.parametrize("order", ["moves-first", "event-first"])
def test_sip_attended_transfer_consultation_is_its_own_call_and_the_target_joins_the_callers(order):
    calls = by_call(replay(call_streams.sip_attended_transfer(order)))
    consultation = "1796500000.102"
    assert set(calls) == {CALLER, consultation}
    # The caller's call: 410's part (on hold included: 410 stays bridged with the caller),
    # then 411's, straight from one to the other.
    assert [short(t) for t in calls[CALLER]] == [
        ("began", 1, None, "start", 0.5),
        ("ended", 1, None, "answer", 0.5),
        ("began", 2, "410", "answer", 0.5),
        ("ended", 2, "410", "transfer", 16.8),
        ("began", 3, "411", "transfer", 16.8),
        ("ended", 3, "411", "hangup", 31.84),
        ("call ended", "hangup", 31.84),
    ]
    assert {t.anchor_channel for t in calls[CALLER]} == {"PJSIP/trunk-00000001"}
    began = [t for t in calls[CALLER] if isinstance(t, PartBegan) and t.extension == "411"]
    assert [(t.peer_channel, t.peer_uniqueid) for t in began] == [("PJSIP/411-00000004", "1796500000.103")]
    # The consultation: 410's second line is its anchor; it loses 411 at the transfer and ends.
    assert [short(t) for t in calls[consultation]] == [
        ("began", 1, None, "start", 8.8),
        ("ended", 1, None, "answer", 10.8),
        ("began", 2, "411", "answer", 10.8),
        ("ended", 2, "411", "transfer", 16.8),
        ("began", 3, None, "transfer", 16.8),
        ("ended", 3, None, "hangup", 16.84),
        ("call ended", "hangup", 16.84),
    ]
    assert {t.anchor_channel for t in calls[consultation]} == {"PJSIP/410-00000003"}


def test_the_targets_linkedid_moves_to_the_callers_call_and_a_stale_snapshot_does_not_move_it_back():
    tracker = CallTracker()
    events = call_streams.sip_attended_transfer("moves-first")
    event_at = next(i for i, (_, e) in enumerate(events) if e["Event"] == "AttendedTransfer")
    assert events[event_at][1]["TransferTargetLinkedid"] == "1796500000.102"  # taken before the transfer
    replay(events[:event_at + 1], tracker)
    target = tracker.model.channels["1796500000.103"]
    assert target.linkedid == CALLER
    assert "1796500000.103" in tracker.model.calls[CALLER].channels
    assert "1796500000.103" not in tracker.model.calls["1796500000.102"].channels


def test_a_ringall_queue_the_loser_is_cancelled_and_never_a_part():
    transitions = replay(call_streams.queue_ringall_cancel())
    assert [short(t) for t in transitions] == [
        ("began", 1, None, "start", 0.2),      # waiting in the queue: no agent
        ("ended", 1, None, "answer", 9.2),
        ("began", 2, "411", "answer", 9.2),
        ("ended", 2, "411", "hangup", 39.2),   # the agent hung up, the caller goes to a survey
        ("began", 3, None, "hangup", 39.2),
        ("ended", 3, None, "hangup", 47.2),
        ("call ended", "hangup", 47.2),
    ]


def test_the_caller_hangs_up_while_the_transfer_target_rings():
    transitions = replay(call_streams.hangup_during_transfer())
    assert [short(t) for t in transitions] == [
        ("began", 1, None, "start", 0.1),
        ("ended", 1, None, "answer", 0.1),
        ("began", 2, "410", "answer", 0.1),
        ("ended", 2, "410", "transfer", 7.1),
        ("began", 3, None, "transfer", 7.1),
        ("ended", 3, None, "hangup", 9.6),
        ("call ended", "hangup", 9.6),
    ]


def test_pickup_the_picking_extension_gets_the_part():
    calls = by_call(replay(call_streams.pickup()))
    assert [short(t) for t in calls[CALLER]] == [
        ("began", 1, None, "start", 0.3),
        ("ended", 1, None, "pickup", 4.3),
        ("began", 2, "410", "pickup", 4.3),
        ("ended", 2, "410", "hangup", 16.3),
        ("began", 3, None, "hangup", 16.3),
        ("ended", 3, None, "hangup", 16.3),
        ("call ended", "hangup", 16.3),
    ]
    # The picker's own call (it dialled the pickup code) ends as its channel joins the caller's.
    picker_call = "1796500000.102"
    assert [short(t) for t in calls[picker_call]] == [
        ("began", 1, None, "start", 4.3), ("ended", 1, None, "merged", 4.3), ("call ended", "merged", 4.3)]


def test_other_calls_interleaved_do_not_disturb():
    """Four calls at once, their events alternating one by one: each call gets exactly the
    transitions it gets alone."""
    streams = [rewrite_ids(transfer_events("3"), "a"), rewrite_ids(transfer_events("5"), "b"),
               rewrite_ids(call_streams.sip_attended_transfer(), "c"), rewrite_ids(transfer_events("3"), "d")]
    alone = {}
    for stream in streams:
        alone.update(by_call(replay(stream)))
    mixed = []
    for position in range(max(map(len, streams))):
        mixed += [stream[position] for stream in streams if position < len(stream)]
    assert by_call(replay(mixed)) == alone
    assert len(alone) == 5  # the SIP stream has two calls


def test_settle_ends_a_part_no_event_explained():
    """The agent's channel leaves the caller's bridge and nothing says why (a lost event):
    settle() ends the part as ``left``; had the agent gone, ``hangup``."""
    tracker = CallTracker()
    events = call_streams.queue_ringall_cancel()
    agent_leaves = next(i for i, (_, e) in enumerate(events)
                        if e["Event"] == "BridgeLeave" and e["Channel"].startswith("PJSIP/411"))
    kept = [item for item in events[:agent_leaves + 1] if item[1]["Event"] not in ("HangupRequest", "Hangup")]
    replay(kept, tracker)
    assert tracker.waiting() == [CALLER]
    assert [short(t) for t in tracker.settle(40.0)] == [
        ("ended", 2, "411", "left", 39.2), ("began", 3, None, "left", 39.2)]
    assert tracker.waiting() == []
    assert tracker.settle(41.0) == []


def test_an_attended_transfer_whose_merge_comes_before_the_transferers_leave():
    # Capture 3 as a real Asterisk 22.10.1 also sends it (3 runs of 4 in
    # tests/real_asterisk/test_following.py): BridgeMerge first, then the moved channel's
    # BridgeLeave/BridgeEnter, and only then the BridgeLeave of 410's channel, which hung up
    # and is not moved (bridge.c bridge_do_merge skips a channel already leaving). 410 must not
    # become the caller's agent again for a moment.
    events = transfer_events("3")
    a1 = "Local/410@capx-agents-0000008d;1"
    merge = next(i for i, (_, e) in enumerate(events) if e["Event"] == "BridgeMerge")
    leave = max(i for i, (_, e) in enumerate(events) if i < merge and e["Event"] == "BridgeLeave"
                and e["Channel"] == a1)
    moved = next(i for i, (_, e) in enumerate(events) if i > merge and e["Event"] == "BridgeEnter")
    reordered = events[:leave] + events[leave + 1:moved + 1] + [events[leave]] + events[moved + 1:]
    assert [short(t) for t in replay(reordered)] == [short(t) for t in replay(events)]


@pytest.mark.parametrize("capture_id", ["1", "5"])
def test_a_blind_transfer_whose_event_comes_after_the_callers_bridgeleave(capture_id):
    # As a real Asterisk 22.10.1 also sends it (tests/real_asterisk/test_following.py): the
    # BlindTransfer event after the caller's Newexten and both BridgeLeaves (the capture has it
    # before). The BLINDTRANSFER variable, set on the caller before the goto, says it first: the
    # part ends by a transfer, not by a Redirect, and the next agent's part begins by an answer.
    events = transfer_events(capture_id)
    transfer = next(i for i, (_, e) in enumerate(events) if e["Event"] == "BlindTransfer")
    leaves = [i for i, (_, e) in enumerate(events) if i > transfer and e["Event"] == "BridgeLeave"][:2]
    reordered = events[:transfer] + events[transfer + 1:leaves[1] + 1] + [events[transfer]] + events[leaves[1] + 1:]
    assert [e["Event"] for _, e in reordered[transfer:leaves[1] + 1] if e["Event"] in (
        "Newexten", "BridgeLeave", "BlindTransfer")] == ["Newexten", "BridgeLeave", "BridgeLeave", "BlindTransfer"]

    assert [short(t) for t in replay(reordered)] == [short(t) for t in replay(events)]
