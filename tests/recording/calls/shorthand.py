"""The call-model tests' shorthand: transitions as short tuples, replays, grouping by call."""

from __future__ import annotations

from typing import Iterable

from recording.calls import CallEnded, CallTracker, PartBegan, PartEnded, PeerChanged, Transition


def short(transition: Transition) -> tuple:
    """A transition without its call and anchor: ``("began", part, extension, cause, at)``,
    ``("ended", ...)``, ``("peer", ...)``, ``("call ended", cause, at)``; times to the ms."""
    if isinstance(transition, CallEnded):
        return ("call ended", transition.cause, round(transition.at, 3))
    kind = {PartBegan: "began", PartEnded: "ended", PeerChanged: "peer"}[type(transition)]
    return (kind, transition.part, transition.extension, transition.cause, round(transition.at, 3))


def replay(events: Iterable[tuple[float, dict[str, str]]], tracker: CallTracker | None = None) -> list[Transition]:
    """Every transition the events give, in order."""
    tracker = tracker or CallTracker()
    return [transition for at, event in events for transition in tracker.feed(event, at)]


def by_call(transitions: Iterable[Transition]) -> dict[str, list[Transition]]:
    calls: dict[str, list[Transition]] = {}
    for transition in transitions:
        calls.setdefault(transition.call, []).append(transition)
    return calls
