"""``bench/amistream.py --self-test``: the AMI stream checked against the transfer captures
(bench/run.py runs it before a run with ``+ami`` servers)."""

from __future__ import annotations

import asyncio

from amistream import PLACEHOLDER, SCENARIOS, Slot, Stream, _PLACEHOLDER, render
from tests.capture_files import transfer_capture_path, transfer_events
from tests.fake_ami import rewrite_ids


def self_test() -> int:
    """Checks the stream against the captures: the schedule (every copy's events at their
    captured times after the copy's start, none twice, none missed), each copy's events as
    tests/fake_ami.py's ``rewrite_ids`` gives them under the copy's tag, and, over a socket
    with the service's own AMI client: the login, every event due heard once and in order,
    no id shared by two copies, nothing sent while paused, CoreShowChannels listing the
    channels the events left alive. Prints what failed; returns 0 when nothing did."""
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    captured = {c: transfer_events(c) for c in SCENARIOS}
    for capture in SCENARIOS:
        check(PLACEHOLDER not in transfer_capture_path(capture).read_text(encoding="utf-8"),
              f"the placeholder {PLACEHOLDER} occurs in capture {capture}")
    rate, until = 40.0, 31.337  # past the longest scenario (25 s): the schedule's steady state
    stream = Stream(rate)
    # (the last millisecond left out of both: float sums may put an event either side of it)
    order = [at for _, _, at in stream.due(until)]
    check(all(a <= b + 1e-9 for a, b in zip(order, order[1:])), "schedule: the events are not given in time order")
    stream = Stream(rate)
    got = sorted((copy, slot.index, at) for slot, copy, at in stream.due(until) if at <= until - 1e-3)
    want = sorted((k, i, k / rate + t) for k in range(int(until * rate) + 1)
                  for i, (t, _) in enumerate(captured[SCENARIOS[k % 4]]) if k / rate + t <= until - 1e-3)
    check([g[:2] for g in got] == [w[:2] for w in want], f"schedule: {len(got)} events due by {until}s, not "
                                                         f"the {len(want)} the captures' times give")
    check(max((abs(g[2] - w[2]) for g, w in zip(got, want)), default=0) < 1e-6,
          "schedule: an event is not due at its copy's start plus its captured time")
    for copy in (0, 1, 2, 3, 517, 1250):
        scenario = SCENARIOS[copy % 4]
        templates = [slot.template for slot in sorted(stream.slots, key=lambda s: s.index)
                     if SCENARIOS[slot.scenario] == scenario]
        expected = [render(event) for _, event in rewrite_ids(captured[scenario], f"c{copy}")]
        check([t.replace(_PLACEHOLDER, f"c{copy}".encode()) for t in templates] == expected,
              f"copy {copy}: its events are not rewrite_ids(capture {scenario}, 'c{copy}')")
    failures += asyncio.run(_over_a_socket())
    for failure in failures:
        print(f"FAIL: {failure}")
    print(f"amistream self-test: {'failed' if failures else 'ok'}")
    return 1 if failures else 0


async def _over_a_socket() -> list[str]:
    from recording.asterisk.ami import AMIClient

    failures: list[str] = []
    stream = Stream(50.0, username="bench", secret="s3cret")
    rewritten: dict[int, list[dict[str, str]]] = {}

    def expected_event(slot: Slot, copy: int) -> dict[str, str]:
        if copy not in rewritten:
            rewritten[copy] = [e for _, e in rewrite_ids(transfer_events(SCENARIOS[slot.scenario]), f"c{copy}")]
        return rewritten[copy][slot.index]

    port = await stream.start("127.0.0.1", 0)
    client = AMIClient("127.0.0.1", port, "bench", "s3cret")
    heard: list[dict[str, str]] = []
    client.subscribe(heard.append)
    await client.start()
    try:
        await client.wait_connected(5)
        stream.go()
        await asyncio.sleep(1.5)
        stream.pause()
        figures = stream.interval()["interval"]
        for _ in range(100):
            if len(heard) - 1 >= figures["sent"]:  # FullyBooted first
                break
            await asyncio.sleep(0.02)
        events = [e for e in heard if e.get("Event") != "FullyBooted"]
        if len(events) != figures["sent"] or figures["sent"] != figures["due"] or not figures["kept"]:
            failures.append(f"socket: {len(events)} events heard, {figures}")
        # the same schedule run to the same clock, each event as rewrite_ids gives it for its copy
        schedule = Stream(50.0).due(stream.clock())
        expected = [expected_event(slot, copy) for slot, copy, _ in schedule]
        if [{k: v for k, v in e.items() if k != "Timestamp"} for e in events] != expected:
            failures.append("socket: the events heard are not the schedule's, in order")
        if not all("Timestamp" in e for e in events):
            failures.append("socket: an event without Timestamp")
        owner: dict[str, int] = {}
        for event, (slot, copy, _) in zip(events, schedule):
            for key in ("Uniqueid", "Linkedid"):
                if event.get(key) and owner.setdefault(event[key], copy) != copy:
                    failures.append(f"socket: {key} {event[key]} in two copies")
        if len({copy for _, copy, _ in schedule}) != figures["copies"]:
            failures.append(f"socket: {figures['copies']} copies counted as started")
        before = len(heard)
        await asyncio.sleep(0.3)
        if len(heard) != before:
            failures.append("socket: events went on while paused")
        alive: dict[str, None] = {}
        for event in events:
            if event.get("Event") == "Newchannel":
                alive[event["Channel"]] = None
            elif event.get("Event") == "Hangup":
                alive.pop(event.get("Channel", ""), None)
            elif event.get("Event") == "Rename" and event.get("Channel") in alive:
                alive[event["Newname"]] = alive.pop(event["Channel"])
        listed = await client.core_show_channels()
        if sorted(e.get("Channel", "") for e in listed) != sorted(alive):
            failures.append(f"socket: CoreShowChannels listed {len(listed)} channels, the events left {len(alive)}")
    finally:
        await client.stop()
        stream.server.close()
    return failures
