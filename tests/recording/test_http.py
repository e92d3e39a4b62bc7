"""The HTTP recording API end to end: a real HTTP client, the real server, the fake AMI as
Asterisk's manager, and the database of each backend."""

from __future__ import annotations

import gzip
import logging

import pytest

from recording.doors.openapi import MAX_BODY, OPERATIONS, spec
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
    served = http.get("/openapi.json").json

    # test_http_fuzz fuzzes spec(): it must be what the service serves.
    assert served == spec()
    assert served["openapi"].startswith("3.")
    for path in (START, STOP, "/servicemanager/rest/CallManagementAPI/pause",
                 "/servicemanager/rest/CallManagementAPI/resume", BY_TAG, BY_ID):
        assert path in served["paths"]
    start = served["paths"][START]["post"]
    assert set(start["responses"]) == {"200", "400", "403", "404", "405", "409", "413", "415", "500", "502", "503"}
    query = start["parameters"][0]["schema"]
    assert query["additionalProperties"] is False and query["required"] == ["extenOrUniqueId"]
    assert set(query["properties"]) == {"extenOrUniqueId", "agentLoginName", "tag", "timeStamp", "hash"}
    form = start["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["additionalProperties"] is False and "apiKey" in form["properties"]
    assert served["security"] == [{"apiKey": []}]


def test_every_described_operation_is_routed_to_its_handler():
    from recording.doors.http import RecordingAPI

    routed = {(method, path) for method, path, _ in RecordingAPI.ROUTES}
    described = {(method.upper(), path) for path, item in spec()["paths"].items() for method in item}
    assert described == {(op.method, op.path) for op in OPERATIONS} and described <= routed
    assert all(callable(getattr(RecordingAPI, op.handler, None)) for op in OPERATIONS)


def test_without_ami_the_http_api_says_what_is_missing(store, settings):
    from tests.http_client import HTTPClient
    from tests.service_runner import RunningService

    with RunningService(settings.with_(http_listen="127.0.0.1:0")) as running:
        answer = HTTPClient(running.app.http_port).post(START, extenOrUniqueId="410", apiKey=API_KEY)

    assert answer.status == 503 and "RECORDING_AMI_URL" in answer.body


def raw_post(path: str, body: bytes = b"", query: str = f"extenOrUniqueId=410&apiKey={API_KEY}", **headers) -> bytes:
    """A POST as bytes; a header given as None is left out (Content_Type stands for Content-Type)."""
    head = {"Host": "127.0.0.1", "Connection": "close", "Content-Length": str(len(body)),
            **{name.replace("_", "-"): value for name, value in headers.items()}}
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items() if value is not None)
    return f"POST {path}?{query} HTTP/1.1\r\n{lines}\r\n".encode() + body


def multipart(boundary: str, *parts: str) -> bytes:
    """A multipart/form-data body of ``parts`` (a lone surrogate stands for a byte that is not UTF-8)."""
    text = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n"
    return text.encode("utf-8", "surrogateescape")


FIELD = 'Content-Disposition: form-data; name="tag"\r\n\r\nCRM-1'
MULTIPART_BOUNDARY = {"Content_Type": "multipart/form-data; boundary=XyZ"}
FORM = {"Content_Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "request_bytes,status,sentence",
    [
        (raw_post(START, multipart("XyZ", FIELD), Content_Type="multipart/form-data"), 400, "needs the boundary"),
        (raw_post(START, multipart("XyZ", FIELD)[:-9], **MULTIPART_BOUNDARY), 400, "body is malformed"),
        (raw_post(START, b"no delimiter at all", **MULTIPART_BOUNDARY), 400, "body is malformed"),
        (raw_post(START, multipart("XyZ", 'Content-Disposition: form-data; name="tag"; filename="t.txt"\r\n\r\nx'),
                  **MULTIPART_BOUNDARY), 400, "'tag' must be a plain text field"),
        (raw_post(START, multipart("XyZ", 'Content-Disposition: form-data; name="tag"\r\n'
                                          'Content-Transfer-Encoding: base64\r\n\r\nQ1JNLTE='),
                  **MULTIPART_BOUNDARY), 400, "has a Content-Transfer-Encoding"),
        (raw_post(START, multipart("XyZ", "Content-Type: text/plain\r\n\r\nx"), **MULTIPART_BOUNDARY),
         400, "Content-Disposition: form-data with a name"),
        (raw_post(START, multipart("XyZ", 'Content-Disposition: form-data; name="tag"\r\n\r\n\udcff'),
                  **MULTIPART_BOUNDARY), 400, "not UTF-8 text"),
        (raw_post(START, b"tag=\xff\xfe", **FORM), 400, "the form body is not UTF-8 text"),
        (raw_post(START, b"tag=%ff", **FORM), 400, "the form body is not UTF-8 text"),
        (raw_post(START, b"tag=x", Content_Type="application/x-www-form-urlencoded; charset=latin-1"), 415,
         "must be UTF-8, not 'latin-1'"),
        (raw_post(START, b'{"tag": "x"}', Content_Type="application/json"), 415, "not 'application/json'"),
        (raw_post(START, b"tag=x"), 415, "not 'application/octet-stream'"),
        (raw_post(START, b"tag=" + b"x" * MAX_BODY, **FORM), 413, f"larger than {MAX_BODY} bytes"),
        (raw_post(START, query="extenOrUniqueId=410", Content_Length=str(10 * MAX_BODY), **FORM), 413,
         f"larger than {MAX_BODY} bytes"),
        (raw_post(START, b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_BODY + 1, b"x" * (MAX_BODY + 1)), Transfer_Encoding="chunked",
                  Content_Length=None, **FORM), 413, f"larger than {MAX_BODY} bytes"),
        (raw_post(START, b"not gzip at all", Content_Encoding="gzip", **FORM), 400, "the body could not be read"),
        (raw_post(START, gzip.compress(b"tag=" + b"x" * 20 * MAX_BODY), Content_Encoding="gzip", **FORM), 413,
         f"larger than {MAX_BODY} bytes"),
        (raw_post(START, b"tag=a&tag=b", **FORM), 400, "tag is given twice with different values"),
        (raw_post(START, query=f"extenOrUniqueId=410&extenOrUniqueId=411&apiKey={API_KEY}"), 400,
         "extenOrUniqueId is given twice"),
        (raw_post(START, b"apiKey=another", **FORM), 400, "apiKey is given twice"),
        (raw_post(START, query=f"extenOrUniqueId=%ff&apiKey={API_KEY}"), 400, "the query string is not UTF-8 text"),
        (raw_post(START, query=f"&&=x&apiKey={API_KEY}"), 400, "unknown argument ''"),
        (raw_post(START, query=f"tag&apiKey={API_KEY}"), 400, "extenOrUniqueId is required"),
        (raw_post(START, query=f"extenOrUniqueId=%zz&apiKey={API_KEY}"), 404, "extension '%zz'"),
        (raw_post(START, query=f"extenOrUniqueId=41%000&apiKey={API_KEY}"), 400, "without control characters"),
        (raw_post(START, query=f"extenOrUniqueId={'4' * 151}&apiKey={API_KEY}"), 400, "longer than 150 characters"),
        (raw_post(START, query="apiKey"), 403, "no apiKey was given"),
    ],
    ids=["multipart-no-boundary", "multipart-unclosed", "multipart-no-delimiter", "multipart-file",
         "multipart-base64", "multipart-no-name", "multipart-not-utf8", "form-not-utf8", "form-escape-not-utf8",
         "form-latin1", "json", "no-content-type", "huge-body", "huge-content-length", "huge-chunked",
         "bad-gzip", "gzip-bomb", "form-repeated", "query-repeated", "key-in-both", "query-escape-not-utf8",
         "query-empty-pieces", "query-name-only", "query-bad-escape", "query-nul", "query-too-long",
         "query-key-name-only"],
)
def test_input_the_server_cannot_use_gets_a_4xx_sentence_and_one_log_line(
    http, fake_ami, store, caplog, request_bytes, status, sentence
):
    fake_ami.add_channel("PJSIP/410-0000001a")

    with caplog.at_level(logging.INFO):
        answer = http.raw(request_bytes)

    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert sentence in answer.body and answer.body.count("\n") == 1
    lines = [r for r in caplog.records if r.name in ("recording.http", "aiohttp.server") and r.levelno >= logging.INFO]
    assert len(lines) == 1 and f"status={status}" in lines[0].getMessage() and sentence in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert fake_ami.received("MixMonitor") == [] and store.find_legs() == []


@pytest.mark.parametrize(
    "request_bytes,reason",
    [
        (f"POST {START}?tag=\xe4&apiKey={API_KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode("latin-1"),
         "Invalid char in url query"),
        (f"GET {BY_TAG}?tag={'x' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "Got more than 8190 bytes"),
        (raw_post(START, b"zz\r\nx\r\n0\r\n\r\n", Transfer_Encoding="chunked", Content_Length=None),
         "Invalid character in chunk size"),
        (b"\x00\x01 not HTTP\r\n\r\n", "Invalid method encountered"),
    ],
    ids=["raw-non-ascii-in-url", "line-too-long", "bad-chunk", "not-http"],
)
def test_a_request_that_is_not_http_gets_a_400_and_one_line_without_traceback(http, caplog, request_bytes, reason):
    # NOTE: aiohttp's parser refuses these before the API sees them, with its own text.
    with caplog.at_level(logging.INFO):
        answer = http.raw(request_bytes)

    assert answer.status == 400 and reason in answer.body
    lines = [r for r in caplog.records if r.name in ("recording.http", "aiohttp.server") and r.levelno >= logging.INFO]
    assert len(lines) == 1 and reason in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_arguments_from_a_multipart_form_body(http, fake_ami, store):
    fake_ami.add_channel("PJSIP/410-0000001a")
    body = multipart("b0undary", 'Content-Disposition: form-data; name="extenOrUniqueId"\r\n\r\n410',
                     'Content-Disposition: form-data; name="tag"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
                     'Zwölf Zeilen', f'Content-Disposition: form-data; name="apiKey"\r\n\r\n{API_KEY}')

    answer = http.raw(raw_post(START, body, query="", Content_Type="multipart/form-data; boundary=b0undary"))

    assert answer.status == 200, answer.body
    (leg,) = store.find_legs()
    assert leg.tag == "Zwölf Zeilen"


@pytest.mark.parametrize(
    "query,sentence",
    [("tag=x&loginName=%00", "loginName must be UTF-8 text without control characters"),
     ("tag=%00&loginName=boss", "tag must be UTF-8 text without control characters"),
     (f"tag={'x' * 256}&loginName=boss", "tag is longer than 255 characters"),
     ("uniqueId=1&loginName=boss", "unknown argument 'uniqueId' (expected tag, loginName, apiKey)")],
    ids=["nul-login", "nul-tag", "long-tag", "other-operations-argument"],
)
def test_retrieval_refuses_what_it_cannot_look_up(http, store, query, sentence):
    # A NUL reached PostgreSQL before, which refused it: a 500 saying a write was refused.
    store.add_user("boss", ["Recording Manager"])
    request = f"GET {BY_TAG}?{query}&apiKey={API_KEY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    answer = http.raw(request.encode())

    assert (answer.status, answer.body) == (400, sentence + "\n")


def test_a_compressed_form_body_is_read(http, fake_ami, store):
    fake_ami.add_channel("PJSIP/410-0000001a")
    body = gzip.compress(f"extenOrUniqueId=410&tag=CRM-9&apiKey={API_KEY}".encode())

    answer = http.raw(raw_post(START, body, query="", Content_Encoding="gzip", **FORM))

    assert answer.status == 200, answer.body
    assert [leg.tag for leg in store.find_legs()] == ["CRM-9"]
