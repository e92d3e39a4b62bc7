"""The HTTP recording API end to end: a real HTTP client, the real server, the fake AMI as
Asterisk's manager, and the database of each backend."""

from __future__ import annotations

import pytest

from tests.fake_ami import FakeMixMonitor
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY

START = "/servicemanager/rest/CallManagementAPI/start"
STOP = "/servicemanager/rest/CallManagementAPI/stop"
BY_TAG = "/njadmin/rest/RecordingAPI/retrieveMetaData"
BY_ID = "/njadmin/rest/RecordingAPI/retrieveMetaDataByUniqueId"


def test_start_by_extension_records_the_live_channel(http, fake_ami, store):
    channel = fake_ami.add_channel("PJSIP/410-0000001a", bridge_id="b-1")

    answer = http.post(START, extenOrUniqueId="410", tag="CRM-1", apiKey=API_KEY)

    assert answer.status == 200, answer.body
    body = answer.json
    assert (body["status"], body["uniqueId"], body["channel"]) == ("STARTED", channel.uniqueid, channel.name)
    (action,) = fake_ami.received("MixMonitor")
    assert action["Channel"] == channel.name and action["File"] == body["file"]
    assert action["Options"].endswith(f"i(RECORDING_MIXMON_{body['recordingId']})")
    (monitor,) = channel.running
    (leg,) = store.find_legs(tag="CRM-1")
    assert (leg.id, leg.unique_id, leg.source) == (body["recordingId"], channel.uniqueid, "http")
    assert channel.variables[f"RECORDING_MIXMON_{leg.id}"] == monitor.id


def test_start_by_unique_id_from_a_form_body(http, fake_ami, store):
    channel = fake_ami.add_channel("SIP/trunk-00000002", uniqueid="sys-1795825873.99")

    answer = http.request("POST", START, form={"extenOrUniqueId": channel.uniqueid, "tag": "T", "apiKey": API_KEY})

    assert answer.status == 200 and answer.json["uniqueId"] == "sys-1795825873.99"
    assert [leg.channel for leg in store.find_legs(tag="T")] == [channel.name]


def test_start_twice_answers_already_recording(http, fake_ami):
    fake_ami.add_channel("PJSIP/410-0000001a")
    first = http.post(START, extenOrUniqueId="410", apiKey=API_KEY).json
    second = http.post(START, extenOrUniqueId="410", apiKey=API_KEY).json

    assert (first["status"], second["status"]) == ("STARTED", "ALREADY_RECORDING")
    assert first["recordingId"] == second["recordingId"]
    assert len(fake_ami.received("MixMonitor")) == 1


def test_only_post(http):
    answer = http.get(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert "use POST" in answer.body


@pytest.mark.parametrize(
    "query,status,message",
    [
        ({"extenOrUniqueId": "410"}, 403, "no apiKey was given"),
        ({"extenOrUniqueId": "410", "apiKey": "wrong"}, 403, "apiKey is not valid"),
        ({"extenOrUniqueId": "410", "apiKey": API_KEY, "agentLoginName": "ghost"}, 400, "unknown agent 'ghost'"),
        ({"extenOrUniqueId": "999", "apiKey": API_KEY}, 404, "no live channel"),
        ({"apiKey": API_KEY}, 400, "extenOrUniqueId is required"),
        ({"extenOrUniqueId": "410", "apiKey": API_KEY, "tga": "x"}, 400, "unknown argument 'tga'"),
    ],
    ids=["no-key", "wrong-key", "unknown-agent", "no-channel", "no-target", "typo"],
)
def test_errors_have_their_status_and_a_sentence(http, fake_ami, store, query, status, message):
    fake_ami.add_channel("PJSIP/410-0000001a")

    answer = http.post(START, **query)

    assert answer.status == status
    assert message in answer.body and answer.headers["Content-Type"].startswith("text/plain")
    assert fake_ami.received("MixMonitor") == [] and store.find_legs() == []


def test_the_old_authentication_fields_are_accepted_and_ignored(http, fake_ami):
    fake_ami.add_channel("PJSIP/410-0000001a")

    answer = http.post(START, extenOrUniqueId="410", timeStamp="1264853382", hash="4567", apiKey=API_KEY)

    assert answer.status == 200


def test_an_extension_with_two_channels(http, fake_ami):
    fake_ami.add_channel("PJSIP/410-0000001a")
    fake_ami.add_channel("PJSIP/410-0000001b")

    ambiguous = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)
    assert ambiguous.status == 409
    assert "PJSIP/410-0000001a" in ambiguous.body and "PJSIP/410-0000001b" in ambiguous.body

    fake_ami.channel("PJSIP/410-0000001b").bridge_id = "bridge-7"
    chosen = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)
    assert chosen.status == 200 and chosen.json["channel"] == "PJSIP/410-0000001b"


def test_a_local_channel_pair_counts_by_its_extension(http, fake_ami):
    fake_ami.add_channel("Local/410@agents-0000000a;1")
    fake_ami.add_channel("Local/410@agents-0000000a;2", bridge_id="bridge-9")

    answer = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.json["channel"] == "Local/410@agents-0000000a;2"


def test_stop_uses_the_legs_own_mixmonitor_id_and_closes_the_leg(http, fake_ami, store):
    channel = fake_ami.add_channel("PJSIP/410-0000001a")
    store.add_user("fred")
    started = http.post(START, extenOrUniqueId="410", agentLoginName="fred", apiKey=API_KEY).json
    (ours,) = channel.running
    # Someone else's MixMonitor, started later on the same channel, must survive our stop
    # (StopMixMonitor without an id would stop that one, the most recent).
    theirs = FakeMixMonitor("0x7fcd00000001", "/tmp/supervisor.wav", "")
    channel.mixmonitors.append(theirs)

    stopped = http.post(STOP, extenOrUniqueId="410", agentLoginName="fred", apiKey=API_KEY)

    assert stopped.status == 200 and stopped.json["status"] == "STOPPED"
    (action,) = fake_ami.received("StopMixMonitor")
    assert action["MixMonitorID"] == ours.id
    assert channel.running == [theirs]
    (leg,) = store.find_legs(unique_id=channel.uniqueid)
    assert (leg.id, leg.state, leg.ended_by) == (started["recordingId"], "stopped", "fred")
    assert leg.end is not None

    again = http.post(STOP, extenOrUniqueId="410", apiKey=API_KEY)
    assert again.status == 409 and "not recording" in again.body


def test_stop_by_a_user_who_may_not(http, fake_ami, store):
    fake_ami.add_channel("PJSIP/410-0000001a")
    store.add_user("fred")
    store.add_user("mallory")
    store.add_user("boss", ["Recording Manager"])
    http.post(START, extenOrUniqueId="410", agentLoginName="fred", apiKey=API_KEY)

    refused = http.post(STOP, extenOrUniqueId="410", agentLoginName="mallory", apiKey=API_KEY)
    assert refused.status == 403 and "only its owner or a Recording Manager" in refused.body
    assert fake_ami.received("StopMixMonitor") == []

    allowed = http.post(STOP, extenOrUniqueId="410", agentLoginName="boss", apiKey=API_KEY)
    assert allowed.status == 200


def test_retrieval_shows_each_user_the_legs_they_may_see(http, fake_ami, store):
    store.add_user("fred")
    store.add_user("anna")
    store.add_user("boss", ["Recording Manager"])
    fred = fake_ami.add_channel("PJSIP/410-0000001a")
    fake_ami.add_channel("PJSIP/411-0000001b")
    http.post(START, extenOrUniqueId="410", agentLoginName="fred", tag="CASE-5", apiKey=API_KEY)
    http.post(START, extenOrUniqueId="411", tag="CASE-5", apiKey=API_KEY)

    def seen(login):
        answer = http.get(BY_TAG, tag="CASE-5", apiKey=API_KEY, loginName=login)
        assert answer.status == 200
        return answer.json

    (own,) = seen("fred")
    assert own["UniqueId"] == fred.uniqueid and own["Username"] == "fred" and own["Ownership"] == "AGENT"
    assert {"UniqueId", "Leg", "Start", "Duration", "Tag", "Username", "CallRecordId", "File", "Ownership"} <= set(own)
    assert own["Tag"] == "CASE-5" and own["Leg"] == 1 and own["Duration"] >= 0
    assert seen("anna") == []
    assert len(seen("boss")) == 2

    by_id = http.get(BY_ID, uniqueId=fred.uniqueid, apiKey=API_KEY, loginName="boss").json
    assert [leg["UniqueId"] for leg in by_id] == [fred.uniqueid]


@pytest.mark.parametrize(
    "query,status",
    [({"tag": "x", "loginName": "boss"}, 403), ({"tag": "x", "apiKey": API_KEY}, 400),
     ({"tag": "x", "apiKey": API_KEY, "loginName": "ghost"}, 403), ({"apiKey": API_KEY, "loginName": "boss"}, 400)],
    ids=["no-key", "no-login", "unknown-login", "no-tag"],
)
def test_retrieval_errors(http, store, query, status):
    store.add_user("boss", ["Recording Manager"])
    assert http.get(BY_TAG, **query).status == status


def test_manager_down_answers_503_and_fastagi_keeps_working(http, fake_ami, ami_service):
    fake_ami.add_channel("PJSIP/410-0000001a")
    fake_ami.stop()

    answer = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 503 and "manager interface is unavailable" in answer.body
    call = FakeAsterisk(ami_service.port).call(f"recording/start?apiKey={API_KEY}")
    assert call.status == "STARTED"


def test_manager_restart_is_survived(http, fake_ami, ami_service):
    fake_ami.restart()
    channel = fake_ami.add_channel("PJSIP/410-0000001a")
    ami_service.run(ami_service.app.manager.client.wait_connected(10))

    answer = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 200 and answer.json["uniqueId"] == channel.uniqueid


def test_stalled_manager_times_out_cleanly(http, fake_ami):
    fake_ami.add_channel("PJSIP/410-0000001a")
    fake_ami.stall("CoreShowChannels")

    answer = http.post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 503 and "within 1 s" in answer.body


def test_openapi_describes_every_route(http):
    spec = http.get("/openapi.json").json

    assert spec["openapi"].startswith("3.")
    for path in (START, STOP, "/servicemanager/rest/CallManagementAPI/pause",
                 "/servicemanager/rest/CallManagementAPI/resume", BY_TAG, BY_ID):
        assert path in spec["paths"]
    assert set(spec["paths"][START]["post"]["responses"]) >= {"200", "400", "403", "404", "405", "409", "503"}


def test_without_ami_the_http_api_says_what_is_missing(store, settings):
    from tests.http_client import HTTPClient
    from tests.service_runner import RunningService

    with RunningService(settings.with_(http_listen="127.0.0.1:0")) as running:
        answer = HTTPClient(running.app.http_port).post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 503 and "RECORDING_AMI_URL" in answer.body
