"""extensions.conf.sample is read with pyst2's Asterisk config parser, and its AGI() line is
played against the real server, so the sample a user copies is known to work."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import asterisk.config
import pytest

from recording.doors.fastagi import ARGUMENTS
from tests.recording.conftest import API_KEY

SAMPLE = Path(__file__).resolve().parents[2] / "extensions.conf.sample"


@pytest.fixture(scope="module")
def dialplan() -> dict[str, list[tuple[str, str]]]:
    config = asterisk.config.Config(str(SAMPLE))
    return {c.name: [(i.name, i.value.strip()) for i in c.items] for c in config.categories}


def agi_lines(dialplan, context: str) -> list[str]:
    return [v for _, v in dialplan[context] if "AGI(" in v]


def test_sample_parses_and_has_the_subroutine(dialplan):
    assert {"globals", "sub-recording-start", "from-pstn-example"} <= set(dialplan)
    globals_ = dict(dialplan["globals"])
    assert globals_["RECORDING_AGI"].startswith("agi://127.0.0.1:4573")
    assert "RECORDING_API_KEY" in globals_


def test_the_subroutine_branches_on_statuses_the_server_sets(dialplan):
    text = " ".join(v for _, v in dialplan["sub-recording-start"])
    branched = set(re.findall(r'"\$\{RECORDING_STATUS\}" = "([A-Z_]*)"', text))
    assert branched == {"STARTED", "ALREADY_RECORDING", ""}


def test_the_subroutine_url_uses_known_routes_and_argument_names(dialplan):
    (line,) = agi_lines(dialplan, "sub-recording-start")
    url = line.split("AGI(${RECORDING_AGI}/", 1)[1][:-1]
    route, _, query = url.partition("?")
    assert route == "recording/start"
    names = [pair.split("=", 1)[0] for pair in query.split("&")]
    assert all(name.lower() in ARGUMENTS for name in names)
    assert "apiKey" not in names


def test_the_subroutine_line_works_against_the_server(dialplan, asterisk, store):
    (line,) = agi_lines(dialplan, "sub-recording-start")
    store.add_user("fred")
    # What Asterisk substitutes for ${URIENCODE(${ARG1})} and ${URIENCODE(${ARG2})}.
    script = (line.split("${RECORDING_AGI}/", 1)[1][:-1]
              .replace("${URIENCODE(${ARG1})}", quote("CRM 7&8", safe=""))
              .replace("${URIENCODE(${ARG2})}", "fred"))

    call = asterisk.call(script, variables={"RECORDING_API_KEY": API_KEY})

    assert call.status == "STARTED", call.error
    (leg,) = store.find_legs(tag="CRM 7&8")
    assert (leg.owner, leg.ownership) == ("fred", "AGENT")


def test_empty_subroutine_arguments_mean_no_tag_and_no_agent(dialplan, asterisk, store):
    (line,) = agi_lines(dialplan, "sub-recording-start")
    script = line.split("${RECORDING_AGI}/", 1)[1][:-1].replace("${URIENCODE(${ARG1})}", "").replace(
        "${URIENCODE(${ARG2})}", "")

    call = asterisk.call(script, variables={"RECORDING_API_KEY": API_KEY})

    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert (call.status, leg.tag, leg.ownership) == ("STARTED", None, "DEFAULT")


def test_the_control_subroutine_and_the_h_extension_work_against_the_server(dialplan, asterisk, store):
    lines = {v.split("/recording/", 1)[1].split("?", 1)[0]: v for v in agi_lines(dialplan, "sub-recording-control")}
    assert set(lines) == {"stop", "pause", "resume"}
    (hangup_line,) = agi_lines(dialplan, "from-pstn-example")
    variables = {"RECORDING_API_KEY": API_KEY}

    def play(line: str, **kwargs):
        script = line.split("${RECORDING_AGI}/", 1)[1][:-1].replace("${URIENCODE(${ARG1})}", "")
        return asterisk.call(script, variables=variables, **kwargs)

    start = asterisk.call(f"recording/start?apiKey={API_KEY}")
    same = {"uniqueid": start.uniqueid}
    assert play(lines["pause"], **same).status == "PAUSED"
    assert play(lines["resume"], **same).status == "RESUMED"
    assert play(hangup_line, hangup_after=0, **same).status == "ENDED"
    assert play(lines["stop"], **same).status == "NOT_RECORDING"
    (leg,) = store.find_legs(unique_id=start.uniqueid)
    assert (leg.state, len(leg.pauses)) == ("ended", 1)
