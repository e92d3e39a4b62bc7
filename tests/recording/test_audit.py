"""The audit table: every play, download, hold, release and purge, whichever door it came
through (the HTTP API, the pages, the command line, the service's own retention), with who,
when, from where; listed by `recording-agi audit`; and still there after the audio is purged."""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timedelta, timezone

from recording.storage.audit import Audit, Event
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.recording.test_retention import old_call, second
from tests.service_runner import RunningService
from tests.waiting import wait_until

RETRIEVAL = "/njadmin/rest/RecordingAPI"


def test_every_door_writes_its_acts_and_the_audit_outlives_the_purge(pbx, store, people, files_service, cli,
                                                                     files_settings, tmp_path):
    http = HTTPClient(files_service.app.http_port)
    _, kept = old_call(pbx, store, tag="CRM-A")
    _, purged_by_hand = old_call(pbx, store, tag="CRM-B")

    played = http.request("GET", f"{RETRIEVAL}/retrieveRecording",
                          query={"recordingId": kept, "apiKey": API_KEY, "loginName": "boss"},
                          headers={"Range": "bytes=0-99"})
    held = cli("recordings", "hold", kept, "--reason", "case 9", "--by", "legal")
    again = cli("recordings", "hold", kept, "--by", "legal")
    purge = cli("recordings", "purge", "--older-than", "1d")
    released = http.post(f"{RETRIEVAL}/holdRecording", recordingId=kept, apiKey=API_KEY, loginName="boss",
                         release="true", reason="case closed")
    with RunningService(second(files_settings, tmp_path, retention="1d")) as running:
        wait_until(lambda: running.app.aftercall.purges == 1, 10, "the daily purge")

    assert played.status == 206 and held[0] == again[0] == purge[0] == 0 and released.status == 200
    assert store.leg(purged_by_hand).state == store.leg(kept).state == "purged"
    rows = [(e.action, e.leg_id, e.login, e.door, e.address, e.detail) for e in Audit(store).events()]
    assert rows == [
        ("play", kept, "boss", "http", "127.0.0.1", None),
        ("hold", kept, "legal", "cli", None, "case 9"),
        ("hold", kept, "legal", "cli", None, "already held"),
        ("purge", purged_by_hand, getpass.getuser(), "cli", None, "older than 1d (recordings purge)"),
        ("release", kept, "boss", "http", "127.0.0.1", "case closed"),
        ("purge", kept, "retention", "service", None, "older than 1d (RECORDING_RETENTION)"),
    ]
    # The audit has no foreign key: the purged legs' rows are all there, and outlive the legs too.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM recording_pauses")
        conn.exec_driver_sql("DELETE FROM recording_legs")
    assert len(Audit(store).events()) == 6


def test_the_audit_command_lists_by_leg_user_and_time(store, cli):
    audit = Audit(store)
    now = datetime.now(timezone.utc)
    for n, (action, leg, login) in enumerate([("play", "a" * 32, "fred"), ("hold", "a" * 32, "boss"),
                                              ("download", "b" * 32, "fred")]):
        audit.record(Event(action, leg, f"1795825765.{n}", login, "pages", "10.0.0.7", None,
                           at=now - timedelta(days=3 - n)))

    code, out, _ = cli("audit")
    by_leg = cli("audit", "--leg", "a" * 32)[1].splitlines()
    by_user = cli("audit", "--user", "fred", "--json")[1].splitlines()
    since = cli("audit", "--since", (now - timedelta(days=1, hours=12)).isoformat())[1].splitlines()
    none = cli("audit", "--user", "nobody")
    bad = cli("audit", "--since", "last week")

    assert code == 0 and len(out.splitlines()) == 3
    assert [line.split("\t")[1] for line in by_leg] == ["play", "hold"]
    assert [json.loads(line)["action"] for line in by_user] == ["play", "download"]
    assert json.loads(by_user[0])["address"] == "10.0.0.7" and json.loads(by_user[0])["door"] == "pages"
    assert [line.split("\t")[1] for line in since] == ["download"]
    assert none[0] == 0 and none[1] == "" and "no audit events match" in none[2]
    assert bad[0] == 2 and "is not a date" in bad[2]
