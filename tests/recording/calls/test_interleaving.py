"""Property: whatever the interleaving of two calls' event streams (each kept in its own
order, as Asterisk sends a call's events), each call gets the same transitions as alone."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import call_streams
from tests.capture_files import TRANSFER_IDS, events_only, pickup_capture, transfer_events
from tests.fake_ami import rewrite_ids
from tests.recording.calls.shorthand import by_call, replay

SCENARIOS = {f"capture {c}": (lambda c=c: transfer_events(c)) for c in TRANSFER_IDS}
SCENARIOS.update({
    "sip blind": call_streams.sip_blind_transfer,
    "sip attended": call_streams.sip_attended_transfer,
    "sip attended, event first": lambda: call_streams.sip_attended_transfer("event-first"),
    "queue ringall": call_streams.queue_ringall_cancel,
    "hangup during transfer": call_streams.hangup_during_transfer,
    "pickup": call_streams.pickup,
    "capture pickup": lambda: events_only(pickup_capture()),
})
NAMES = sorted(SCENARIOS)
_streams: dict[tuple[str, str], list] = {}
_alone: dict[tuple[str, str], dict] = {}


def stream(name: str, tag: str) -> list:
    if (name, tag) not in _streams:
        _streams[name, tag] = rewrite_ids(SCENARIOS[name](), tag)
        _alone[name, tag] = by_call(replay(_streams[name, tag]))
    return _streams[name, tag]


def interleave(first: list, second: list, picks: list[bool]) -> list:
    """The two lists merged, each in its own order: a True pick takes from ``first`` while it
    lasts; whatever remains follows."""
    a, b, out = iter(first), iter(second), []
    for pick in picks:
        item = next(a if pick else b, None)
        if item is not None:
            out.append(item)
    return out + list(a) + list(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(NAMES), second=st.sampled_from(NAMES),
       picks=st.lists(st.booleans(), min_size=0, max_size=700))
def test_two_calls_interleaved_each_get_their_transitions_as_alone(first, second, picks):
    one, two = stream(first, "x"), stream(second, "y")
    mixed = interleave(one, two, picks)
    assert len(mixed) == len(one) + len(two)
    expected = {**_alone[first, "x"], **_alone[second, "y"]}
    assert by_call(replay(mixed)) == expected


def test_the_interleaving_takes_each_list_in_order():
    assert interleave([1, 2, 3], ["a", "b"], [True, False, False, True, False]) == [1, "a", "b", 2, 3]
    assert interleave([1], [2], []) == [1, 2]


def test_the_rewritten_copies_are_calls_of_their_own():
    calls = set(_alone_of("capture 3", "x")) | set(_alone_of("capture 3", "y"))
    assert calls == {"x-1796434840.280", "y-1796434840.280"}


def _alone_of(name: str, tag: str) -> dict:
    stream(name, tag)
    return _alone[name, tag]
