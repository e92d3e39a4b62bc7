"""What each route costs the caller: every AGI command is a full round trip that the channel waits
in AGI() (a real res_agi answers one command at a time), so each route sends as few as
correctness allows. Counted from the fake Asterisk's side of the socket. The README's table of
commands per route says the same."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from agi.protocol import split_command
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_lifecycle import CHANNEL, mirror, only_leg, route
from tests.service_runner import RunningService

MSET = "EXEC MSet"


def verbs(call) -> list[str]:
    """Each command as its verb and, for EXEC, its application: ``EXEC MixMonitor``."""
    return [" ".join(split_command(command)[:2]) for command in call.commands]


def test_a_start_sends_three_commands(asterisk):
    call = asterisk.call(route("start", "&tag=T"), channel=CHANNEL)

    assert call.status == "STARTED"
    assert verbs(call) == ["EXEC MixMonitor", "GET VARIABLE", MSET]
    # All five result variables came with the one MSet.
    assert set(call.assigned) == {"RECORDING_STATUS", "RECORDING_ERROR", "RECORDING_ID", "RECORDING_FILE",
                                  "RECORDING_DEFERRED"}
    assert call.stalled == 0


def test_a_start_with_the_key_in_a_channel_variable_sends_four(asterisk):
    call = asterisk.call("recording/start?tag=T", channel=CHANNEL, variables={"RECORDING_API_KEY": API_KEY})

    assert call.status == "STARTED"
    assert verbs(call) == ["GET VARIABLE", "EXEC MixMonitor", "GET VARIABLE", MSET]


@pytest.mark.parametrize(
    "script, status",
    [
        ("recording/start?apiKey=wrong", "DENIED"),
        (f"recording/start?apiKey={API_KEY}&nope=1", "INVALID"),
        (f"recording/start?apiKey={API_KEY}&agentLoginName=nobody", "INVALID"),
        ("recording/nothing-here", "INVALID"),
        (f"recording/stop?apiKey={API_KEY}", "NOT_RECORDING"),
        (f"recording/pause?apiKey={API_KEY}", "NOT_RECORDING"),
        (f"recording/hangup?apiKey={API_KEY}", "NOT_RECORDING"),
        ("health", "OK"),
    ],
)
def test_an_answer_without_work_is_one_command(asterisk, script, status):
    call = asterisk.call(script, channel=CHANNEL)

    assert call.status == status
    assert verbs(call) == [MSET]


def test_the_lifecycle_without_the_manager(asterisk):
    start = asterisk.call(route("start"), channel=CHANNEL)
    again = asterisk.call(route("start", "&tag=newer"), channel=CHANNEL, uniqueid=start.uniqueid)
    paused = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)
    stopped = asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)
    hangup = asterisk.call(route("hangup"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert [c.status for c in (again, paused, resumed, stopped, hangup)] == [
        "ALREADY_RECORDING", "PAUSED", "RESUMED", "STOPPED", "NOT_RECORDING"]
    assert verbs(again) == [MSET]
    assert verbs(paused) == ["EXEC StopMixMonitor", MSET]
    assert verbs(resumed) == ["EXEC MixMonitor", "GET VARIABLE", MSET]
    assert verbs(stopped) == ["EXEC StopMixMonitor", MSET]
    assert verbs(hangup) == [MSET]


def test_pause_and_resume_with_the_manager_are_one_command_each(ami_service, fake_ami):
    asterisk = FakeAsterisk(ami_service.port)
    start = asterisk.call(route("start"), channel=CHANNEL)
    mirror(fake_ami, start)

    paused = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)
    ended = asterisk.call(route("hangup"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert [c.status for c in (paused, resumed, ended)] == ["PAUSED", "RESUMED", "ENDED"]
    assert [verbs(c) for c in (paused, resumed, ended)] == [[MSET], [MSET], [MSET]]


def test_a_process_that_did_not_start_the_leg_reads_its_id_from_the_channel(store, settings):
    with RunningService(settings) as first:
        asterisk = FakeAsterisk(first.port)
        start = asterisk.call(route("start"), channel=CHANNEL)
    (monitor,) = start.mixmonitors
    assert only_leg(store, start.uniqueid).mixmonitor_id is None

    # A restart (or another process sharing the database) knows the leg only from the database.
    with RunningService(settings) as second:
        asterisk.port = second.port
        stopped = asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert stopped.status == "STOPPED"
    assert verbs(stopped) == ["GET VARIABLE", "EXEC StopMixMonitor", MSET]
    assert split_command(stopped.commands[0])[2] == f"RECORDING_MIXMON_{start.variables['RECORDING_ID']}"
    assert stopped.stopped == [monitor]
    assert only_leg(store, start.uniqueid).state == "stopped"


def test_the_leg_is_written_while_mixmonitor_is_being_started(asterisk, store):
    # The commit overlaps the round trips: the leg reaches the database while Asterisk still
    # holds the reply to EXEC MixMonitor, and the dialplan hears STARTED only after both.
    seen: dict[str, list] = {}
    found = threading.Event()

    def before_reply(line: str) -> None:
        if line.startswith("EXEC MixMonitor"):
            for _ in range(100):
                legs = store.find_legs(tag="overlap")
                if legs:
                    seen["legs"] = legs
                    found.set()
                    return
                found.wait(0.02)

    call = asterisk.call(route("start", "&tag=overlap"), channel=CHANNEL, before_reply=before_reply)

    assert call.status == "STARTED"
    assert found.is_set(), "the leg was not in the database while MixMonitor's reply was held back"
    (leg,) = seen["legs"]
    assert (leg.id, leg.state, leg.tag) == (call.variables["RECORDING_ID"], "recording", "overlap")


@pytest.mark.parametrize("name", ["foo(", "foo[", "a)b]", 'q"uote', "x,y", "back\\\\slash"])
def test_an_error_quoting_unbalanced_brackets_still_sets_all_five_variables(asterisk, name):
    # MSet's argument parser does not split inside (...) or [...]: unescaped, one "(" in the
    # error sentence would swallow the variables after it.
    call = asterisk.call(f"recording/start?apiKey={API_KEY}&{name}=1", channel=CHANNEL)

    assert verbs(call) == [MSET]
    assert call.status == "INVALID"
    assert call.error.startswith(f"unknown argument {name!r} in the URL (expected ")
    assert (call.assigned["RECORDING_ID"], call.assigned["RECORDING_FILE"], call.assigned["RECORDING_DEFERRED"]) == (
        "", "", "0")


class SlowHandler(logging.Handler):
    """A log handler that takes its time, as a slow disk or a busy journald would."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.5)


def test_the_channel_goes_back_to_the_dialplan_before_the_bookkeeping(asterisk):
    # Asterisk returns to the dialplan when the server half-closes; the session's log line and
    # metrics come after that, off the caller's wait.
    told: dict[str, float] = {}
    slow = SlowHandler()
    logger = logging.getLogger("recording.fastagi")
    logger.addHandler(slow)
    try:
        call = asterisk.call(route("start"), channel=CHANNEL,
                             before_reply=lambda line: told.setdefault("mset", time.monotonic()) if "MSet" in line else None)
        returned = time.monotonic()
    finally:
        logger.removeHandler(slow)

    assert call.status == "STARTED" and call.server_closed
    assert returned - told["mset"] < 0.4


def test_a_muted_leg_another_process_paused_is_unmuted_not_restarted(store, settings, fake_ami):
    configured = settings.with_(ami_url=fake_ami.url, ami_timeout=1.0)
    with RunningService(configured) as first:
        first.run(first.app.manager.client.wait_connected(5))
        asterisk = FakeAsterisk(first.port)
        start = asterisk.call(route("start"), channel=CHANNEL)
        managed = mirror(fake_ami, start)
        assert asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid).status == "PAUSED"
    (monitor,) = managed.mixmonitors
    assert monitor.muted_read and monitor.muted_write

    # A restart knows the muted leg only from the database: its MixMonitor id is on the channel.
    with RunningService(configured) as second:
        second.run(second.app.manager.client.wait_connected(5))
        asterisk.port = second.port
        resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert resumed.status == "RESUMED"
    assert verbs(resumed) == ["GET VARIABLE", MSET]
    assert not monitor.muted_read and not monitor.muted_write and monitor.running
    assert resumed.stopped == [] and resumed.mixmonitors == []
    assert only_leg(store, start.uniqueid).state == "recording"
