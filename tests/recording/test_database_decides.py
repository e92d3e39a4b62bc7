"""The database decides, not a process's memory: two `recording-agi serve` processes on one
database, and one restarted, against one fake Asterisk whose channels keep their variables and
MixMonitors from one AGI() to the next, as live channels do. Each case failed before (issue 25)."""

from __future__ import annotations

import pytest

from tests.fake_asterisk import WAV_HEADER_BYTES, FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve

KEY = f"apiKey={API_KEY}"
CHANNEL = "PJSIP/410-0000001a"


def route(name: str) -> str:
    return f"recording/{name}?{KEY}"


@pytest.fixture
def serve(database_url, store, files_settings, tmp_path):
    """``serve(n)``: the n-th `recording-agi serve` process on the test database (each with a
    journal of its own, all writing recordings to the same monitor directory), stopped at the
    end of the test."""
    running: list[Serve] = []

    def start(number: int) -> Serve:
        server = Serve(database_url, tmp_path, extra_env={
            "RECORDING_JOURNAL_DIR": str(tmp_path / f"journal-{number}"),
            "RECORDING_MONITOR_TEMPLATE": files_settings.monitor_template.replace("-{id:.8}", ""),
            "RECORDING_DATABASE_BUDGET": "5",
        })
        running.append(server)
        return server

    yield start
    for server in running:
        if server.process.poll() is None:
            server.stop()


def pbx(*servers: Serve) -> list[FakeAsterisk]:
    """One Asterisk (its channels shared) calling each server: the MixMonitors it runs write
    real files."""
    from pathlib import Path

    fakes = [FakeAsterisk(server.port, filesystem=Path("/")) for server in servers]
    for fake in fakes[1:]:
        fakes[0].channels = fake.channels = fakes[0].channels
    return fakes


def size(path: str) -> int:
    from pathlib import Path

    return Path(path).stat().st_size


def test_a_start_after_a_restart_does_not_overwrite_the_first_legs_audio(serve, store):
    first = serve(1)
    (asterisk,) = pbx(first)
    start = asterisk.call(route("start"), channel=CHANNEL)
    asterisk.talk(start.uniqueid, 1.0)
    asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)
    first.stop()
    audio = size(start.variables["RECORDING_FILE"])

    second = serve(2)
    asterisk.port = second.port
    again = asterisk.call(route("start"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (start.status, again.status) == ("STARTED", "STARTED")
    one, two = store.find_legs(unique_id=start.uniqueid)
    assert (one.leg, one.state, two.leg, two.state) == (1, "stopped", 2, "recording")
    # Two legs, two files: the first leg's audio is where it was, whole.
    assert one.file != two.file and two.file == again.variables["RECORDING_FILE"]
    assert audio > WAV_HEADER_BYTES and size(one.file) == audio
    (running,) = asterisk.channels[start.uniqueid].running
    assert running.file == two.file


def test_a_stop_on_one_process_and_a_start_on_the_other_record_again(serve, store):
    one, two = serve(1), serve(2)
    at_one, at_two = pbx(one, two)
    start = at_one.call(route("start"), channel=CHANNEL)
    stop = at_two.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)
    again = at_one.call(route("start"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (start.status, stop.status, again.status) == ("STARTED", "STOPPED", "STARTED")
    # The second process stopped the first's MixMonitor (its id read from the channel), and the
    # first, which remembered its leg as recording, asked the database before saying so.
    assert [m.id for m in stop.stopped] == [m.id for m in start.mixmonitors]
    (running,) = at_one.channels[start.uniqueid].running
    assert running.file == again.variables["RECORDING_FILE"] != start.variables["RECORDING_FILE"]
    assert [(v.leg, v.state) for v in store.find_legs(unique_id=start.uniqueid)] == [(1, "stopped"), (2, "recording")]


def test_a_pause_on_one_process_is_resumed_by_the_other(serve, store):
    """The second process started the leg and remembers it as recording."""
    one, two = serve(1), serve(2)
    at_one, at_two = pbx(one, two)
    start = at_two.call(route("start"), channel=CHANNEL)
    paused = at_one.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    # Without AMI a pause stops the MixMonitor: nothing records until the resume.
    assert paused.status == "PAUSED" and at_one.channels[start.uniqueid].running == []

    resumed = at_two.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert resumed.status == "RESUMED"
    (restarted,) = resumed.mixmonitors
    assert restarted.file == start.variables["RECORDING_FILE"] and restarted.options.startswith("a")
    assert at_two.channels[start.uniqueid].running == [restarted]
    (leg,) = store.find_legs(unique_id=start.uniqueid)
    assert leg.state == "recording" and [(p.method, p.resumed_at is not None) for p in leg.pauses] == [
        ("restart", True)]


def test_a_resume_on_one_process_after_a_pause_on_the_other_then_a_stop_back(serve, store):
    """The first process remembers its leg as recording all along; each route asks the database."""
    one, two = serve(1), serve(2)
    at_one, at_two = pbx(one, two)
    start = at_one.call(route("start"), channel=CHANNEL)
    at_two.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    resumed_elsewhere = at_one.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)
    paused_again = at_two.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    stopped = at_one.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (resumed_elsewhere.status, paused_again.status, stopped.status) == ("RESUMED", "PAUSED", "STOPPED")
    assert at_one.channels[start.uniqueid].running == []
    (leg,) = store.find_legs(unique_id=start.uniqueid)
    assert leg.state == "stopped" and len(leg.pauses) == 2 and all(p.resumed_at for p in leg.pauses)


def test_a_hangup_at_the_other_process_ends_the_leg(serve, store):
    one, two = serve(1), serve(2)
    at_one, at_two = pbx(one, two)
    start = at_one.call(route("start"), channel=CHANNEL)
    ended = at_two.call(route("hangup"), channel=CHANNEL, uniqueid=start.uniqueid)
    again = at_one.call(route("start"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (ended.status, again.status) == ("ENDED", "STARTED")
    assert [(v.leg, v.state, v.ended_by) for v in store.find_legs(unique_id=start.uniqueid)] == [
        (1, "ended", "hangup"), (2, "recording", None)]
