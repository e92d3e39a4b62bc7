"""Finding a call's anchor from the channel the dialplan or the CRM names, and rebuilding the
model from Asterisk's listings (CoreShowChannels), checked on the listings the captures hold
(``core show channels concise``, with the Linkedid of the capture's channel table, as
CoreShowChannel gives it)."""

from __future__ import annotations

import pytest

from recording.calls import AmbiguousAnchor, CallTracker, NoAnchor, find_anchor, rebuild

from tests import call_streams
from tests.capture_files import (
    TRANSFER_IDS, capture_channels, concise_snapshots, events_only, pickup_capture, transfer_events,
)
from tests.fake_ami import rewrite_ids
from tests.recording.calls.shorthand import replay, short


CALLER_PICKUP = "1796439877.6"


def tracker_at(events, until: float) -> CallTracker:
    tracker = CallTracker()
    replay([(at, e) for at, e in events if at <= until], tracker)
    return tracker


# --- find_anchor ---


def test_the_anchor_of_every_channel_of_the_call_and_of_the_agents_extension():
    tracker = tracker_at(transfer_events("1"), 2.03)
    caller, agent = "Local/s1@capx-in-00000082;2", "Local/410@capx-agents-00000083;1"
    table = capture_channels("1")
    for target in (caller, table[caller][0], agent, table[agent][0], "Local/410@capx-agents-00000083;2",
                   "Local/s1@capx-in-00000082;1", "410"):
        assert find_anchor(tracker.model, target).name == caller, target
    # Not by extension (the FastAGI start's question): a unique id or a name, never "410".
    for target in (caller, table[caller][0], agent):
        assert find_anchor(tracker.model, target, by_extension=False).name == caller, target
    with pytest.raises(NoAnchor, match="unique id or name '410'"):
        find_anchor(tracker.model, "410", by_extension=False)
    with pytest.raises(NoAnchor, match="'411'"):
        find_anchor(tracker.model, "411")
    replay([(at, e) for at, e in transfer_events("1") if 2.03 < at <= 9.0], tracker)
    assert find_anchor(tracker.model, "411").name == caller
    with pytest.raises(NoAnchor):
        find_anchor(tracker.model, "410")


def test_during_an_attended_transfers_consultation_both_agents_lead_to_the_caller():
    tracker = tracker_at(transfer_events("3"), 10.0)
    for target in ("410", "411", "Local/411@capx-ext-0000008e;1", "Local/411@capx-agents-0000008f;2"):
        assert find_anchor(tracker.model, target).name == "Local/s3@capx-in-0000008c;2", target


def test_with_sip_phones_the_agent_leads_to_the_caller_and_the_target_to_the_consultation():
    events = call_streams.sip_attended_transfer()
    tracker = tracker_at(events, 12.0)
    assert find_anchor(tracker.model, "410").name == "PJSIP/trunk-00000001"  # talking with the caller
    assert find_anchor(tracker.model, "411").name == "PJSIP/410-00000003"    # the consultation call
    replay([(at, e) for at, e in events if 12.0 < at <= 20.0], tracker)
    assert find_anchor(tracker.model, "411").name == "PJSIP/trunk-00000001"


def test_an_extension_on_two_calls_is_ambiguous():
    tracker = CallTracker()
    replay([item for item in rewrite_ids(transfer_events("1"), "a") if item[0] <= 2], tracker)
    replay([item for item in rewrite_ids(transfer_events("1"), "b") if item[0] <= 2], tracker)
    with pytest.raises(AmbiguousAnchor) as raised:
        find_anchor(tracker.model, "410")
    assert "Local/s1@capx-in-a00000082;2" in str(raised.value) and "Local/s1@capx-in-b00000082;2" in str(raised.value)
    assert find_anchor(tracker.model, "a-1796434729.262").name == "Local/s1@capx-in-a00000082;2"


def test_a_ringing_member_of_a_queue_leads_to_the_caller():
    tracker = tracker_at(call_streams.queue_ringall_cancel(), 6.0)
    assert find_anchor(tracker.model, "410").name == "PJSIP/trunk-00000001"


def test_a_name_from_outside_is_escaped_in_the_error():
    with pytest.raises(NoAnchor) as raised:
        find_anchor(CallTracker().model, "41\x1b[2J0")
    assert "\x1b" not in str(raised.value) and "\\x1b" in str(raised.value)


# --- rebuild ---


def listing(capture_id: str, snapshot) -> list[dict[str, str]]:
    """A concise snapshot as the CoreShowChannel events of that moment."""
    table = capture_channels(capture_id)
    return [{"Event": "CoreShowChannel", "Channel": row["Channel"], "Uniqueid": row["Uniqueid"],
             "Linkedid": table[row["Channel"]][1], "BridgeId": row["BridgeID"], "Application": row["Application"]}
            for row in snapshot.rows]


SNAPSHOTS = [(c, i) for c in TRANSFER_IDS for i, s in enumerate(concise_snapshots(c)) if s.rows]


@pytest.mark.parametrize("capture_id,index", SNAPSHOTS)
def test_a_rebuilt_model_continues_as_the_one_that_saw_every_event(capture_id, index):
    """Rebuilt mid-call from the listing, with the part the database knows: the same anchor,
    part and agent's channel as the tracker that saw the whole call; fed the rest of the
    events, the same transitions."""
    snapshot = concise_snapshots(capture_id)[index]
    events = transfer_events(capture_id)
    seen = tracker_at(events, snapshot.at)
    known = {c.linkedid: (c.part.seq, c.part.extension) for c in seen.model.calls.values() if c.part}
    rebuilt, transitions = rebuild(listing(capture_id, snapshot), at=snapshot.at, parts=known)
    assert transitions == []
    for linkedid, call in seen.model.calls.items():
        again = rebuilt.model.calls[linkedid]
        assert (again.anchor, again.part) == (call.anchor, call.part)
    rest = [(at, e) for at, e in events if at > snapshot.at]
    assert replay(rest, rebuilt) == replay(rest, seen)


def test_rebuilt_without_the_database_each_call_is_seen_in_its_current_part():
    snapshot = concise_snapshots("3")[1]  # +9.999 s: the consultation; the caller alone on hold
    _, transitions = rebuild(listing("3", snapshot), at=snapshot.at)
    assert [short(t) for t in transitions] == [("began", 1, None, "seen", 9.999)]
    assert transitions[0].anchor_channel == "Local/s3@capx-in-0000008c;2"


def test_rebuilt_after_a_part_the_database_did_not_see_end():
    snapshot = concise_snapshots("1")[1]  # +6.6 s: the caller with 411
    _, transitions = rebuild(listing("1", snapshot), at=snapshot.at, parts={"1796434729.260": (2, "410")})
    assert [short(t) for t in transitions] == [("ended", 2, "410", "left", snapshot.at),
                                               ("began", 3, "411", "seen", snapshot.at)]
    assert transitions[1].peer_channel == "Local/411@capx-agents-00000084;1"


def test_bridge_info_puts_a_channel_the_channel_listing_had_outside_any_bridge():
    rows = [{"Channel": "PJSIP/trunk-00000001", "Uniqueid": "1.1", "Linkedid": "1.1", "BridgeId": "b"},
            {"Channel": "PJSIP/410-00000002", "Uniqueid": "1.2", "Linkedid": "1.1", "BridgeId": ""}]
    _, transitions = rebuild(rows, at=5.0)
    assert [(t.extension, t.peer_channel) for t in transitions] == [(None, None)]
    _, transitions = rebuild(rows, {"b": [{"Uniqueid": "1.1"}, {"Uniqueid": "1.2"}]}, at=5.0)
    assert [(t.extension, t.peer_channel) for t in transitions] == [("410", "PJSIP/410-00000002")]


def test_rebuilt_from_what_a_real_asterisk_listed_after_a_pickup():
    """tests/captures/pickup: CoreShowChannels and BridgeInfo as Asterisk answered them mid-call
    (the picker's Linkedid already the caller's there, though no event had said so)."""
    messages = pickup_capture()
    listed = [m for at, m in messages if m.get("Event") == "CoreShowChannel" and at > 3]
    info = [m for at, m in messages if m.get("Event") == "BridgeInfoChannel"]
    (bridge,) = {m["BridgeId"] for m in listed if m["BridgeId"]}
    events = events_only(messages)
    listed_at = next(at for at, m in messages if m.get("Event") == "CoreShowChannel" and at > 3)
    seen = tracker_at(events, listed_at)
    rebuilt, transitions = rebuild(listed, {bridge: info}, at=listed_at)
    caller = seen.model.calls[CALLER_PICKUP]
    shown = {t.call: (short(t), t.anchor_channel, t.peer_channel) for t in transitions}
    assert shown == {
        CALLER_PICKUP: (("began", 1, "410", "seen", listed_at), "Local/s@cap-in-00000003;2",
                        "Local/410@cap-phone-00000005;1"),
        # the picker's Local pair: its ;2 half (the "phone") is a call of its own
        "1796439879.10": (("began", 1, None, "seen", listed_at), "Local/410@cap-phone-00000005;2", None),
    }
    assert (rebuilt.model.calls[CALLER_PICKUP].anchor, rebuilt.model.calls[CALLER_PICKUP].part.peer_uniqueid) == (
        caller.anchor, caller.part.peer_uniqueid)
    # The tracker that saw the events copied the caller's Linkedid to the picker as Asterisk did.
    assert seen.model.channels[caller.part.peer_uniqueid].linkedid == CALLER_PICKUP
    assert {m["Uniqueid"]: m["Linkedid"] for m in listed}[caller.part.peer_uniqueid] == CALLER_PICKUP
    assert find_anchor(rebuilt.model, "410").name == find_anchor(seen.model, "410").name == "Local/s@cap-in-00000003;2"
