"""The service under the conditions of a working day, on a real Asterisk: a hundred calls at
once, the database going away during calls and coming back, and `serve --workers 2`. On SQLite
and on PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.real_asterisk import wav
from tests.real_asterisk.calls import complete, post, report, wait_report
from tests.real_asterisk.pbx import Asterisk, unique_name
from tests.real_asterisk.service import Serve, prepare_database
from tests.recording.conftest import API_KEY
from tests.throwaway_postgres import ThrowawayPostgres
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def many_calls(pbx: Asterisk, service: Serve, count: int, seconds: float, tag: str) -> tuple[str, list[str]]:
    """``count`` calls placed at once, each recorded by ``service`` (tag ``<tag>-<n>``) and
    bridged to a phone that plays a tone for ``seconds``. Returns the callers' context and the
    recorded channels."""
    context, phones = unique_name("many"), unique_name("many-phone")
    pbx.add_dialplan(phones, "_X.", ["Answer()", "Playtones(600)", f"Wait({seconds})", "Hangup()"])
    pbx.add_dialplan(context, "_X.", [
        "Answer()",
        f"AGI({service.agi_url}/recording/start?tag={tag}-${{EXTEN}}&apiKey={API_KEY})",
        report(f"{context}:${{EXTEN}}"),
        f"Dial(Local/${{EXTEN}}@{phones}/n)",
    ])
    mark = pbx.ami.mark()
    numbers = [str(1000 + n) for n in range(count)]
    for number in numbers:
        pbx.ami.action("Originate", Channel=f"Local/{number}@{context}", Application="Milliwatt", Async="true")
    channels = [pbx.ami.wait_event(lambda e, n=number: e.get("Event") == "Newchannel"
                                   and e.get("Channel", "").startswith(f"Local/{n}@{context}-")
                                   and e["Channel"].endswith(";2"), 30, mark)["Channel"] for number in numbers]
    return context, channels


def wait_legs(service: Serve, count: int, timeout: float, tag_prefix: str = "", state: str = "ended") -> list:
    """The legs whose tag starts with ``tag_prefix``, once there are ``count`` of them, all in
    ``state``."""
    def found():
        legs = [leg for leg in service.legs() if (leg.tag or "").startswith(tag_prefix)]
        return legs if len(legs) == count and all(leg.state == state for leg in legs) else None

    return wait_until(found, timeout, f"{count} legs {tag_prefix}* {state}")


def test_a_hundred_calls_at_once(pbx, with_ami):
    context, channels = many_calls(pbx, with_ami, 100, 3, "hundred")

    seen = [wait_report(pbx, f"{context}:{1000 + n}", 60) for n in range(100)]
    for channel in channels:
        pbx.wait_hangup(channel, 60)
    legs = {leg.unique_id: leg for leg in wait_legs(with_ami, 100, 60, "hundred-")}
    files = [complete(Path(s.file), 60) for s in seen]

    assert [s.status for s in seen] == ["STARTED"] * 100, {s.status + s.error for s in seen}
    assert len({s.id for s in seen}) == 100 and set(legs) == {s.uid for s in seen}
    assert {legs[s.uid].tag for s in seen} == {f"hundred-{1000 + n}" for n in range(100)}
    assert all(2.0 <= f.seconds <= 3.6 for f in files), sorted(f.seconds for f in files)


@contextmanager
def database_away(url: str, cluster: ThrowawayPostgres | None):
    """The database unreachable (PostgreSQL stopped) or unwritable (SQLite locked by another
    connection's exclusive transaction) for the duration."""
    if cluster is not None:
        cluster.stop()
        try:
            yield
        finally:
            cluster.start()
        return
    lock = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=1, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("COMMIT")
        lock.close()


@pytest.fixture
def outage_database(database, tmp_path):
    """A database of the module's backend that a test may take away: a throwaway PostgreSQL
    cluster, or a SQLite file of its own."""
    if database.startswith("sqlite"):
        url = f"sqlite:///{tmp_path}/outage.sqlite3"
        prepare_database(url)
        yield url, None
        return
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        prepare_database(cluster.url)
        yield cluster.url, cluster
    finally:
        cluster.destroy()


def test_the_database_away_during_calls_loses_no_recording(pbx, outage_database, tmp_path):
    url, cluster = outage_database
    service = Serve(url, tmp_path / "serve-outage", pbx, extra_env={"RECORDING_DATABASE_BUDGET": "0.25"})
    try:
        before_context, before = many_calls(pbx, service, 3, 4, "before")
        before_seen = [wait_report(pbx, f"{before_context}:{1000 + n}") for n in range(3)]
        with database_away(url, cluster):
            during_context, during = many_calls(pbx, service, 5, 1.5, "during")
            during_seen = [wait_report(pbx, f"{during_context}:{1000 + n}", 30) for n in range(5)]
            for channel in during + before:
                pbx.wait_hangup(channel, 30)
            journaled = wait_until(lambda: re.search(r"journal", service.text()), 5, "the service says it journals")
        legs = wait_legs(service, 8, 60)
    finally:
        service.stop()

    assert [s.status for s in before_seen + during_seen] == ["STARTED"] * 8
    assert [s.deferred for s in before_seen] == ["0"] * 3 and [s.deferred for s in during_seen] == ["1"] * 5
    assert journaled
    assert {leg.tag for leg in legs} == {f"before-{1000 + n}" for n in range(3)} | {f"during-{1000 + n}" for n in range(5)}
    assert all(leg.ended_by == "hangup" for leg in legs)
    assert all(complete(Path(s.file)).seconds >= 1.0 for s in during_seen)


def test_serve_with_two_workers(pbx, database, tmp_path):
    service = Serve(database, tmp_path / "serve-workers", pbx, workers=2)
    try:
        context, channels = many_calls(pbx, service, 20, 4, "workers")
        seen = [wait_report(pbx, f"{context}:{1000 + n}", 30) for n in range(20)]
        served = {int(m.group(1)) for m in re.finditer(r" worker (\d+) recording\.fastagi: recording/start ",
                                                         service.text())}
        # Each worker reaches the legs the other started: stopping all of them over HTTP.
        stopped = [post(service, "stop", s.uid) for s in seen]
        running = [pbx.mixmonitors(channel) for channel in channels]
        for channel in channels:
            pbx.hangup(channel)
        answered_by = {int(m.group(1)) for m in re.finditer(r" worker (\d+) recording\.http: HTTP POST ",
                                                            service.text())}
    finally:
        code = service.stop()

    assert [s.status for s in seen] == ["STARTED"] * 20
    assert served == {1, 2} and answered_by == {1, 2}, f"served by {served}, answered by {answered_by}:\n" + "".join(
        line for line in service.log if re.search(r"listening|Traceback|WARNING|ERROR|CRITICAL|recording\.workers", line))[-6000:]
    assert [a.status for a in stopped] == [200] * 20 and {a.json["status"] for a in stopped} == {"STOPPED"}
    assert not any(running)
    legs = [service.legs(unique_id=s.uid) for s in seen]
    assert all(len(found) == 1 and found[0].state == "stopped" for found in legs)
    assert all(wav.header(Path(s.file)).complete for s in seen)
    assert code == 0
