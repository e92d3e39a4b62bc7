"""recording/start end to end: the fake Asterisk calls the real server over TCP, and the test
asserts what Asterisk saw (commands, channel variables, MixMonitors) and what the database holds."""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote as urlquote

import pytest

from agi.protocol import split_command
from recording.domain import channel_extension
from tests.service_runner import RunningService
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until

START = f"recording/start?apiKey={API_KEY}"


def exec_data(call) -> list[list[str]]:
    return [split_command(c) for c in call.commands if c.startswith("EXEC MixMonitor")]


def test_start_records_the_channel_and_tells_the_dialplan(asterisk, store):
    call = asterisk.call(f"{START}&tag=CRM-22", channel="PJSIP/410-0000001a")

    assert call.status == "STARTED"
    assert call.error == ""
    (monitor,) = call.mixmonitors
    assert call.variables["RECORDING_FILE"] == monitor.file
    assert re.fullmatch(rf"/var/spool/asterisk/monitor/\d{{4}}/\d\d/\d\d/{re.escape(call.uniqueid)}-1-[0-9a-f]{{8}}\.wav", monitor.file)
    (leg,) = store.find_legs(tag="CRM-22")
    assert leg.id == call.variables["RECORDING_ID"]
    # The MixMonitor id is kept by the channel, in a variable of the leg's own.
    assert monitor.options == f"bi(RECORDING_MIXMON_{leg.id})"
    assert call.variables[f"RECORDING_MIXMON_{leg.id}"] == monitor.id
    assert (leg.unique_id, leg.leg, leg.channel, leg.extension) == (call.uniqueid, 1, "PJSIP/410-0000001a", "410")
    assert (leg.file, leg.mixmonitor_id, leg.state, leg.source) == (monitor.file, None, "recording", "agi")
    assert (leg.tag, leg.external_reference) == ("CRM-22", "CRM-22")
    assert (leg.ownership, leg.owner) == ("DEFAULT", None)
    assert call.server_closed
    # Three commands, each after the reply before it (res_agi would leave a pipelined one unread).
    assert [c.split(" ", 2)[:2] for c in call.commands] == [["EXEC", "MixMonitor"], ["GET", "VARIABLE"], ["EXEC", "MSet"]]
    assert call.stalled == 0


def test_exec_sends_one_quoted_data_word_without_dialplan_variables(asterisk):
    call = asterisk.call(f"{START}&tag=x")

    (words,) = exec_data(call)
    # NOTE: EXEC keeps only one data word and does not expand ${...}; a second word (the
    # options) would be silently dropped by Asterisk.
    assert len(words) == 3
    assert "${" not in words[2]
    assert re.search(r",bi\(RECORDING_MIXMON_[0-9a-f]{32}\)$", words[2])


def test_every_result_variable_is_set_so_stale_values_do_not_linger(asterisk):
    stale = {"RECORDING_ERROR": "old failure", "RECORDING_ID": "old", "RECORDING_FILE": "/old.wav"}
    call = asterisk.call(START, variables=stale)

    assert call.status == "STARTED"
    assert call.variables["RECORDING_ERROR"] == ""
    assert call.variables["RECORDING_ID"] not in ("", "old")


@pytest.mark.parametrize(
    "script,args",
    [
        (f"recording/start?tag=a%20b%26c%3Dd&apiKey={API_KEY}", ()),
        ("recording/start", (f"apiKey={API_KEY}", "tag=a b&c=d")),
        (f"recording/start?TAG=a+b%26c%3Dd&APIKEY={API_KEY}", ()),
        (f"recording/start?apikey={API_KEY}", ("Tag=a b&c=d",)),
    ],
    ids=["url-encoded", "agi-args", "names-any-case", "mixed"],
)
def test_arguments_from_query_string_and_agi_args(asterisk, store, script, args):
    call = asterisk.call(script, args=args)

    assert call.status == "STARTED", call.error
    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert leg.tag == "a b&c=d"


@pytest.mark.parametrize(
    "script,args,message",
    [
        (f"{START}&tga=1", (), "unknown argument 'tga'"),
        (START, ("first arg",), "AGI argument 1 is not key=value"),
        (f"{START}&tag=a", ("tag=b",), "tag is given twice"),
        (f"{START}&tag=" + "x" * 256, (), "tag is longer than 255"),
        (f"{START}&tag=%0Aevil", (), "tag must be UTF-8 text without control characters"),
        (f"{START}&tag=%FF%FE", (), "tag must be UTF-8 text"),
    ],
    ids=["unknown-name", "positional", "conflict", "too-long", "newline", "not-utf8"],
)
def test_bad_arguments_are_invalid_and_record_nothing(asterisk, store, script, args, message):
    call = asterisk.call(script, args=args)

    assert call.status == "INVALID"
    assert message in call.error
    assert call.mixmonitors == []
    assert store.find_legs() == []


def test_the_capture_with_extra_positional_arguments_is_refused_clearly(asterisk):
    # The ext102 capture: AGI(agi://.../recording/start?...,first arg,second,"quoted,with comma",${EXTEN})
    call = asterisk.call(f"{START}&tag=22", args=("first arg", "second", "quoted,with comma", "102"))

    assert (call.status, call.mixmonitors) == ("INVALID", [])
    assert "not key=value" in call.error


@pytest.mark.parametrize("script", ["recording/start", "recording/start?apiKey=wrong", "recording/start?apiKey="])
def test_missing_or_wrong_key_is_denied_and_writes_nothing(asterisk, store, script, caplog):
    with caplog.at_level(logging.INFO):
        call = asterisk.call(script + "&tag=t" if "?" in script else script + "?tag=t")

    assert call.status == "DENIED"
    assert call.error
    assert call.mixmonitors == []
    assert store.find_legs() == []
    audit = [r for r in caplog.records if r.name == "recording.audit"]
    assert len(audit) == 1 and call.uniqueid in audit[0].getMessage()


def test_key_from_channel_variable_when_not_in_the_url(asterisk, store):
    call = asterisk.call("recording/start?tag=t", variables={"RECORDING_API_KEY": API_KEY})

    assert call.status == "STARTED"
    assert "GET VARIABLE RECORDING_API_KEY" in call.commands


def test_key_in_url_is_preferred_to_the_channel_variable(asterisk):
    call = asterisk.call(START, variables={"RECORDING_API_KEY": "wrong"})

    assert call.status == "STARTED"
    assert not any("RECORDING_API_KEY" in c for c in call.commands)


def test_a_new_key_is_taken_without_restart(asterisk, store):
    from recording import apikey

    store.set_api_key_hash(apikey.hash_key("rotated"))

    assert asterisk.call("recording/start?apiKey=rotated").status == "STARTED"
    assert asterisk.call(START).status == "DENIED"


def test_agent_login_owns_the_leg(asterisk, store):
    store.add_user("Fred")

    call = asterisk.call(f"{START}&agentLoginName=fred")

    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert (call.status, leg.ownership, leg.owner) == ("STARTED", "AGENT", "Fred")


def test_unknown_agent_is_invalid_and_records_nothing(asterisk, store):
    call = asterisk.call(f"{START}&agentLoginName=nobody&tag=t")

    assert call.status == "INVALID"
    assert "unknown agent 'nobody'" in call.error
    assert call.mixmonitors == [] and store.find_legs() == []


def test_user_attached_to_the_extension_owns_the_leg(asterisk, store):
    store.add_user("alice")
    store.attach_extension("410", "alice")

    call = asterisk.call(START, channel="PJSIP/410-00000021")

    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert (leg.ownership, leg.owner) == ("EXTENSION", "alice")


def test_nobody_attached_gives_default_ownership(asterisk, store):
    store.add_user("alice")
    store.attach_extension("999", "alice")

    call = asterisk.call(START, channel="PJSIP/410-00000021")

    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert (leg.ownership, leg.owner) == ("DEFAULT", None)


@pytest.mark.parametrize("target", ["own-uniqueid", "410"])
def test_exten_or_unique_id_naming_this_channel_is_accepted(asterisk, target):
    uniqueid = "1795825765.777" + target[:1]
    value = uniqueid if target == "own-uniqueid" else target
    call = asterisk.call(f"{START}&extenOrUniqueId={value}", uniqueid=uniqueid, channel="PJSIP/410-0000001a")

    assert call.status == "STARTED", call.error


def test_exten_or_unique_id_of_another_channel_is_invalid(asterisk, store):
    call = asterisk.call(f"{START}&extenOrUniqueId=411", channel="PJSIP/410-0000001a")

    assert call.status == "INVALID"
    assert "use the HTTP API" in call.error
    assert call.mixmonitors == [] and store.find_legs() == []


def test_unknown_route_gets_a_clear_error(asterisk):
    call = asterisk.call(f"recording/strat?apiKey={API_KEY}")

    assert call.status == "INVALID"
    assert "unknown FastAGI route 'recording/strat'" in call.error
    assert "recording/start" in call.error
    assert call.mixmonitors == []


def test_second_start_on_the_same_call_answers_already_recording(asterisk, store):
    first = asterisk.call(f"{START}&tag=A")
    second = asterisk.call(f"{START}&tag=A", uniqueid=first.uniqueid)

    assert (first.status, second.status) == ("STARTED", "ALREADY_RECORDING")
    assert second.variables["RECORDING_ID"] == first.variables["RECORDING_ID"]
    assert second.variables["RECORDING_FILE"] == first.variables["RECORDING_FILE"]
    assert second.mixmonitors == []
    assert len(store.find_legs(unique_id=first.uniqueid)) == 1


def test_a_new_tag_on_an_already_recorded_call_is_not_lost(asterisk, store):
    first = asterisk.call(f"{START}&tag=A")
    second = asterisk.call(f"{START}&tag=B", uniqueid=first.uniqueid)

    assert second.status == "ALREADY_RECORDING"
    (by_old,) = store.find_legs(tag="A")
    (by_new,) = store.find_legs(tag="B")
    assert by_old.id == by_new.id == first.variables["RECORDING_ID"]
    assert (by_new.tag, by_new.external_reference) == ("A", "B")


def test_concurrent_starts_for_one_call_give_one_leg(asterisk, store):
    uniqueid = "1795825765.4242"
    calls = []

    def place():
        calls.append(asterisk.call(f"{START}&tag=race", uniqueid=uniqueid))

    threads = [threading.Thread(target=place) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    statuses = sorted(c.status for c in calls)
    assert statuses == ["ALREADY_RECORDING"] * 7 + ["STARTED"]
    assert sum(len(c.mixmonitors) for c in calls) == 1
    assert len({c.assigned["RECORDING_ID"] for c in calls}) == 1
    assert len(store.find_legs(unique_id=uniqueid)) == 1


def test_caller_hanging_up_before_the_start_still_stores_leg_and_tag(asterisk, store):
    call = asterisk.call(f"{START}&tag=gone", hangup_after=0)

    assert call.status == "STARTED"
    (leg,) = store.find_legs(tag="gone")
    assert leg.state == "ended" and leg.end is not None


def test_caller_hanging_up_mid_session_still_stores_leg_and_tag(asterisk, store):
    # HANGUP arrives after the EXEC reply, in front of the GET VARIABLE reply.
    call = asterisk.call(f"{START}&tag=mid", hangup_after=1)

    assert call.hung_up and call.status == "STARTED"
    (leg,) = store.find_legs(tag="mid")
    assert (leg.state, leg.ended_by) == ("ended", "hangup") and leg.end is not None
    assert call.variables[f"RECORDING_MIXMON_{leg.id}"] == call.mixmonitors[0].id


def test_caller_hanging_up_as_the_result_is_told_leaves_the_leg_to_the_h_extension(asterisk, store):
    # HANGUP arrives after the id was read: the leg records until recording/hangup (the h
    # extension), a manager's Hangup event or the sweeper ends it.
    call = asterisk.call(f"{START}&tag=late-hangup", hangup_after=2)

    assert call.hung_up and call.status == "STARTED"
    (leg,) = store.find_legs(tag="late-hangup")
    assert leg.state == "recording"
    assert asterisk.call(f"recording/hangup?apiKey={API_KEY}", uniqueid=call.uniqueid).status == "ENDED"
    assert store.find_legs(tag="late-hangup")[0].state == "ended"


def test_connection_cut_after_mixmonitor_still_stores_leg_and_tag(asterisk, store, service):
    call = asterisk.call(f"{START}&tag=cut", drop_after=1)

    assert call.ended_by == "dropped" and len(call.mixmonitors) == 1
    # The leg is written while MixMonitor runs, and settled as ended once the cut is seen.
    legs = wait_until(lambda: [leg for leg in store.find_legs(tag="cut") if leg.state != "recording"], 5,
                      "the cut call's leg ended in the database")
    assert [leg.state for leg in legs] == ["ended"]
    # The server is unharmed.
    assert asterisk.call(START).status == "STARTED"


def test_mixmonitor_missing_from_asterisk_is_an_error(asterisk, store):
    asterisk.mixmonitor_loaded = False

    call = asterisk.call(f"{START}&tag=t")

    assert call.status == "ERROR"
    assert "app_mixmonitor" in call.error
    # The leg was written while MixMonitor was asked for; it is settled, not left active.
    (leg,) = store.find_legs()
    assert (leg.state, leg.ended_by, leg.tag) == ("failed", "mixmonitor", "t") and leg.end is not None


def test_mixmonitor_failure_is_an_error(asterisk, store):
    call = asterisk.call(f"{START}&tag=t", mixmonitor_result=-1)

    assert call.status == "ERROR" and "MixMonitor failed to start" in call.error
    (leg,) = store.find_legs()
    assert (leg.state, leg.ended_by) == ("failed", "mixmonitor") and leg.end is not None
    # Not active: the next start on the call records.
    assert asterisk.call(f"{START}&tag=t2", uniqueid=leg.unique_id).status == "STARTED"


def test_database_refusing_the_write_stops_the_recording_and_writes_nothing(asterisk, store, refused_legs):
    call = asterisk.call(f"{START}&tag=refused")

    assert call.status == "ERROR"
    assert "could not be stored" in call.error
    assert [m.id for m in call.stopped] == [m.id for m in call.mixmonitors]
    assert store.find_legs() == []
    assert count(store, "call_records") == 0


def test_the_api_key_never_reaches_the_log(asterisk, store, caplog):
    with caplog.at_level(logging.DEBUG):
        asterisk.call(f"{START}&tag=t")
        asterisk.call(f"recording/nope?apiKey={API_KEY}")
        asterisk.call(f"{START}&tga=1")
        asterisk.call(f"recording/start?apiKey={urlquote(API_KEY)}x")

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "recording/start" in text
    assert API_KEY not in text


# -- helpers ---------------------------------------------------------------------------------

def count(store, table: str) -> int:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.fixture
def refused_legs(store):
    """Makes the database refuse every new leg, as a full disk or a broken constraint would."""
    from sqlalchemy import text

    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text(
                "CREATE OR REPLACE FUNCTION refuse_leg() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'legs refused by test'; END $$ LANGUAGE plpgsql"
            ))
            conn.execute(text(
                "CREATE TRIGGER refuse_leg BEFORE INSERT ON recording_legs "
                "FOR EACH ROW EXECUTE FUNCTION refuse_leg()"
            ))
        else:
            conn.execute(text(
                "CREATE TRIGGER refuse_leg BEFORE INSERT ON recording_legs "
                "BEGIN SELECT RAISE(ABORT, 'legs refused by test'); END"
            ))
    yield
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("DROP TRIGGER refuse_leg ON recording_legs"))
        else:
            conn.execute(text("DROP TRIGGER refuse_leg"))


def test_mixmonitor_sent_but_never_answered_still_leaves_its_leg(store, settings):
    from tests.service_runner import RunningService

    with RunningService(settings.with_(reply_timeout=0.5)) as running:
        call = FakeAsterisk(running.port).call(f"{START}&tag=silent", reply_delay=3.0, delay_only="EXEC")

    (leg,) = store.find_legs(tag="silent")
    assert leg.state == "recording" and leg.mixmonitor_id is None
    assert leg.file == call.mixmonitors[0].file


@pytest.mark.parametrize("channel", ["PJSIP/trunk(1-0000001a", "PJSIP/a,b[c-0000001b", 'PJSIP/q"u\\o-0000001c'])
def test_a_file_name_with_commas_brackets_or_quotes_reaches_mixmonitor_whole(store, settings, channel):
    """MixMonitor parses its data with Asterisk's argument parser: a file name's comma would end
    it, an unbalanced bracket would swallow the options and the i() behind it."""
    template = "/var/spool/asterisk/monitor/{extension}/{uniqueid}-{id:.8}.wav"
    with RunningService(settings.with_(monitor_template=template)) as running:
        call = FakeAsterisk(running.port).call(f"recording/start?apiKey={API_KEY}", channel=channel)

    assert call.status == "STARTED", call.error
    (monitor,) = call.mixmonitors
    extension = channel_extension(channel)
    assert monitor.file == call.variables["RECORDING_FILE"]
    assert monitor.file.startswith(f"/var/spool/asterisk/monitor/{extension}/")
    assert monitor.options == f"bi(RECORDING_MIXMON_{call.variables['RECORDING_ID']})"
