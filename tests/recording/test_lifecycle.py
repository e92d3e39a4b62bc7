"""A leg's life after its start: stop, pause and resume (muted over AMI, or stopped and restarted
appending to the file without it), the end by hangup, and legs whose channel vanished."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest

from recording.service import utcnow
from tests.fake_ami import FakeMixMonitor
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_store import leg as new_leg
from tests.waiting import wait_until

KEY = f"apiKey={API_KEY}"
CHANNEL = "PJSIP/410-0000001a"


def route(name: str, extra: str = "") -> str:
    return f"recording/{name}?{KEY}{extra}"


def mirror(fake_ami, call):
    """Shows the fake manager the channel and MixMonitors the fake FastAGI channel has: in a
    real Asterisk both interfaces see one channel."""
    channel = fake_ami.add_channel(call.channel, uniqueid=call.uniqueid)
    for monitor in call.state.mixmonitors:
        channel.mixmonitors.append(FakeMixMonitor(monitor.id, monitor.file, monitor.options,
                                                  running=monitor not in call.state.stopped))
    return channel


def only_leg(store, uniqueid):
    (leg,) = store.find_legs(unique_id=uniqueid)
    return leg


def test_pause_resume_and_hangup_with_the_manager(ami_service, fake_ami, store):
    asterisk = FakeAsterisk(ami_service.port)
    start = asterisk.call(route("start", "&tag=PCI"), channel=CHANNEL)
    managed = mirror(fake_ami, start)
    (monitor,) = managed.mixmonitors

    paused = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    assert (paused.status, paused.variables["RECORDING_ID"]) == ("PAUSED", start.variables["RECORDING_ID"])
    assert monitor.muted_read and monitor.muted_write and monitor.running
    leg = only_leg(store, start.uniqueid)
    assert leg.state == "paused" and [(p.method, p.resumed_at) for p in leg.pauses] == [("mute", None)]

    time.sleep(0.3)
    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)
    assert resumed.status == "RESUMED"
    assert not monitor.muted_read and not monitor.muted_write
    mutes = fake_ami.received("MixMonitorMute")
    assert [(m["Channel"], m["State"], m["Direction"]) for m in mutes] == [(CHANNEL, "1", "both"), (CHANNEL, "0", "both")]

    ended = asterisk.call(route("hangup"), channel=CHANNEL, uniqueid=start.uniqueid, hangup_after=0)
    assert ended.status == "ENDED"
    leg = only_leg(store, start.uniqueid)
    assert (leg.state, leg.ended_by) == ("ended", "hangup")
    (pause,) = leg.pauses
    assert pause.resumed_at is not None
    assert leg.recorded(utcnow()) <= leg.duration(utcnow()) - 0.25
    assert start.stopped == [] and paused.mixmonitors == []


def test_pause_and_resume_without_the_manager_restart_appending(asterisk, store):
    start = asterisk.call(route("start"), channel=CHANNEL)
    (first,) = start.mixmonitors

    paused = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    assert paused.status == "PAUSED" and paused.stopped == [first]
    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert resumed.status == "RESUMED"
    (second,) = resumed.mixmonitors
    assert second.file == first.file
    assert second.options.startswith("a") and "b" in second.options
    leg = only_leg(store, start.uniqueid)
    assert (leg.state, leg.mixmonitor_id) == ("recording", second.id)
    assert [p.method for p in leg.pauses] == ["restart"]

    stopped = asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)
    assert stopped.status == "STOPPED" and stopped.stopped == [second]


def test_pause_twice_and_resume_of_a_recording_leg_change_nothing(asterisk, store):
    start = asterisk.call(route("start"), channel=CHANNEL)
    first = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    second = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (first.status, second.status) == ("PAUSED", "PAUSED")
    assert len(first.stopped) == 1 and second.stopped == []
    assert len(only_leg(store, start.uniqueid).pauses) == 1

    other = asterisk.call(route("start"), channel="PJSIP/411-00000002")
    assert asterisk.call(route("resume"), channel="PJSIP/411-00000002", uniqueid=other.uniqueid).mixmonitors == []


def test_stop_twice(asterisk, store):
    start = asterisk.call(route("start"), channel=CHANNEL)

    first = asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)
    second = asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (first.status, second.status) == ("STOPPED", "NOT_RECORDING")
    assert first.stopped == start.mixmonitors and second.stopped == []
    leg = only_leg(store, start.uniqueid)
    assert (leg.state, leg.ended_by) == ("stopped", "dialplan")


def test_a_new_start_after_a_stop_is_leg_two(asterisk, store):
    start = asterisk.call(route("start"), channel=CHANNEL)
    asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)

    again = asterisk.call(route("start"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert again.status == "STARTED"
    assert [(v.leg, v.state) for v in store.find_legs(unique_id=start.uniqueid)] == [(1, "stopped"), (2, "recording")]
    # Each leg has a file of its own: the second start does not overwrite the first's audio.
    first, second = start.variables["RECORDING_FILE"], again.variables["RECORDING_FILE"]
    assert first.endswith(f"-1-{start.variables['RECORDING_ID'][:8]}.wav")
    assert second.endswith(f"-2-{again.variables['RECORDING_ID'][:8]}.wav")


@pytest.mark.parametrize("name", ["stop", "pause", "resume"])
def test_a_channel_we_do_not_record(asterisk, store, name):
    call = asterisk.call(route(name), channel=CHANNEL)

    assert (call.status, call.error) == ("NOT_RECORDING", "")
    assert call.stopped == [] and call.mixmonitors == []
    assert store.find_legs() == []


def test_hangup_during_a_pause_closes_the_pause_and_the_leg(asterisk, store):
    start = asterisk.call(route("start"), channel=CHANNEL)
    asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)

    ended = asterisk.call(route("hangup"), channel=CHANNEL, uniqueid=start.uniqueid, hangup_after=0)

    assert ended.status == "ENDED"
    leg = only_leg(store, start.uniqueid)
    (pause,) = leg.pauses
    assert leg.state == "ended" and pause.resumed_at == leg.end


def test_only_the_owner_or_a_manager_may_pause(asterisk, store):
    store.add_user("fred")
    store.add_user("mallory")
    start = asterisk.call(route("start", "&agentLoginName=fred"), channel=CHANNEL)

    refused = asterisk.call(route("pause", "&agentLoginName=mallory"), channel=CHANNEL, uniqueid=start.uniqueid)
    allowed = asterisk.call(route("pause", "&agentLoginName=fred"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert refused.status == "DENIED" and "only its owner" in refused.error and refused.stopped == []
    assert allowed.status == "PAUSED"


def test_manager_down_during_a_pause_falls_back_to_stop_and_restart(ami_service, fake_ami, store):
    asterisk = FakeAsterisk(ami_service.port)
    start = asterisk.call(route("start"), channel=CHANNEL)
    mirror(fake_ami, start)
    fake_ami.stop()

    paused = asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert (paused.status, resumed.status) == ("PAUSED", "RESUMED")
    assert paused.stopped == start.mixmonitors and resumed.mixmonitors[0].options.startswith("a")
    assert [p.method for p in only_leg(store, start.uniqueid).pauses] == ["restart"]


def test_a_muted_leg_resumes_by_restarting_when_the_manager_is_gone(ami_service, fake_ami, store):
    asterisk = FakeAsterisk(ami_service.port)
    start = asterisk.call(route("start"), channel=CHANNEL)
    mirror(fake_ami, start)
    assert asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid).status == "PAUSED"
    fake_ami.stop()

    resumed = asterisk.call(route("resume"), channel=CHANNEL, uniqueid=start.uniqueid)

    # The muted MixMonitor is stopped by its id and a new one appends to the same file.
    assert resumed.status == "RESUMED"
    assert resumed.stopped == start.mixmonitors
    assert resumed.mixmonitors[0].file == start.mixmonitors[0].file
    leg = only_leg(store, start.uniqueid)
    assert (leg.state, leg.mixmonitor_id) == ("recording", resumed.mixmonitors[0].id)


def test_http_pause_with_the_manager_down_is_an_error_and_changes_nothing(http, ami_service, fake_ami, store):
    channel = fake_ami.add_channel(CHANNEL)
    assert http.post("/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="410", apiKey=API_KEY).status == 200
    fake_ami.stop()

    answer = http.post("/servicemanager/rest/CallManagementAPI/pause", extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 503
    leg = only_leg(store, channel.uniqueid)
    assert (leg.state, leg.pauses) == ("recording", ())
    assert ami_service.app.service.active(channel.uniqueid).state == "recording"


def test_http_pause_and_resume_mute_over_the_manager(http, fake_ami, store):
    channel = fake_ami.add_channel(CHANNEL)
    http.post("/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="410", apiKey=API_KEY)
    (monitor,) = channel.running

    paused = http.post("/servicemanager/rest/CallManagementAPI/pause", extenOrUniqueId="410", apiKey=API_KEY)
    assert paused.json["status"] == "PAUSED" and monitor.muted_read
    resumed = http.post("/servicemanager/rest/CallManagementAPI/resume", extenOrUniqueId="410", apiKey=API_KEY)
    assert resumed.json["status"] == "RESUMED" and not monitor.muted_read
    assert [p.method for p in only_leg(store, channel.uniqueid).pauses] == ["mute"]


def test_a_hangup_event_from_the_manager_ends_the_leg(http, fake_ami, store):
    channel = fake_ami.add_channel(CHANNEL)
    http.post("/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="410", apiKey=API_KEY)

    fake_ami.hangup(CHANNEL)

    leg = wait_until(lambda: (leg := only_leg(store, channel.uniqueid)).state == "ended" and leg, 5,
                     "the leg ended by the Hangup event")
    assert leg.ended_by == "hangup"


def test_the_sweeper_closes_legs_whose_channel_is_gone(ami_service, fake_ami, store):
    hour_ago = utcnow() - timedelta(hours=1)
    alive = fake_ami.add_channel(CHANNEL)
    store.commit([replace(new_leg(alive.uniqueid), started_at=hour_ago),
                  replace(new_leg("1795825000.1"), started_at=hour_ago)])

    ami_service.run(ami_service.app.sweeper.sweep())

    # (A sweep also runs when the manager connects; sweeps never overlap or count twice.)
    assert ami_service.app.sweeper.closed == 1
    lost = only_leg(store, "1795825000.1")
    assert (lost.state, lost.ended_by, lost.end) == ("lost", "sweeper", hour_ago)
    assert only_leg(store, alive.uniqueid).state == "recording"
    # Seen alive now, so if it vanishes later it is closed at this time, not at its start.
    fake_ami.remove_channel(CHANNEL)
    assert ami_service.run(ami_service.app.sweeper.sweep()) == 1
    assert ami_service.app.sweeper.closed == 2
    assert only_leg(store, alive.uniqueid).end > hour_ago + timedelta(minutes=59)


def test_the_sweeper_leaves_the_legs_of_another_asterisk_alone(ami_service, fake_ami, store):
    """Two Asterisks sharing one database have a systemname each (their unique ids would
    collide otherwise): the channels of the other one's legs are not in this one's list."""
    from tests.recording.test_sweeper import settled

    fake_ami.system_name = "pbx1"
    settled(ami_service)  # the sweeps of the start and of the connection are over
    hour_ago = utcnow() - timedelta(hours=1)
    store.commit([replace(new_leg(uid), started_at=hour_ago)
                  for uid in ("pbx1-1795825000.4", "pbx2-1795825000.5", "1795825000.6")])

    closed = ami_service.run(ami_service.app.sweeper.sweep())

    assert closed == 1
    assert [(v.unique_id, v.state) for v in store.find_legs()] == [
        ("1795825000.6", "recording"), ("pbx1-1795825000.4", "lost"), ("pbx2-1795825000.5", "recording")]


def test_without_the_manager_old_legs_are_closed_after_the_maximum_age(store, settings):
    from tests.service_runner import RunningService

    store.commit([replace(new_leg("1795825000.2"), started_at=utcnow() - timedelta(hours=2)),
                  replace(new_leg("1795825000.3"), started_at=utcnow())])
    with RunningService(settings.with_(max_leg_age=3600.0)) as running:
        # The sweeper runs once as the service starts: that sweep closes the old leg.
        running.run(running.app.sweeper.sweep())
        closed = running.app.sweeper.closed

    assert closed == 1
    assert [(v.unique_id, v.state) for v in store.find_legs()] == [("1795825000.2", "lost"), ("1795825000.3", "recording")]


def test_find_shows_durations_and_pauses(asterisk, store, database_url, capsys):
    import json

    from recording.cli import main

    start = asterisk.call(route("start", "&tag=D"), channel=CHANNEL)
    asterisk.call(route("pause"), channel=CHANNEL, uniqueid=start.uniqueid)
    asterisk.call(route("stop"), channel=CHANNEL, uniqueid=start.uniqueid)

    assert main(["--database-url", database_url, "recordings", "find", "--tag", "D", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["state"] == "stopped" and row["end"] is not None
    assert row["recorded"] <= row["duration"]
    assert [p["method"] for p in row["pauses"]] == ["restart"]
