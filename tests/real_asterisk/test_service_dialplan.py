"""The service as the dialplan uses it, on a real Asterisk: `recording-agi serve` reached by
AGI() from calls of Local channels playing tones; what the dialplan saw (its Verbose() lines),
what Asterisk did (its MixMonitors, the file growing, complete, silent while muted) and what the
database holds. On SQLite and on PostgreSQL."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

from recording.domain import mixmonitor_variable
from tests.real_asterisk import wav
from tests.http_client import HTTPClient
from tests.real_asterisk.calls import agi, call, complete, leg_of, phone, wait_report
from tests.real_asterisk.pbx import unique_name
from tests.real_asterisk.service import Serve
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until


def test_start_with_the_key_in_the_url_and_in_the_channel_variable(pbx, with_ami):
    dial_url, _ = phone(pbx, 3)
    dial_var, _ = phone(pbx, 3)
    in_url = call(pbx, with_ami, [agi(with_ami, query="tag=in-url&agentLoginName=fred"), "{report:start}",
                                  f"Dial({dial_url})"])
    in_variable = call(pbx, with_ami, [agi(with_ami, query="tag=in-var", key=False), "{report:start}",
                                       f"Dial({dial_var})"])

    seen = [wait_report(pbx, c.label("start")) for c in (in_url, in_variable)]
    file = Path(seen[0].file)
    wait_until(lambda: file.exists() and file.stat().st_size > 44, 10, "the file grows while the call talks")
    running = pbx.mixmonitors(in_url.channel)
    id_on_channel = pbx.getvar(in_url.channel, mixmonitor_variable(seen[0].id))
    growing = wav.header(file)
    for c in (in_url, in_variable):
        pbx.wait_hangup(c.channel, 20)
    closed = complete(file)
    legs = [leg_of(with_ami, c.uniqueid, "ended") for c in (in_url, in_variable)]

    assert [(s.status, s.deferred, s.error, s.agi) for s in seen] == [("STARTED", "0", "", "SUCCESS")] * 2
    assert [s.uid for s in seen] == [in_url.uniqueid, in_variable.uniqueid]
    assert file.is_relative_to(with_ami.monitor) and file.name == f"{in_url.uniqueid}-1-{seen[0].id[:8]}.wav"
    assert running == {id_on_channel: str(file.with_suffix(""))}
    assert not growing.complete and closed.complete and 2.0 <= closed.seconds <= 3.5
    assert min(wav.loudness(file)) > 1000  # both tones, all along
    assert [(leg.id, leg.tag, leg.owner, leg.ownership, leg.ended_by) for leg in legs] == [
        (seen[0].id, "in-url", "fred", "AGENT", "hangup"), (seen[1].id, "in-var", None, "DEFAULT", "hangup")]
    assert legs[0].file == str(file) and legs[0].channel == in_url.channel
    hashed = leg_of(with_ami, in_url.uniqueid) if legs[0].file_sha256 else wait_until(
        lambda: (leg := leg_of(with_ami, in_url.uniqueid)).file_sha256 and leg, 15, "the file's digest is stored")
    assert (hashed.file_size, hashed.file_sha256) == (file.stat().st_size, hashlib.sha256(file.read_bytes()).hexdigest())
    # The key in the URL reaches Asterisk's log (agi_request), never the service's.
    assert "k1-test-key" not in with_ami.text()


def test_a_second_start_on_the_call_is_already_recording_with_one_mixmonitor(pbx, with_ami):
    dial, _ = phone(pbx, 2)
    twice = call(pbx, with_ami, [agi(with_ami, query="tag=first"), "{report:first}",
                                 agi(with_ami, query="tag=second"), "{report:second}", f"Dial({dial})"])

    first, second = (wait_report(pbx, twice.label(s)) for s in ("first", "second"))
    running = pbx.mixmonitors(twice.channel)
    pbx.wait_hangup(twice.channel, 20)
    leg = leg_of(with_ami, twice.uniqueid, "ended")

    assert (first.status, second.status) == ("STARTED", "ALREADY_RECORDING")
    assert second.id == first.id and second.file == first.file and len(running) == 1
    # The newer tag finds the leg too.
    assert [found.id for found in with_ami.legs(tag="second")] == [leg.id]


def test_denied_and_invalid_start_nothing(pbx, with_ami):
    cases = {
        "wrong-key": ("DENIED", agi(with_ami, query="apiKey=not-the-key", key=False)),
        "no-key": ("DENIED", agi(with_ami, key=False)),  # the sample's [globals] placeholder key
        "unknown-argument": ("INVALID", agi(with_ami, query="tag=x&agentLogin=fred")),
        "unknown-agent": ("INVALID", agi(with_ami, query="agentLoginName=nobody")),
        "not-key-value": ("INVALID", agi(with_ami, query="tag=x").replace(")", ",oops)")),
    }
    calls = {name: call(pbx, with_ami, [line, "{report:start}", "Wait(1)"], key_variable=False)
             for name, (_, line) in cases.items()}

    seen = {name: wait_report(pbx, c.label("start")) for name, c in calls.items()}
    running = {name: pbx.mixmonitors(c.channel) for name, c in calls.items()}

    assert {name: s.status for name, s in seen.items()} == {name: status for name, (status, _) in cases.items()}
    assert all(s.error and not s.id and s.agi == "SUCCESS" for s in seen.values()), seen
    assert not any(running.values())
    assert not any(with_ami.legs(unique_id=c.uniqueid) for c in calls.values())
    # Each sentence (quotes, commas, parentheses: all escaped for MSet) reached the dialplan whole.
    for name, c in calls.items():
        logged = with_ami.wait_log(rf"recording/start {re.escape(c.uniqueid)} status=\S+ leg=- \S+ error=(.*)$")
        assert seen[name].error == ast.literal_eval(logged.group(1)), name


def test_pause_resume_and_stop_with_ami_mute_the_recording_and_close_it(pbx, with_ami):
    dial, _ = phone(pbx, 8, keys=[(1.5, "pause"), (1.5, "resume"), (1.5, "stop")])
    keys = call(pbx, with_ami, [agi(with_ami, query="tag=pci"), "{report:start}", f"Dial({dial})"])

    started = wait_report(pbx, keys.label("start"))
    file = Path(started.file)
    closed = complete(file)  # at the stop, while the call goes on
    running = pbx.mixmonitors(keys.channel)
    # NOTE: the route tells the dialplan (MSet) once the MixMonitor is stopped.
    told = wait_until(lambda: pbx.getvar(keys.channel, "RECORDING_STATUS") == "STOPPED", 5, "STOPPED told")
    pbx.wait_hangup(keys.channel, 20)
    leg = leg_of(with_ami, keys.uniqueid, "stopped")
    silences = wav.silent_spans(wav.loudness(file))

    assert running == {} and told
    assert [p.method for p in leg.pauses] == ["mute"] and leg.pauses[0].resumed_at is not None
    # Muted between *7 and *8: one silent stretch, the file keeping its timeline around it.
    assert len(silences) == 1 and 1.5 <= silences[0][1] - silences[0][0] <= 3.5, silences
    paused = (leg.pauses[0].resumed_at - leg.pauses[0].paused_at).total_seconds()
    assert abs(paused - (silences[0][1] - silences[0][0])) < 1.0
    # The file ends at the stop, before the call does (the phone talks 8 s).
    assert 4.0 <= closed.seconds <= (leg.end - leg.start).total_seconds() + 0.3 and leg.ended_by == "dialplan"


def test_pause_resume_and_stop_without_ami_stop_and_append_to_the_same_file(pbx, without_ami):
    dial, _ = phone(pbx, 8, keys=[(1.5, "pause"), (1.5, "resume"), (1.5, "stop")])
    keys = call(pbx, without_ami, [agi(without_ami, query="tag=pci-plain"), "{report:start}", f"Dial({dial})"])

    started = wait_report(pbx, keys.label("start"))
    file = Path(started.file)
    # NOTE: a MixMonitor is listed before its thread has opened the file, with no file name yet.
    named = lambda: (running := pbx.mixmonitors(keys.channel)) and all(running.values()) and running  # noqa: E731
    first = wait_until(named, 5, "the first MixMonitor")
    wait_until(lambda: not pbx.mixmonitors(keys.channel), 10, "the pause stops it")
    second = wait_until(named, 10, "the resume starts another")
    wait_until(lambda: not pbx.mixmonitors(keys.channel), 10, "the stop stops it")
    closed = complete(file)
    pbx.wait_hangup(keys.channel, 20)
    leg = leg_of(without_ami, keys.uniqueid, "stopped")

    # NOTE: two MixMonitors one after the other (none ran between them), on one file. Their ids
    # may be equal: a MixMonitor's id is the address of its datastore (app_mixmonitor.c,
    # ast_asprintf "%p"), and the second one's can reuse the freed first one's (CI saw it).
    assert list(first.values()) == list(second.values()) == [str(file.with_suffix(""))]
    assert [p.method for p in leg.pauses] == ["restart"] and leg.pauses[0].resumed_at is not None
    paused = (leg.pauses[0].resumed_at - leg.pauses[0].paused_at).total_seconds()
    recorded = (leg.end - leg.start).total_seconds() - paused
    # One WAV: both parts (about 2 s each), without the paused span, and no silence written for it.
    assert 3.0 <= closed.seconds <= recorded + 0.3 and paused >= 1.5, (closed.seconds, recorded, paused)
    assert wav.longest_silence(file) == 0


def test_a_hangup_closes_the_leg_over_ami_without_an_h_extension_and_by_the_h_route_without_ami(pbx, with_ami,
                                                                                                without_ami):
    dial_ami, _ = phone(pbx, 1.5)
    dial_plain, _ = phone(pbx, 1.5)
    no_h = call(pbx, with_ami, [agi(with_ami), "{report:start}", f"Dial({dial_ami})"])
    with_h = call(pbx, without_ami, [agi(without_ami), "{report:start}", f"Dial({dial_plain})"])
    pbx.add_extension(with_h.context, "h", 1, "AGI", f"{without_ami.agi_url}/recording/hangup?apiKey=k1-test-key")
    pbx.add_extension(with_h.context, "h", 2, "Verbose",
                      f"0,RT {with_h.label('h')} uid=${{UNIQUEID}} status=${{RECORDING_STATUS}} id=${{RECORDING_ID}}"
                      " deferred=${RECORDING_DEFERRED} agi=${AGISTATUS} file= error=")

    ended_by_ami = leg_of(with_ami, no_h.uniqueid, "ended")
    h = wait_report(pbx, with_h.label("h"))
    ended_by_h = leg_of(without_ami, with_h.uniqueid, "ended")

    assert ended_by_ami.ended_by == "hangup" and ended_by_ami.end is not None
    assert (h.status, h.id) == ("ENDED", ended_by_h.id) and ended_by_h.ended_by == "hangup"


def test_a_file_asterisk_cannot_write_is_still_started_and_its_absence_shows_afterwards(pbx, database, tmp_path):
    # Asterisk gives MixMonitor's id whether or not it could open the file (facts
    # test_a_file_mixmonitor_cannot_open_still_gets_an_id_and_only_the_log_says_so): the service
    # cannot tell, so the leg is STARTED; retrieval says the file is missing afterwards.
    blocked = pbx.monitor / unique_name("blocked")
    blocked.mkdir()
    (blocked / "s").write_text("a file where MixMonitor wants the folder of extension s")
    service = Serve(database, tmp_path / "serve-blocked", pbx,
                    extra_env={"RECORDING_MONITOR_TEMPLATE": f"{blocked}/{{extension}}/{{uniqueid}}.wav"})
    try:
        dial, _ = phone(pbx, 1)
        doomed = call(pbx, service, [agi(service, query="agentLoginName=fred"), "{report:start}", f"Dial({dial})"])
        started = wait_report(pbx, doomed.label("start"))
        leg = leg_of(service, doomed.uniqueid, "ended")
        played = HTTPClient(service.http_port).get("/njadmin/rest/RecordingAPI/retrieveRecording",
                                                   recordingId=started.id, apiKey=API_KEY, loginName="fred")
    finally:
        service.stop()

    assert started.status == "STARTED" and not Path(started.file).exists()
    assert leg.file == started.file and leg.file_sha256 is None
    assert played.status == 404 and started.file in played.body
