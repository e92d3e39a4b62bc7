"""What the product relies on Asterisk doing, tried on the real one: each behaviour the captures
did not show (and a few they did, that everything else stands on). The README's table "Asterisk
facts" names the test here that proves each. The FastAGI side is driven by a scripted probe
(tests/real_asterisk/probe.py) and the AMI side by the harness's own client, so nothing of the
product is under test in this file."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from recording.domain import channel_extension
from tests.real_asterisk import wav
from tests.real_asterisk.manager import ManagerError
from tests.real_asterisk.pbx import Asterisk, unique_name
from tests.real_asterisk.probe import Probe, ProbeSession
from tests.waiting import wait_until

STEP = 32 * 1024  # MixMonitor's file grows by whole buffers of this size while it records


@pytest.fixture
def probe():
    server = Probe()
    yield server
    server.close()


def probe_call(pbx: Asterisk, probe: Probe, after: tuple[str, ...] = ("Wait(10)",)) -> tuple[str, ProbeSession]:
    """A call whose second half answers and runs AGI() to the probe, then ``after``; the
    caller's half plays Milliwatt (1004 Hz). Returns the channel and the probe's session."""
    context = unique_name("fact")
    pbx.add_dialplan(context, "s", ["Answer()", f"AGI({probe.url()})", *after, "Hangup()"])
    channel = pbx.originate(context)
    return channel, probe.session()


def agent(pbx: Asterisk, seconds: float, tone: int = 600) -> str:
    """An agent's phone that answers and plays ``tone`` Hz for ``seconds``: what to Dial."""
    context = unique_name("fact-agent")
    pbx.add_dialplan(context, "410", ["Answer()", f"Playtones({tone})", f"Wait({seconds})", "Hangup()"])
    return f"Local/410@{context}/n"


def value(reply: str) -> str | None:
    """The data of ``200 result=1 (data)``; None for ``200 result=0`` (not set)."""
    if reply == "200 result=0":
        return None
    assert reply.startswith("200 result=1 (") and reply.endswith(")"), reply
    return reply[len("200 result=1 ("):-1]


def start_mixmonitor(session: ProbeSession, file: Path, options: str, variable: str) -> str:
    assert session.send(f'EXEC MixMonitor "{file},{options}i({variable})"') == "200 result=0"
    mixmonitor_id = value(session.send(f"GET VARIABLE {variable}"))
    assert mixmonitor_id and mixmonitor_id.startswith("0x")
    # NOTE: MixMonitor's own thread opens the file (and only then does `mixmonitor list` show
    # it), a moment after the application returned; the file is empty for another moment, until
    # its header is written (CI read it at 0 bytes once).
    wait_until(lambda: file.exists() and size(file) >= wav.HEADER_BYTES, 2, f"{file.name} and its header appear")
    return mixmonitor_id


def size(path: Path) -> int:
    return path.stat().st_size


def test_asterisk_listens_on_nothing_but_its_ami_port_and_its_cli_socket(pbx):
    listening = pbx.listening()

    assert pbx.rx("core show version").startswith("Asterisk 22.10.1 ")  # the captures' version
    assert sorted(listening) == sorted([f"tcp 127.0.0.1:{pbx.ami_port}", f"u_str {pbx.folder}/run/asterisk.ctl"])


def test_a_mixmonitor_file_is_a_bare_header_at_once_grows_by_32k_and_gets_its_sizes_when_closed(pbx, probe):
    channel, session = probe_call(pbx, probe)
    file = pbx.monitor / f"{unique_name('grow')}.wav"

    start_mixmonitor(session, file, "", "GROW_ID")
    at_once = wav.header(file)
    session.close()  # NOTE: a hung-up channel (and its MixMonitors) lasts until its AGI ends
    wait_until(lambda: size(file) > wav.HEADER_BYTES, 10, "the file grows")
    growing = wav.header(file)
    pbx.hangup(channel)
    wait_until(lambda: wav.header(file).complete, 10, "the header's sizes are written")
    closed = wav.header(file)

    assert (at_once.file_size, at_once.riff_size, at_once.data_size) == (44, 0, 0)
    assert (at_once.channels, at_once.rate, at_once.bits) == (1, 8000, 16)
    assert (growing.file_size - 44) % STEP == 0 and not growing.complete
    assert closed.data_size == closed.file_size - 44 >= growing.file_size - 44
    assert min(wav.loudness(file)) > 1000  # the caller's tone throughout: nothing muted


def test_option_b_writes_nothing_until_the_channel_is_bridged(pbx, probe):
    dial = agent(pbx, 2)
    channel, session = probe_call(pbx, probe, after=("Wait(1.5)", f"Dial({dial})"))
    file = pbx.monitor / f"{unique_name('bridged')}.wav"

    start_mixmonitor(session, file, "b", "B_ID")
    session.close()
    mark = pbx.ami.mark()
    pbx.ami.wait_event({"Event": "BridgeEnter", "Channel": channel}, 10, mark)
    before_bridge = size(file)
    pbx.wait_hangup(channel, 15, mark)
    wait_until(lambda: wav.header(file).complete, 10, "the file is closed")
    seconds = wav.header(file).seconds

    assert before_bridge == 44
    # 1.5 s unbridged + 2 s bridged: only the bridged part is in the file.
    assert 1.2 <= seconds <= 2.6, seconds


def test_stopmixmonitor_with_an_id_stops_exactly_that_one_and_an_unknown_id_stops_none(pbx, probe):
    channel, session = probe_call(pbx, probe)
    first, second, third = (pbx.monitor / f"{unique_name(n)}.wav" for n in ("first", "second", "third"))
    first_id = start_mixmonitor(session, first, "", "FIRST_ID")
    second_id = start_mixmonitor(session, second, "", "SECOND_ID")
    third_id = start_mixmonitor(session, third, "", "THIRD_ID")

    by_id = session.send(f'EXEC StopMixMonitor "{second_id}"')
    after_by_id = pbx.mixmonitors(channel)
    unknown = session.send('EXEC StopMixMonitor "0x7f00deadbeef"')
    after_unknown = pbx.mixmonitors(channel)
    latest = session.send("EXEC StopMixMonitor")
    after_latest = pbx.mixmonitors(channel)
    session.close()
    pbx.hangup(channel)

    assert by_id == unknown == latest == "200 result=0"
    assert set(after_by_id) == set(after_unknown) == {first_id, third_id}
    assert after_by_id[first_id] == str(first.with_suffix(""))  # the CLI shows the file without .wav
    # Without an id, the most recently started one.
    assert set(after_latest) == {first_id}


def test_the_id_in_the_i_variable_is_the_one_ami_and_the_cli_know(pbx, probe):
    channel, session = probe_call(pbx, probe)
    file = pbx.monitor / f"{unique_name('ids')}.wav"

    over_agi = start_mixmonitor(session, file, "", "AGI_ID")
    over_ami = pbx.ami.action("MixMonitor", Channel=channel, File=str(file.with_name("x" + file.name)),
                              Options="i(AMI_ID)")["MixMonitorID"]
    read_back = pbx.getvar(channel, "AMI_ID")
    unset_agi = session.send("GET VARIABLE NEVER_SET_HERE")
    unset_ami = pbx.ami.action("Getvar", Channel=channel, Variable="NEVER_SET_HERE")
    listed = pbx.mixmonitors(channel)
    session.close()
    pbx.hangup(channel)

    assert read_back == over_ami and set(listed) == {over_agi, over_ami}
    assert unset_agi == "200 result=0"
    assert unset_ami["Response"] == "Success" and unset_ami["Value"] == ""


def test_ami_stopmixmonitor_with_an_id_stops_exactly_that_one(pbx, probe):
    channel, session = probe_call(pbx, probe)
    session.close()
    files = [pbx.monitor / f"{unique_name(n)}.wav" for n in ("ami-a", "ami-b")]
    ids = [pbx.ami.action("MixMonitor", Channel=channel, File=str(f), Options=f"i(AMI_{n})")["MixMonitorID"]
           for n, f in enumerate(files)]
    wait_until(lambda: all(f.exists() for f in files), 2, "both files appear")

    stopped = pbx.ami.action("StopMixMonitor", Channel=channel, MixMonitorID=ids[0])
    left = pbx.mixmonitors(channel)
    with pytest.raises(ManagerError) as again:
        pbx.ami.action("StopMixMonitor", Channel=channel, MixMonitorID=ids[0])
    with pytest.raises(ManagerError) as gone:
        pbx.ami.action("StopMixMonitor", Channel="Local/nobody@nowhere-00000000;2", MixMonitorID=ids[1])
    wait_until(lambda: size(files[1]) > size(files[0]), 10, "the other one goes on recording")
    pbx.hangup(channel)

    assert stopped["Response"] == "Success" and set(left) == {ids[1]}
    assert wav.header(files[0]).complete  # closed at the stop, not at the hangup
    assert str(again.value) == "Could not stop monitoring channel"
    assert str(gone.value) == "No such channel"


def test_mixmonitormute_with_an_id_mutes_only_that_one_and_without_one_mutes_all(pbx, probe):
    channel, session = probe_call(pbx, probe, after=("Wait(30)",))
    session.close()
    files = [pbx.monitor / f"{unique_name(n)}.wav" for n in ("mute-a", "mute-b")]
    ids = [pbx.ami.action("MixMonitor", Channel=channel, File=str(f), Options=f"i(MUTE_{n})")["MixMonitorID"]
           for n, f in enumerate(files)]

    def mute(state: str, **by_id) -> None:
        pbx.ami.action("MixMonitorMute", Channel=channel, Direction="both", State=state, **by_id)

    time.sleep(1)
    mute("1", MixMonitorID=ids[1])
    time.sleep(1.5)
    mute("0", MixMonitorID=ids[1])
    time.sleep(1)
    mute("1")
    time.sleep(1.5)
    mute("0")
    time.sleep(1)
    with pytest.raises(ManagerError) as unknown:
        mute("1", MixMonitorID="0x7f00deadbeef")
    pbx.hangup(channel)
    for f in files:
        wait_until(lambda: wav.header(f).complete, 10, f"{f.name} closed")
    silences = [wav.silent_spans(wav.loudness(f)) for f in files]

    lengths = [[end - start for start, end in spans] for spans in silences]
    # a: silent only while all were muted; b: twice, its own mute and the mute of all (1.5 s each).
    assert len(lengths[0]) == 1 and len(lengths[1]) == 2, silences
    assert all(1.0 <= length <= 2.5 for length in lengths[0] + lengths[1]), silences
    # The muted spans keep the file's timeline: the same length as the one never muted alone.
    assert abs(wav.header(files[0]).seconds - wav.header(files[1]).seconds) < 0.1
    assert str(unknown.value) == "Cannot set mute flag"


def test_mixmonitor_option_a_appends_to_the_same_wav_and_its_header_covers_both_parts(pbx, probe):
    channel, session = probe_call(pbx, probe)
    file = pbx.monitor / f"{unique_name('append')}.wav"

    first_id = start_mixmonitor(session, file, "", "PART1")
    session.send("EXEC Wait 1")
    session.send(f'EXEC StopMixMonitor "{first_id}"')
    first_part = wav.header(file)
    session.send("EXEC Wait 1")  # paused: nothing is written
    start_mixmonitor(session, file, "a", "PART2")
    session.send("EXEC Wait 1")
    session.close()
    pbx.hangup(channel)
    wait_until(lambda: wav.header(file).complete and wav.header(file).file_size > first_part.file_size, 10,
               "the appended file closed")
    whole = wav.header(file)

    assert first_part.complete and 0.8 <= first_part.seconds <= 1.6
    # Both parts (about a second each), without the paused second in between.
    assert 0.8 <= whole.seconds - first_part.seconds <= 1.6
    assert wav.longest_silence(file) == 0  # no gap is written for the pause


def test_mset_sets_at_most_99_pairs_and_ignores_an_empty_last_one(pbx, probe):
    channel, session = probe_call(pbx, probe)
    pairs = ",".join(f"V{i}=v{i}" for i in range(1, 101))

    hundred = session.send(f'EXEC MSet "{pairs}"')
    read = {i: value(session.send(f"GET VARIABLE V{i}")) for i in (1, 98, 99, 100)}
    trailing = session.send('EXEC MSet "T1=a,T2=,"')
    after_trailing = [value(session.send(f"GET VARIABLE {n}")) for n in ("T1", "T2")]
    no_equals = session.send('EXEC MSet "N1=a,junk,N2=b"')
    after_no_equals = [value(session.send(f"GET VARIABLE {n}")) for n in ("N1", "N2")]
    session.close()
    pbx.hangup(channel)

    assert hundred == trailing == no_equals == "200 result=0"
    # The 99th pair takes the rest of the data whole: AST_APP_ARG(pair)[99].
    assert read == {1: "v1", 98: "v98", 99: "v99,V100=v100", 100: None}
    assert after_trailing == ["a", ""] and after_no_equals == ["a", "b"]
    assert "MSet: ignoring entry 'junk' with no '='" in pbx.log_text()


def test_channels_and_hangups_over_ami_carry_what_the_service_reads(pbx, probe):
    dial = agent(pbx, 30)
    channel, session = probe_call(pbx, probe, after=(f"Dial({dial})",))
    uniqueid = session.env["agi_uniqueid"]
    session.close()
    mark = pbx.ami.mark()
    pbx.ami.wait_event({"Event": "BridgeEnter", "Channel": channel}, 10)
    live = {c["Channel"]: c for c in pbx.channels()}
    pbx.hangup(channel)
    hangup = pbx.wait_hangup(channel, 10, mark)

    mine = live[channel]
    agent_leg = next(c for name, c in live.items() if name.startswith(dial.split("/n")[0]) and name.endswith(";1"))
    assert session.env["agi_channel"] == channel and mine["Uniqueid"] == uniqueid
    assert mine["BridgeId"] and mine["BridgeId"] == agent_leg["BridgeId"]
    assert mine["Linkedid"] == agent_leg["Linkedid"] != ""
    # The extension the HTTP API finds a channel by, from the names Asterisk gives Local channels.
    assert channel_extension(channel) == "s" and channel_extension(agent_leg["Channel"]) == "410"
    assert hangup["Uniqueid"] == uniqueid
    with pytest.raises(ManagerError) as gone:
        pbx.ami.action("MixMonitor", Channel=channel, File="/tmp/never.wav", Options="i(X)")
    assert str(gone.value) == "No such channel"


def test_a_caller_hanging_up_during_the_session_leaves_it_open_in_dead_channel_mode(pbx, probe):
    channel, session = probe_call(pbx, probe)
    file = pbx.monitor / f"{unique_name('dead')}.wav"
    start_mixmonitor(session, file, "", "DEAD_ID")

    pbx.hangup(channel)
    unprompted = session.read_line()
    variable = session.send("GET VARIABLE DEAD_ID")
    mset = session.send('EXEC MSet "RECORDING_STATUS=STARTED,RECORDING_ERROR="')
    media = session.send('STREAM FILE beep ""')
    still_recording = file.exists() and not wav.header(file).complete
    session.sock.shutdown(socket.SHUT_WR)
    answer = session.read_line()  # NOTE: Asterisk answers the half-close with HANGUP, then closes
    session.close()

    assert unprompted == "HANGUP"
    assert value(variable) and mset == "200 result=0"
    assert media.startswith("511 ")
    # The channel, and its MixMonitor, last until the session ends.
    assert still_recording
    assert answer == "HANGUP"
    wait_until(lambda: wav.header(file).complete, 10, "the file closed once the session ended")


def test_a_file_mixmonitor_cannot_open_still_gets_an_id_and_only_the_log_says_so(pbx, probe):
    # What the service cannot see from the dialplan's side: its STARTED rests on the id, and the
    # id is set whether or not the file could be opened.
    channel, session = probe_call(pbx, probe)
    not_a_folder = pbx.monitor / f"{unique_name('plain-file')}"
    not_a_folder.write_text("a file, not a folder")
    file = not_a_folder / "x.wav"
    mark = pbx.log_size()

    answered = session.send(f'EXEC MixMonitor "{file},bi(NO_FILE_ID)"')
    mixmonitor_id = value(session.send("GET VARIABLE NO_FILE_ID"))
    logged = pbx.wait_log(rf"ERROR.*app_mixmonitor\.c: Cannot open {file}", 5, mark)
    listed = pbx.mixmonitors(channel)
    no_file = session.send('EXEC MixMonitor ",i(NO_NAME_ID)"')
    no_name_id = session.send("GET VARIABLE NO_NAME_ID")
    session.close()
    pbx.hangup(channel)

    assert answered == "200 result=0" and mixmonitor_id and logged
    assert listed == {mixmonitor_id: ""}  # running, with no file
    assert not file.exists()
    # Without a file name MixMonitor does not start at all, and says so.
    assert (no_file, no_name_id) == ("200 result=-1", "200 result=0")
