"""Two servers sharing one database, as behind SO_REUSEPORT or a balancer: the database, not
the memory of either, decides that a call has one active leg."""

from __future__ import annotations

from tests.recording.conftest import API_KEY
from tests.fake_asterisk import FakeAsterisk
from tests.service_runner import RunningService


def test_starts_for_one_call_at_two_servers_give_one_leg(store, settings, tmp_path):
    # Each process has a journal of its own (a second holder of one directory is refused).
    apart = [settings.with_(journal_dir=str(tmp_path / f"journal-{n}")) for n in (1, 2)]
    with RunningService(apart[0]) as one, RunningService(apart[1]) as two:
        first = FakeAsterisk(one.port).call(f"recording/start?apiKey={API_KEY}&tag=A")
        second = FakeAsterisk(two.port).call(f"recording/start?apiKey={API_KEY}&tag=B", uniqueid=first.uniqueid)

    assert (first.status, second.status) == ("STARTED", "ALREADY_RECORDING")
    assert second.variables["RECORDING_ID"] == first.variables["RECORDING_ID"]
    # The second server had started a MixMonitor before the database said no: it stopped
    # exactly that one, by its id, and left the first server's recording alone.
    assert [m.id for m in second.stopped] == [m.id for m in second.mixmonitors]
    assert first.stopped == []
    (leg,) = store.find_legs(unique_id=first.uniqueid)
    assert (leg.tag, leg.external_reference) == ("A", "B")
