"""The HTTP recording API and the dialplan's sample on a real Asterisk: a CRM starting, pausing,
resuming and stopping a recording by unique id and by extension (the service reaching the
channel over AMI), finding and playing it afterwards (with a Range), and extensions.conf.sample
loaded into Asterisk with its subroutines called. On SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from tests.http_client import HTTPClient
from tests.real_asterisk import wav
from tests.real_asterisk.calls import agi, call, complete, leg_of, phone, post, wait_report
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until

RETRIEVAL = "/njadmin/rest/RecordingAPI"


def test_the_api_records_a_call_by_unique_id_and_finds_it_by_the_agents_extension(pbx, with_ami):
    """The CRM records the call by the caller's unique id, then names the agent's extension: the
    call is recorded already (one recording per call, followed through its parts), and a pause,
    resume or stop by the agent's extension acts on the call's leg, on the caller's channel."""
    dial, extension = phone(pbx, 9)
    talking = call(pbx, with_ami, ["{report:dial}", f"Dial({dial})"])
    wait_report(pbx, talking.label("dial"))
    agent_leg = wait_until(lambda: next((c for c in pbx.channels() if c["Channel"].startswith(dial.split("/n")[0])
                                         and c["Channel"].endswith(";1") and c["BridgeId"]), None),
                           10, "the agent's leg in the bridge")

    by_id = post(with_ami, "start", talking.uniqueid, tag="crm-by-id", agentLoginName="ann")
    by_extension = post(with_ami, "start", extension, tag="crm-by-ext")
    running = (pbx.mixmonitors(talking.channel), pbx.mixmonitors(agent_leg["Channel"]))
    paused = post(with_ami, "pause", extension, agentLoginName="boss")
    time.sleep(1.5)
    resumed = post(with_ami, "resume", extension)
    time.sleep(1)
    stopped = post(with_ami, "stop", extension)
    left = pbx.mixmonitors(talking.channel)
    nothing = post(with_ami, "stop", talking.uniqueid)
    pbx.hangup(talking.channel)

    assert [a.status for a in (by_id, by_extension, paused, resumed, stopped)] == [200] * 5, \
        [a.body for a in (by_id, by_extension, paused, resumed, stopped)]
    assert (by_id.json["status"], by_id.json["uniqueId"], by_id.json["channel"]) == (
        "STARTED", talking.uniqueid, talking.channel)
    assert (by_extension.json["status"], by_extension.json["recordingId"]) == ("ALREADY_RECORDING",
                                                                                by_id.json["recordingId"])
    assert [len(r) for r in running] == [1, 0] and left == {}
    assert [a.json["status"] for a in (paused, resumed, stopped)] == ["PAUSED", "RESUMED", "STOPPED"]
    assert [a.json["recordingId"] for a in (paused, resumed, stopped)] == [by_id.json["recordingId"]] * 3
    assert nothing.status == 409
    file = Path(by_id.json["file"])
    complete(file)
    # Muted while paused, by the agent's extension: the call's own recording.
    assert 1.0 <= wav.longest_silence(file) <= 3.0
    leg = leg_of(with_ami, talking.uniqueid, "stopped")
    # Both tags find it: the second start's goes to the call record.
    assert (leg.source, leg.owner, leg.tag, leg.external_reference) == ("http", "ann", "crm-by-id", "crm-by-ext")
    assert [p.method for p in leg.pauses] == ["mute"]


def test_a_finished_recording_is_found_and_played_with_a_range(pbx, with_ami):
    dial, _ = phone(pbx, 2)
    finished = call(pbx, with_ami, [agi(with_ami, query="tag=crm-play&agentLoginName=fred"), "{report:start}",
                                    f"Dial({dial})"])
    started = wait_report(pbx, finished.label("start"))
    pbx.wait_hangup(finished.channel, 20)
    file = Path(started.file)
    complete(file)
    wait_until(lambda: leg_of(with_ami, finished.uniqueid).file_sha256, 15, "the digest of the complete file")
    http = HTTPClient(with_ami.http_port)
    content = file.read_bytes()

    (by_tag,) = http.get(f"{RETRIEVAL}/retrieveMetaData", tag="crm-play", apiKey=API_KEY, loginName="fred").json
    (by_id,) = http.get(f"{RETRIEVAL}/retrieveMetaDataByUniqueId", uniqueId=finished.uniqueid, apiKey=API_KEY,
                        loginName="boss").json
    query = {"recordingId": started.id, "apiKey": API_KEY, "loginName": "fred"}
    whole = http.request("GET", f"{RETRIEVAL}/retrieveRecording", query=query)
    header = http.request("GET", f"{RETRIEVAL}/retrieveRecording", query=query, headers={"Range": "bytes=0-43"})
    tail = http.request("GET", f"{RETRIEVAL}/retrieveRecording", query=query, headers={"Range": "bytes=-800"})
    stranger = http.request("GET", f"{RETRIEVAL}/retrieveRecording", query={**query, "loginName": "ann"})

    assert by_tag == by_id and by_tag["RecordingId"] == started.id and by_tag["State"] == "ended"
    assert by_tag["FileSize"] == len(content) and by_tag["FileSha256"] == hashlib.sha256(content).hexdigest()
    assert (whole.status, whole.content) == (200, content)
    assert whole.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(content).digest()).decode()}:"
    assert (header.status, header.content) == (206, content[:44])
    assert header.headers["Content-Range"] == f"bytes 0-43/{len(content)}"
    assert (tail.status, tail.content) == (206, content[-800:])
    assert stranger.status == 403


def test_extensions_conf_sample_as_shipped(pbx, with_ami):
    # [from-pstn-example] itself: the caller's number as the tag, Dial(PJSIP/410) fails here (no
    # SIP stack), and its h extension closes the leg. RECORDING_AGI and RECORDING_API_KEY come as
    # channel variables instead of the [globals] placeholders.
    mark = pbx.log_size()
    pbx.ami.action("Originate", Channel="Local/5551234@from-pstn-example", Application="Milliwatt",
                   CallerID="<5551234>", Async="true",
                   Variable=[f"RECORDING_AGI={with_ami.agi_url}", f"RECORDING_API_KEY={API_KEY}"])
    said = pbx.wait_log(r"app_verbose\.c: Recording (\S+) as leg (\S+) to (\S+)$", 20, mark)
    uniqueid, leg_id, file = said.groups()
    leg = leg_of(with_ami, uniqueid, "ended")

    assert (leg.id, leg.file, leg.tag, leg.ended_by) == (leg_id, file, "5551234", "hangup")
    assert f"recording/hangup {uniqueid} status=ENDED" in with_ami.text()


def test_extensions_conf_sample_subroutines(pbx, with_ami):
    dial, _ = phone(pbx, 1.5)
    steps = {"start": "Gosub(sub-recording-start,s,1(crm-sample,fred))",
             "pause": "Gosub(sub-recording-control,pause,1(fred))",
             "resume": "Gosub(sub-recording-control,resume,1())",
             "ann-stops": "Gosub(sub-recording-control,stop,1(ann))",
             "boss-stops": "Gosub(sub-recording-control,stop,1(boss))"}
    lines = []
    for name, line in steps.items():
        lines += [line, "Verbose(0,RT {context}:" + name + " ret=${GOSUB_RETVAL} status=${RECORDING_STATUS})"]
        if name == "resume":
            lines.append(f"Dial({dial},,g)")  # g: the dialplan goes on after the agent hangs up
    sample = call(pbx, with_ami, lines)

    seen = {name: pbx.wait_log(rf"app_verbose\.c: RT {sample.context}:{name} ret=(\S*) status=(\S*)$", 20).groups()
            for name in steps}
    leg = leg_of(with_ami, sample.uniqueid, "stopped")

    assert seen == {"start": ("STARTED", "STARTED"), "pause": ("PAUSED", "PAUSED"), "resume": ("RESUMED", "RESUMED"),
                    "ann-stops": ("DENIED", "DENIED"), "boss-stops": ("STOPPED", "STOPPED")}
    assert (leg.owner, leg.tag, [p.method for p in leg.pauses]) == ("fred", "crm-sample", ["mute"])
