"""recording.asterisk.ami against the fake manager over real loopback TCP, plus its pure parsers.

Each scenario runs under asyncio.run with a hard deadline, so a hang fails instead of blocking
the suite; assertions about what Asterisk received are made on the fake's side of the socket.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from recording.asterisk.ami import (
    AMIClient,
    AMIConfigError,
    AMIError,
    AMILoginRefused,
    AMIProtocolError,
    AMITimeout,
    AMIUnavailable,
    format_action,
    parse_ami_url,
    parse_banner,
    parse_message,
    read_message,
)
from recording.errors import ConfigError
from tests.fake_ami import FakeAMI

SECRET = "Sup3r-s3cret/with:odd@chars"
CHANNEL = "Local/104@acceptance-0000000a;2"
VARIABLE = "RECORDING_MIXMON_0f3a"
CAPTURE_FIELDS = [
    "Event", "ActionID", "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
    "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority",
    "Uniqueid", "Linkedid", "Application", "ApplicationData", "Duration", "BridgeId",
]


@pytest.fixture
def fake():
    with FakeAMI(secret=SECRET) as server:
        yield server


def run(scenario, deadline: float = 10.0):
    """Runs one async scenario; a hang becomes a failure after ``deadline`` seconds."""

    async def bounded():
        return await asyncio.wait_for(scenario(), deadline)

    return asyncio.run(bounded())


def client_for(fake: FakeAMI, **options) -> AMIClient:
    options = {"action_timeout": 2.0, "connect_timeout": 1.0, "backoff": (0.05, 0.2)} | options
    return AMIClient.from_url(fake.url, **options)


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- login ------------------------------------------------------------------------------------


def test_login_asks_for_events_and_actions_work(fake):
    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        reply = await client.action("Ping")
        await client.stop()
        return client, reply

    client, reply = run(scenario)
    assert reply["Response"] == "Success" and reply["Ping"] == "Pong"
    assert client.version == "11.0.0" and not client.connected
    login = fake.received("Login")[0]
    assert login["Username"] == "recording" and login["Secret"] == SECRET and login["Events"] == "on"
    assert [a["Action"] for a in fake.received()] == ["Login", "Ping", "Logoff"]
    assert all(raw.endswith(b"\r\n\r\n") and b"\n" not in raw.replace(b"\r\n", b"") for raw in fake.raw)


def test_wrong_secret_is_reported_once_and_retried_slowly(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="recording.ami")

    async def scenario():
        client = AMIClient("127.0.0.1", fake.port, "recording", "wrong", backoff=(0.01, 0.02), refused_retry=0.2)
        await client.start()
        with pytest.raises(AMILoginRefused) as refused:
            await client.wait_connected(2)
        await asyncio.sleep(0.5)  # would be dozens of retries at the normal backoff
        with pytest.raises(AMIUnavailable, match="refused: Authentication failed"):
            await client.action("Ping")
        with pytest.raises(AMILoginRefused):
            await client.wait_connected(1)
        logins = len(fake.received("Login"))
        fake.secret = "wrong"  # manager.conf fixed: the next slow retry logs in
        await asyncio.sleep(0.3)
        await client.wait_connected(1)
        await client.action("Ping")
        await client.stop()
        return refused.value, logins

    refused, logins = run(scenario)
    assert str(refused) == "Authentication failed" and refused.reply["Response"] == "Error"
    assert 2 <= logins <= 4
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "refused: Authentication failed" in errors[0].getMessage()


def test_nothing_listening_is_logged_once_then_connects_when_it_appears(caplog):
    caplog.set_level(logging.DEBUG, logger="recording.ami")
    fake = FakeAMI().start()
    port = fake.port
    fake.stop()

    async def scenario():
        client = AMIClient("127.0.0.1", port, "recording", "s3cret", backoff=(0.02, 0.05))
        await client.start()
        await asyncio.sleep(0.4)
        assert not client.connected
        await asyncio.to_thread(fake.start)
        await client.wait_connected(2)
        await client.stop()

    try:
        run(scenario)
    finally:
        fake.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not reachable" in m for m in messages) == 1
    assert sum("restored" in m for m in messages) == 1


# --- actions ----------------------------------------------------------------------------------


def test_concurrent_actions_get_their_own_answers(fake):
    channel = fake.add_channel(CHANNEL)
    channel.variables.update({f"VAR_{i}": f"value-{i}" for i in range(50)})
    fake.reorder()

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        values = await asyncio.gather(*(client.getvar(CHANNEL, f"VAR_{i}") for i in range(50)))
        in_flight = client.in_flight
        await client.stop()
        return values, in_flight

    values, in_flight = run(scenario)
    assert values == [f"value-{i}" for i in range(50)]
    assert in_flight == 0
    sent = [a["ActionID"] for a in fake.received("Getvar")]
    answered = [aid for aid in fake.replied if aid in set(sent)]
    assert len(set(sent)) == 50 and sorted(answered) == sorted(sent)
    assert answered != sent, "the fake was meant to answer out of order"


def test_core_show_channels_collects_the_event_list(fake):
    fake.add_channel("Local/104@acceptance-0000000a;1", uniqueid="1795825873.20")
    fake.add_channel(CHANNEL, uniqueid="1795825873.21", linkedid="1795825873.20",
                     application="Wait", application_data="20", priority=3, bridge_id="b-1")

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        channels = await client.core_show_channels()
        response, events = await client.list_action("CoreShowChannels")
        fake.channels.clear()
        empty = await client.core_show_channels()
        await client.stop()
        return channels, response, events, empty

    channels, response, events, empty = run(scenario)
    assert [list(c) for c in channels] == [CAPTURE_FIELDS, CAPTURE_FIELDS]
    assert [c["Uniqueid"] for c in channels] == ["1795825873.20", "1795825873.21"]
    second = channels[1]
    assert (second["Linkedid"], second["Application"], second["ApplicationData"], second["BridgeId"]) == (
        "1795825873.20", "Wait", "20", "b-1")
    assert channels[0]["AccountCode"] == "" and channels[0]["BridgeId"] == ""
    assert response["EventList"] == "start" and response["Message"] == "Channels will follow"
    assert [e["Event"] for e in events] == ["CoreShowChannel", "CoreShowChannel"]
    assert empty == []


def test_mixmonitor_returns_the_id_only_with_i_option(fake):
    fake.add_channel(CHANNEL)

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        plain = await client.action("MixMonitor", Channel=CHANNEL, File="/tmp/plain.wav")
        mixmonitor_id = await client.mixmonitor(CHANNEL, "/tmp/acc.wav", "b", VARIABLE)
        variable = await client.getvar(CHANNEL, VARIABLE)
        unset = await client.getvar(CHANNEL, "NOT_SET")
        with pytest.raises(ValueError):
            await client.mixmonitor(CHANNEL, "/tmp/x.wav", "bi(OTHER)", VARIABLE)
        await client.stop()
        return plain, mixmonitor_id, variable, unset

    plain, mixmonitor_id, variable, unset = run(scenario)
    assert "MixMonitorID" not in plain and plain["Response"] == "Success"
    assert mixmonitor_id is not None and mixmonitor_id.startswith("0x7f")
    assert variable == mixmonitor_id and unset is None
    sent = fake.received("MixMonitor")
    assert "Options" not in sent[0]
    assert sent[1]["Options"] == f"bi({VARIABLE})" and sent[1]["File"] == "/tmp/acc.wav"


def test_stop_mixmonitor_by_id_stops_exactly_that_one(fake):
    fake.add_channel(CHANNEL)

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        first = await client.mixmonitor(CHANNEL, "/tmp/first.wav", "", "V1")
        second = await client.mixmonitor(CHANNEL, "/tmp/second.wav", "", "V2")
        await client.stop_mixmonitor(CHANNEL, first)
        with pytest.raises(AMIError, match="^Could not stop monitoring channel$"):
            await client.stop_mixmonitor(CHANNEL, first)
        with pytest.raises(ValueError):
            await client.stop_mixmonitor(CHANNEL, "")
        await client.stop()
        return first, second

    first, second = run(scenario)
    monitors = {m.id: m.running for m in fake.channel(CHANNEL).mixmonitors}
    assert monitors == {first: False, second: True}
    assert all(a["MixMonitorID"] == first for a in fake.received("StopMixMonitor"))


def test_fake_stop_mixmonitor_without_id_stops_the_latest(fake):
    fake.add_channel(CHANNEL)

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        ids = [await client.mixmonitor(CHANNEL, f"/tmp/{n}.wav", "", f"V{n}") for n in range(2)]
        await client.action("StopMixMonitor", Channel=CHANNEL)
        await client.action("StopMixMonitor", Channel=CHANNEL)
        with pytest.raises(AMIError, match="Could not stop monitoring channel"):
            await client.action("StopMixMonitor", Channel=CHANNEL)
        await client.stop()
        return ids

    ids = run(scenario)
    assert [m.id for m in fake.channel(CHANNEL).mixmonitors] == ids
    assert not any(m.running for m in fake.channel(CHANNEL).mixmonitors)


def test_mixmonitor_mute_sends_the_fields_app_mixmonitor_reads(fake):
    fake.add_channel(CHANNEL)

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        mixmonitor_id = await client.mixmonitor(CHANNEL, "/tmp/m.wav", "", VARIABLE)
        await client.mixmonitor_mute(CHANNEL, mixmonitor_id, True)
        muted = (fake.channel(CHANNEL).mixmonitors[0].muted_read, fake.channel(CHANNEL).mixmonitors[0].muted_write)
        await client.mixmonitor_mute(CHANNEL, mixmonitor_id, False, direction="read")
        with pytest.raises(ValueError):
            await client.mixmonitor_mute(CHANNEL, mixmonitor_id, True, direction="sideways")
        with pytest.raises(AMIError, match="No such channel"):
            await client.mixmonitor_mute("Local/gone", mixmonitor_id, True)
        await client.stop()
        return mixmonitor_id, muted

    mixmonitor_id, muted = run(scenario)
    assert muted == (True, True)
    monitor = fake.channel(CHANNEL).mixmonitors[0]
    assert (monitor.muted_read, monitor.muted_write) == (False, True)
    sent = fake.received("MixMonitorMute")[0]
    assert {k: sent[k] for k in ("Channel", "Direction", "State", "MixMonitorID")} == {
        "Channel": CHANNEL, "Direction": "both", "State": "1", "MixMonitorID": mixmonitor_id}


def test_fake_mixmonitor_mute_by_id_mutes_that_one_and_without_id_all(fake):
    # As the real Asterisk 22 does (test_mixmonitormute_with_an_id_mutes_only_that_one_and_
    # without_one_mutes_all in tests/real_asterisk/test_asterisk_facts.py); the fake used to mute
    # the oldest MixMonitor whatever the id.
    fake.add_channel(CHANNEL)

    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        ids = [await client.mixmonitor(CHANNEL, f"/tmp/{n}.wav", "", f"V{n}") for n in range(2)]
        await client.mixmonitor_mute(CHANNEL, ids[1], True)
        by_id = [(m.muted_read, m.muted_write) for m in fake.channel(CHANNEL).mixmonitors]
        await client.action("MixMonitorMute", Channel=CHANNEL, Direction="both", State="1")
        all_of_them = [(m.muted_read, m.muted_write) for m in fake.channel(CHANNEL).mixmonitors]
        with pytest.raises(AMIError, match="^Cannot set mute flag$"):
            await client.mixmonitor_mute(CHANNEL, "0x7f00deadbeef", False)
        await client.stop()
        return by_id, all_of_them

    by_id, all_of_them = run(scenario)
    assert by_id == [(False, False), (True, True)]
    assert all_of_them == [(True, True), (True, True)]


def test_error_answers_become_ami_errors_with_the_message(fake):
    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        with pytest.raises(AMIError) as no_channel:
            await client.mixmonitor("Local/does-not-exist", "/tmp/x.wav", "", VARIABLE)
        with pytest.raises(AMIError) as unknown:
            await client.action("NoSuchAction")
        with pytest.raises(AMIError, match="No such channel"):
            await client.list_action("MixMonitor", Channel="Local/does-not-exist")
        with pytest.raises(ValueError):
            await client.action("Getvar", Variable="X\r\nAction: Hangup")
        still_fine = await client.action("Ping")
        await client.stop()
        return no_channel.value, unknown.value, still_fine

    no_channel, unknown, still_fine = run(scenario)
    assert str(no_channel) == "No such channel" and no_channel.action == "MixMonitor"
    assert no_channel.reply["Response"] == "Error" and no_channel.reply["Message"] == "No such channel"
    assert str(unknown) == (
        "Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show available commands.")
    assert still_fine["Ping"] == "Pong"
    assert not fake.received("Hangup")


# --- timeouts, drops, reconnects --------------------------------------------------------------


def test_stalled_action_times_out_and_is_forgotten(fake):
    async def scenario():
        client = client_for(fake, action_timeout=0.3)
        await client.start()
        await client.wait_connected(2)
        fake.stall("Ping")
        started = time.monotonic()
        with pytest.raises(AMITimeout, match="Ping"):
            await client.action("Ping")
        elapsed = time.monotonic() - started
        in_flight = client.in_flight
        fake.unstall()
        reply = await client.action("Ping")
        await client.stop()
        return elapsed, in_flight, reply

    elapsed, in_flight, reply = run(scenario)
    assert 0.25 <= elapsed < 1.0
    assert in_flight == 0 and reply["Ping"] == "Pong"


def test_drop_while_waiting_raises_unavailable_not_timeout(fake):
    async def scenario():
        client = client_for(fake, action_timeout=5.0)
        await client.start()
        await client.wait_connected(2)
        fake.stall()
        waiting = asyncio.create_task(client.action("Ping"))
        await until(lambda: len(fake.received("Ping")) == 1)
        started = time.monotonic()
        fake.drop_connections()
        with pytest.raises(AMIUnavailable):
            await waiting
        elapsed = time.monotonic() - started
        fake.unstall()
        await client.stop()
        return elapsed

    assert run(scenario) < 1.0


def test_reconnects_by_itself_after_asterisk_restarts(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="recording.ami")
    logins = []

    async def scenario():
        client = client_for(fake, backoff=(0.02, 0.05))
        client.on_connect(lambda: logins.append("sync"))

        async def hook():
            logins.append((await client.action("Ping"))["Ping"])

        client.on_connect(hook)
        await client.start()
        await client.wait_connected(2)
        await until(lambda: len(logins) == 2)
        await asyncio.to_thread(fake.stop)
        await until(lambda: not client.connected)
        started = time.monotonic()
        with pytest.raises(AMIUnavailable, match="not connected"):
            await client.action("Ping")
        refused_in = time.monotonic() - started
        await asyncio.sleep(0.3)  # several retries at this backoff
        await asyncio.to_thread(fake.start)
        await client.wait_connected(3)
        reply = await client.action("Ping")
        await until(lambda: len(logins) == 4)
        await client.stop()
        return refused_in, reply

    refused_in, reply = run(scenario)
    assert refused_in < 0.05
    assert reply["Ping"] == "Pong"
    assert sorted(logins, key=str) == ["Pong", "Pong", "sync", "sync"]
    assert len(fake.received("Login")) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "recording.ami"]
    assert sum("lost" in m for m in messages) == 1
    assert sum("restored" in m for m in messages) == 1


def test_a_stopped_client_can_start_again(fake):
    async def scenario():
        client = client_for(fake)
        await client.start()
        await client.wait_connected(2)
        await client.stop()
        with pytest.raises(AMIUnavailable, match="stopped"):
            await client.wait_connected(0.5)
        with pytest.raises(AMIUnavailable):
            await client.action("Ping")
        await client.start()
        await client.wait_connected(2)
        reply = await client.action("Ping")
        await client.stop()
        return reply

    assert run(scenario)["Ping"] == "Pong"
    assert [a["Action"] for a in fake.received()] == ["Login", "Logoff", "Login", "Ping", "Logoff"]


def test_action_before_start_is_unavailable_at_once():
    async def scenario():
        client = AMIClient("127.0.0.1", 9, "recording", "s3cret")
        with pytest.raises(AMIUnavailable, match="not running"):
            await client.action("Ping")
        with pytest.raises(AMIUnavailable):
            await client.wait_connected(0.1)

    run(scenario)


# --- events -----------------------------------------------------------------------------------


def test_events_reach_subscribers(fake):
    fake.add_channel(CHANNEL, uniqueid="1795825873.21")

    async def scenario():
        client = client_for(fake)
        plain, coroutine = [], []

        async def collect(event):
            await asyncio.sleep(0)
            coroutine.append(event)

        unsubscribe = client.subscribe(plain.append)
        client.subscribe(collect)
        client.subscribe(lambda event: 1 / 0)  # a broken subscriber harms no one
        await client.start()
        await client.wait_connected(2)
        assert fake.hangup(CHANNEL, cause=16) == 1
        await until(lambda: any(e["Event"] == "Hangup" for e in coroutine))
        unsubscribe()
        fake.emit_event("Newexten", {"Channel": CHANNEL})
        await until(lambda: any(e["Event"] == "Newexten" for e in coroutine))
        await client.stop()
        return plain, coroutine

    plain, coroutine = run(scenario)
    hangups = [e for e in plain if e["Event"] == "Hangup"]
    assert len(hangups) == 1
    assert (hangups[0]["Channel"], hangups[0]["Uniqueid"], hangups[0]["Cause"]) == (CHANNEL, "1795825873.21", "16")
    assert [e["Event"] for e in coroutine] == ["FullyBooted", "Hangup", "Newexten"]
    assert not any(e["Event"] == "Newexten" for e in plain)


# --- the secret -------------------------------------------------------------------------------


def test_secret_never_appears_in_logs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    async def scenario():
        client = client_for(fake, action_timeout=0.2)
        seen.append(repr(client))
        await client.start()
        await client.wait_connected(2)
        fake.stall("Ping")
        for call in (client.action("Ping"), client.action("NoSuchAction"), client.getvar("Local/x", "Y")):
            try:
                await call
            except Exception as exc:  # every failure's text is checked below
                seen.append(f"{exc!r} {exc}")
        fake.unstall()
        await asyncio.to_thread(fake.restart)
        await client.wait_connected(3)
        await client.stop()
        wrong = AMIClient("127.0.0.1", fake.port, "recording", SECRET + "x")
        await wrong.start()
        try:
            await wrong.wait_connected(2)
        except AMILoginRefused as exc:
            seen.append(f"{exc!r} {exc} {exc.reply}")
        await wrong.stop()

    run(scenario)
    assert len(seen) == 5
    for secret in (SECRET, SECRET + "x"):
        assert secret not in caplog.text
        assert all(secret not in text for text in seen)


# --- URL and parsing --------------------------------------------------------------------------


def test_from_url_decodes_and_defaults():
    assert parse_ami_url("ami://rec%40pbx:p%2Fw%3Ad@10.0.0.5") == ("10.0.0.5", 5038, "rec@pbx", "p/w:d")
    assert parse_ami_url("ami://u:s@[::1]:5039/") == ("::1", 5039, "u", "s")
    client = AMIClient.from_url("ami://u:hunter2@pbx.example:6000", action_timeout=1.0)
    assert (client.host, client.port, client.username, client.action_timeout) == ("pbx.example", 6000, "u", 1.0)
    assert "hunter2" not in repr(client)


@pytest.mark.parametrize("url", [
    "http://u:topsecret@h:5038",
    "ami://h:5038",
    "ami://u@h",
    "ami://u:topsecret@h:notaport",
    "ami://u:topsecret@h:70000",
    "ami://u:top/secret@h",
    "ami://u:topsecret@h/path",
    "ami://u:topsecret@h?x=1",
    "ami://:topsecret@h",
    "ami://u:topsecret@",
    "u:topsecret@h",
])
def test_bad_urls_are_config_errors_that_hide_the_secret(url):
    with pytest.raises(AMIConfigError) as error:
        AMIClient.from_url(url)
    assert isinstance(error.value, ValueError) and isinstance(error.value, ConfigError)
    assert "topsecret" not in str(error.value) and "top" not in str(error.value)


@pytest.mark.parametrize("lines, expected", [
    ([b"Response: Success", b"ActionID: 1"], {"Response": "Success", "ActionID": "1"}),
    ([b"AccountCode: ", b"BridgeId:"], {"AccountCode": "", "BridgeId": ""}),
    ([b"ApplicationData: agi://h/x?a=b: c"], {"ApplicationData": "agi://h/x?a=b: c"}),
    ([b"Output: line 1", b"Output: line 2"], {"Output": "line 1\nline 2"}),
    ([b"garbage without colon", b": no key", b"Key:value"], {"Key": "value"}),
    ([b"CallerIDName: Jos\xe9"], {"CallerIDName": "Jos\ufffd"}),
])
def test_parse_message(lines, expected):
    assert parse_message(lines) == expected


def _reader(data: bytes, limit: int = 2 ** 16) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def _messages(data: bytes, limit: int = 2 ** 16) -> list:
    reader = _reader(data, limit)
    out = []
    while (message := await read_message(reader)) is not None:
        out.append(message)
    return out


def test_read_message_framing():
    crlf = b"Response: Success\r\nActionID: 1\r\n\r\nEvent: Hangup\r\nCause: 16\r\n\r\n"
    bare_lf = crlf.replace(b"\r\n", b"\n")
    cut_short = b"Response: Success\r\nActionID: 2\r\n"
    stray_blanks = b"\r\n\r\nResponse: Goodbye\r\n\r\n"
    assert asyncio.run(_messages(crlf)) == asyncio.run(_messages(bare_lf)) == [
        {"Response": "Success", "ActionID": "1"}, {"Event": "Hangup", "Cause": "16"}]
    assert asyncio.run(_messages(cut_short)) == []
    assert asyncio.run(_messages(stray_blanks)) == [{"Response": "Goodbye"}]


def test_read_message_bounds():
    with pytest.raises(AMIProtocolError, match="line longer"):
        asyncio.run(_messages(b"Key: " + b"x" * 5000 + b"\r\n\r\n", limit=1024))
    with pytest.raises(AMIProtocolError, match="message longer"):
        asyncio.run(_messages(b"".join(b"K%d: %s\r\n" % (i, b"x" * 1000) for i in range(100)) + b"\r\n"))


def test_banner_and_action_format():
    assert parse_banner(b"Asterisk Call Manager/11.0.0\r\n") == "11.0.0"
    with pytest.raises(AMIProtocolError):
        parse_banner(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert format_action("Originate", "a-1", {"Channel": "Local/1@x", "Variable": ["A=1", "B=2"], "Data": None}) == (
        b"Action: Originate\r\nActionID: a-1\r\nChannel: Local/1@x\r\nVariable: A=1\r\nVariable: B=2\r\n\r\n")
    for bad in ({"Bad Key": "x"}, {"Key:": "x"}, {"Key": "a\nb"}, {"ActionID": "mine"}):
        with pytest.raises(ValueError):
            format_action("Ping", "a-2", bad)


def test_a_peer_that_is_not_asterisk_is_dropped_and_retried(caplog):
    caplog.set_level(logging.DEBUG, logger="recording.ami")

    async def scenario():
        connections = []

        async def impostor(reader, writer):
            connections.append(1)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AMIClient("127.0.0.1", port, "u", "s", backoff=(0.02, 0.05))
        await client.start()
        await until(lambda: len(connections) >= 3)
        assert not client.connected
        await client.stop()
        server.close()
        await server.wait_closed()

    run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not an Asterisk manager" in warnings[0]
