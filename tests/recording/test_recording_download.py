"""Playing a recording from the CRM: GET retrieveRecording streams the leg's file (written by
the fake Asterisk's MixMonitor on the same disk) with the access rule of retrieval, Range for
seeking, and a sentence for each way it cannot; and the legal hold over HTTP."""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.fake_asterisk import FakeAsterisk
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.service_runner import RunningService
from tests.waiting import wait_until

RETRIEVAL = "/njadmin/rest/RecordingAPI"
PLAY = f"{RETRIEVAL}/retrieveRecording"
HOLD = f"{RETRIEVAL}/holdRecording"
CHANNEL = "PJSIP/410-0000001a"


def recorded_call(pbx: FakeAsterisk, store, *, seconds: float = 1.0, agent: str | None = "fred", end: bool = True,
                  tag: str = "CRM-1"):
    """A call recorded through FastAGI: MixMonitor writes the file, the call talks for
    ``seconds``, then (``end``) the channel hangs up, the file is closed and the dialplan's h
    extension ends the leg. Returns the fake's call and the leg as stored."""
    agent_arg = f"&agentLoginName={agent}" if agent else ""
    call = pbx.call(f"recording/start?apiKey={API_KEY}&tag={tag}{agent_arg}", channel=CHANNEL)
    assert call.status == "STARTED", call.error
    pbx.talk(call.uniqueid, seconds)
    if end:
        pbx.hang_up(call.uniqueid)
        ended = pbx.call(f"recording/hangup?apiKey={API_KEY}", channel=CHANNEL, uniqueid=call.uniqueid)
        assert ended.status == "ENDED", ended.error
    return call, store.leg(call.variables["RECORDING_ID"])


def begun_elsewhere(files_service, store, leg_id, reason="older than 1d (recordings purge)"):
    """A purge of ``leg_id`` begun (by a process that then died), once the ``pbx`` service has
    done its own start-up recovery: so that the purge stays begun until the test finishes it."""
    wait_until(lambda: files_service.app.aftercall.recovered, 10, "the pbx service's start-up recovery")
    assert store.begin_purge(leg_id, datetime.now(timezone.utc), reason)


@pytest.fixture
def http(files_service) -> HTTPClient:
    return HTTPClient(files_service.app.http_port)


def play(http, leg_id, login="fred", **headers):
    return http.request("GET", PLAY, query={"recordingId": leg_id, "apiKey": API_KEY, "loginName": login},
                        headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_the_owner_plays_the_file_the_crm_found_by_its_tag(pbx, store, people, http):
    call, leg = recorded_call(pbx, store, seconds=2.0)
    path = Path(call.variables["RECORDING_FILE"])

    (entry,) = http.get(f"{RETRIEVAL}/retrieveMetaData", tag="CRM-1", apiKey=API_KEY, loginName="fred").json
    answer = http.get(entry["RecordingUrl"].split("?")[0], recordingId=leg.id, apiKey=API_KEY, loginName="fred")

    assert entry["RecordingUrl"] == f"{PLAY}?recordingId={leg.id}"
    assert answer.status == 200, answer.body
    assert answer.content == path.read_bytes() and len(answer.content) == 44 + 32000
    assert answer.content[:4] == b"RIFF" and answer.content[8:12] == b"WAVE"
    assert answer.headers["Content-Type"] == "audio/wav"
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["Content-Disposition"].startswith(f'inline; filename="{path.name}"')
    assert "no-store" in answer.headers["Cache-Control"]


def test_a_range_answers_206_so_a_player_can_seek(pbx, store, people, http, caplog):
    caplog.set_level(logging.INFO, logger="recording.http")
    call, leg = recorded_call(pbx, store, seconds=1.0)
    content = Path(call.variables["RECORDING_FILE"]).read_bytes()

    middle = play(http, leg.id, Range="bytes=1000-1999")
    tail = play(http, leg.id, Range="bytes=-100")
    beyond = play(http, leg.id, Range=f"bytes={len(content) + 10}-")
    unreadable = play(http, leg.id, Range="bytes=0-1,5-6")

    assert (middle.status, middle.content) == (206, content[1000:2000])
    assert middle.headers["Content-Range"] == f"bytes 1000-1999/{len(content)}"
    assert (tail.status, tail.content) == (206, content[-100:])
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(content)}"
    assert f"past the end of the file ({len(content)} bytes)" in beyond.body
    assert unreadable.status == 416 and "cannot be served: one range" in unreadable.body
    # The log line has the status the client got (settled when the file is sent).
    statuses = [r.getMessage().split("status=")[1].split()[0] for r in caplog.records
                if r.name == "recording.http" and PLAY in r.getMessage()]
    assert statuses == ["206", "206", "416", "416"]


def test_an_hour_long_file_is_sent_from_disk_without_being_read_into_memory(pbx, store, people, files_service):
    import tracemalloc
    import urllib.parse
    from http.client import HTTPConnection

    call, leg = recorded_call(pbx, store, seconds=0.1)
    path = Path(call.variables["RECORDING_FILE"])
    with open(path, "ab") as handle:  # an hour at 8 kHz, 16 bits: 57.6 MB
        for _ in range(60):
            handle.write(bytes(960_000))
    query = urllib.parse.urlencode({"recordingId": leg.id, "apiKey": API_KEY, "loginName": "boss"})

    tracemalloc.start()
    try:
        connection = HTTPConnection("127.0.0.1", files_service.app.http_port, timeout=10)
        connection.request("GET", f"{PLAY}?{query}")
        response = connection.getresponse()
        sha, size = hashlib.sha256(), 0
        while chunk := response.read(65536):
            sha.update(chunk)
            size += len(chunk)
        connection.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status == 200 and size == path.stat().st_size
    assert sha.digest() == hashlib.sha256(path.read_bytes()).digest()
    # Client and server share this process: together they never held more than a few chunks.
    assert peak < 8_000_000, f"{peak} bytes allocated at the peak for a {size}-byte file"


def test_who_may_play_follows_the_ownership_rule(pbx, store, people, http):
    _, leg = recorded_call(pbx, store)

    assert play(http, leg.id, login="boss").status == 200
    other = play(http, leg.id, login="ann")
    unknown = play(http, leg.id, login="ghost")
    wrong_key = http.get(PLAY, recordingId=leg.id, apiKey="wrong", loginName="fred")

    assert other.status == 403 and "ann may not play leg" in other.body and other.content.endswith(b"\n")
    assert unknown.status == 403 and "unknown user 'ghost'" in unknown.body
    assert wrong_key.status == 403 and "apiKey is not valid" in wrong_key.body


def test_a_leg_still_recording_is_a_conflict(pbx, store, people, http):
    _, leg = recorded_call(pbx, store, end=False)

    answer = play(http, leg.id)

    assert answer.status == 409 and f"leg {leg.id} is still recording" in answer.body


def test_each_missing_thing_is_a_404_saying_which_and_where(pbx, store, people, http):
    call, leg = recorded_call(pbx, store)
    path = Path(call.variables["RECORDING_FILE"])

    unknown = play(http, "0" * 32)
    path.unlink()
    gone = play(http, leg.id)

    assert unknown.status == 404 and "no recording leg has the id '0000" in unknown.body
    assert gone.status == 404 and "is gone" in gone.body and f"no file at {path}" in gone.body
    assert gone.headers["Content-Type"].startswith("text/plain")


def test_a_purged_leg_says_when_and_why(pbx, store, people, http, files_service):
    _, leg = recorded_call(pbx, store)
    begun_elsewhere(files_service, store, leg.id, "older than 1h (test)")
    begun = play(http, leg.id)
    assert store.finish_purge(leg.id, datetime.now(timezone.utc))

    answer = play(http, leg.id)
    (entry,) = http.get(f"{RETRIEVAL}/retrieveMetaData", tag="CRM-1", apiKey=API_KEY, loginName="fred").json

    assert begun.status == 404 and "is being purged (since " in begun.body
    assert answer.status == 404 and "was purged at" in answer.body and "older than 1h (test)" in answer.body
    assert (entry["State"], entry["RecordingUrl"], entry["PurgeReason"]) == ("purged", None, "older than 1h (test)")


@pytest.mark.parametrize("arguments,status,message", [
    ({"apiKey": API_KEY, "loginName": "fred"}, 400, "recordingId is required"),
    ({"recordingId": "x", "apiKey": API_KEY}, 400, "loginName is required"),
    ({"recordingId": "x\x01", "apiKey": API_KEY, "loginName": "fred"}, 400, "recordingId must be UTF-8 text"),
    ({"recordingId": "x" * 300, "apiKey": API_KEY, "loginName": "fred"}, 400, "longer than 255"),
    ({"recordingId": "x" * 40, "apiKey": API_KEY, "loginName": "fred"}, 404, "no recording leg has the id"),
    ({"recordingId": "x", "apiKey": API_KEY, "loginName": "f\x00"}, 400, "loginName must be UTF-8 text"),
    ({"recordingId": "x", "apiKey": API_KEY, "loginName": "f" * 129}, 400, "loginName is longer than 128"),
    ({"recordingId": "x", "apiKey": API_KEY, "loginName": "fred", "fmt": "mp3"}, 400, "unknown argument 'fmt'"),
], ids=["no-id", "no-login", "control-character", "too-long", "long-unknown", "nul-login", "long-login", "typo"])
def test_bad_arguments_get_their_status_and_a_sentence(people, http, arguments, status, message):
    answer = http.get(PLAY, **arguments)

    assert answer.status == status and message in answer.body


def test_only_get_and_only_post(people, http):
    post = http.post(PLAY, recordingId="x", apiKey=API_KEY, loginName="fred")
    get = http.get(HOLD, recordingId="x", apiKey=API_KEY, loginName="boss")

    assert (post.status, post.headers["Allow"]) == (405, "GET")
    assert (get.status, get.headers["Allow"]) == (405, "POST")


def test_the_sha256_of_a_complete_file_comes_with_it(pbx, store, people, http):
    call, leg = recorded_call(pbx, store)
    content = Path(call.variables["RECORDING_FILE"]).read_bytes()
    wait_until(lambda: store.leg(leg.id).file_sha256, 10, "the leg's file hashed")

    answer = play(http, leg.id, Range="bytes=0-99")
    (entry,) = http.get(f"{RETRIEVAL}/retrieveMetaDataByUniqueId", uniqueId=call.uniqueid, apiKey=API_KEY,
                        loginName="fred").json

    digest = hashlib.sha256(content)
    assert answer.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    assert (entry["FileSize"], entry["FileSha256"]) == (len(content), digest.hexdigest())


def test_a_recording_manager_holds_and_releases_over_http(pbx, store, people, http):
    _, leg = recorded_call(pbx, store)

    held = http.post(HOLD, recordingId=leg.id, apiKey=API_KEY, loginName="boss", reason="case 2026-17")
    again = http.request("POST", HOLD, form={"recordingId": leg.id, "apiKey": API_KEY, "loginName": "boss"})
    refused = http.post(HOLD, recordingId=leg.id, apiKey=API_KEY, loginName="fred", release="true")
    released = http.post(HOLD, recordingId=leg.id, apiKey=API_KEY, loginName="boss", release="true")
    bad = http.post(HOLD, recordingId=leg.id, apiKey=API_KEY, loginName="boss", release="yes")

    assert held.status == 200, held.body
    assert (held.json["status"], held.json["Held"], held.json["HeldBy"], held.json["HoldReason"]) == (
        "HELD", True, "boss", "case 2026-17")
    assert again.json["status"] == "ALREADY_HELD"
    assert refused.status == 403 and "only a Recording Manager may" in refused.body
    assert (released.json["status"], released.json["Held"]) == ("RELEASED", False)
    assert bad.status == 400 and "release must be true or false" in bad.body
    assert not store.leg(leg.id).held


def test_a_share_mounted_under_another_path(store, people, files_settings, tmp_path):
    # The Asterisk host writes /var/spool/asterisk/monitor/...; this host mounts it elsewhere.
    pbx_disk = tmp_path / "pbx"
    mount = pbx_disk / "var/spool/asterisk/monitor"
    settings = files_settings.with_(
        monitor_template="/var/spool/asterisk/monitor/{uniqueid}-{leg}.wav", monitor_mount=str(mount),
        http_listen="127.0.0.1:0",
    )
    with RunningService(settings) as running:
        pbx = FakeAsterisk(running.port, filesystem=pbx_disk)
        call, leg = recorded_call(pbx, store)

        answer = play(HTTPClient(running.app.http_port), leg.id)

    # A template without {id} gets the leg's id before the suffix (no two legs share a file).
    name = f"{call.uniqueid}-1-{leg.id[:8]}.wav"
    assert leg.file == f"/var/spool/asterisk/monitor/{name}"
    assert answer.status == 200 and answer.content == (mount / name).read_bytes()


def test_files_this_host_cannot_see_are_a_503_saying_why(store, people, files_settings, tmp_path):
    # Asterisk on another host, no share: its files are not on this disk.
    settings = files_settings.with_(http_listen="127.0.0.1:0")
    with RunningService(settings) as running:
        pbx = FakeAsterisk(running.port, filesystem=tmp_path / "elsewhere")
        _, leg = recorded_call(pbx, store)

        answer = play(HTTPClient(running.app.http_port), leg.id)

    assert answer.status == 503
    assert "cannot be read here" in answer.body and "does not exist on this host" in answer.body
    assert "RECORDING_MONITOR_MOUNT" in answer.body


def test_the_description_names_the_new_operations(http):
    paths = http.get("/openapi.json").json["paths"]

    play_op, hold_op = paths[PLAY]["get"], paths[HOLD]["post"]
    assert set(play_op["responses"]) >= {"200", "206", "400", "403", "404", "409", "416", "503"}
    assert "audio/wav" in play_op["responses"]["200"]["content"]
    assert "content" not in play_op["responses"]["304"]
    arguments, header = play_op["parameters"]
    assert set(arguments["schema"]["properties"]) >= {"recordingId", "loginName"}
    # loginName goes with the apiKey only: a user's token names its user.
    assert arguments["schema"]["required"] == ["recordingId"] and header["name"] == "Range"
    held = hold_op["parameters"][0]["schema"]["properties"]
    assert held["release"]["enum"] == ["true", "false"] and held["reason"]["maxLength"] == 255
    assert "requestBody" in hold_op and "requestBody" not in play_op
