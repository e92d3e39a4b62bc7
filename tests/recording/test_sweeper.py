"""The sweeper asks the database, not this process's memory, whether any leg records before it
lists Asterisk's channels, so an idle service does not list every channel of the PBX each
minute, and a leg another process started (or left behind when it died) is still swept."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from recording.domain import utcnow
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_lifecycle import only_leg
from tests.recording.test_store import leg as new_leg
from tests.service_runner import RunningService
from tests.waiting import wait_until

CHANNEL = "PJSIP/410-00000031"


def settled(running) -> None:
    """Waits for the sweeps the service runs by itself (one at the start, one when the manager
    connects), so that the test's own sweeps are the only ones that can list channels, and for
    the one listing the call follower makes when the manager connects (it reads the calls in
    progress once per connection, not each minute)."""
    wait_until(lambda: running.app.sweeper.sweeps >= 2, 5, "the sweeps of the start and of the connection")
    wait_until(lambda: running.app.follower.handled >= 1 and running.app.follower.pending == 0, 5,
               "the follower's listing at the connection")


def listings(fake_ami) -> int:
    """CoreShowChannels asked for beyond the follower's one at the connection."""
    return len(fake_ami.received("CoreShowChannels")) - 1


def test_with_no_leg_recording_in_the_database_no_channel_is_listed(ami_service, fake_ami, store):
    fake_ami.add_channel(CHANNEL)
    settled(ami_service)

    assert ami_service.run(ami_service.app.sweeper.sweep()) == 0

    # (the sweep run when the manager connected listed none either)
    assert listings(fake_ami) == 0
    # A leg in the database, written by no one this process knows of: now they are listed.
    store.commit([replace(new_leg("1795825100.1"), started_at=utcnow() - timedelta(hours=1))])
    assert ami_service.run(ami_service.app.sweeper.sweep()) == 1
    assert listings(fake_ami) == 1
    assert only_leg(store, "1795825100.1").state == "lost"
    # Closed: nothing records any more, and the next sweep lists nothing.
    assert ami_service.run(ami_service.app.sweeper.sweep()) == 0
    assert listings(fake_ami) == 1


def test_a_leg_another_process_records_is_checked_against_the_channels(ami_service, fake_ami, store, settings,
                                                                        tmp_path):
    # The other process: no manager connection, a journal of its own, the same database.
    other = settings.with_(journal_dir=str(tmp_path / "journal-other"))
    settled(ami_service)
    with RunningService(other) as elsewhere:
        channel = fake_ami.add_channel(CHANNEL)
        call = FakeAsterisk(elsewhere.port).call(f"recording/start?apiKey={API_KEY}&tag=W", channel=CHANNEL,
                                                 uniqueid=channel.uniqueid)
        assert call.status == "STARTED"
        assert ami_service.app.service.active(channel.uniqueid) is None  # not in this process's memory
        started = only_leg(store, channel.uniqueid).start

        assert ami_service.run(ami_service.app.sweeper.sweep()) == 0

        assert listings(fake_ami) == 1
        leg = only_leg(store, channel.uniqueid)
        # Seen alive by this process's sweep, and left recording.
        assert leg.state == "recording"
        assert store.last_seen([leg.id])[leg.id] > started

        stopped = FakeAsterisk(elsewhere.port).call(f"recording/stop?apiKey={API_KEY}", channel=CHANNEL,
                                                    uniqueid=channel.uniqueid)
        assert stopped.status == "STOPPED"
        assert ami_service.run(ami_service.app.sweeper.sweep()) == 0
        assert listings(fake_ami) == 1


def test_without_the_manager_only_legs_past_the_maximum_age_are_read(store, settings):
    old = replace(new_leg("1795825100.2"), started_at=utcnow() - timedelta(hours=2))
    young = replace(new_leg("1795825100.3"), started_at=utcnow())
    store.commit([old, young])

    assert [key[1] for key in store.active_leg_keys(utcnow() - timedelta(hours=1))] == ["1795825100.2"]
    assert sorted(key[1] for key in store.active_leg_keys()) == ["1795825100.2", "1795825100.3"]
    with RunningService(settings.with_(max_leg_age=3600.0)) as running:
        running.run(running.app.sweeper.sweep())
        assert running.run(running.app.sweeper.sweep()) == 0  # the first closed it
    assert (only_leg(store, "1795825100.2").state, only_leg(store, "1795825100.3").state) == ("lost", "recording")
