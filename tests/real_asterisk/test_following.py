"""The recording follows the call, end to end on a real Asterisk: `recording-agi serve` (FastAGI,
HTTP and AMI) and calls of Local channels (tests/real_asterisk/transfers.py) through a blind
transfer of the agent the CRM recorded, a blind transfer of a caller the dialplan recorded, an
attended transfer (AMI Atxfer, then the first agent hangs up), a queue then a blind transfer,
an AMI Redirect of the caller, a pause handed on through a transfer, and `serve --workers 2`.
On SQLite and on PostgreSQL.

For each call: the legs the database holds (owners by the extensions' users, why each ended,
the leg each took over from, the call's Linkedid and tag), retrieval by tag, and what each
leg's file holds: the caller's tone and its own agent's tone, never another agent's (tone
amplitudes per 100 ms, tests/real_asterisk/wav.py), and which stretches of the caller's
timeline (the caller plays a clock, tests/real_asterisk/clock.py), so the audio missing between
two legs is measured: no more than one second of the caller's audio may be missing between two
legs (a correctness requirement of the product, asserted here). The figures are printed, and
appended as JSON lines to the file ``RECORDING_TEST_GAPS`` names, if set.

The calls of one backend run at once (each scenario has extensions of its own), so the part
costs about one call's time per backend.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import pairwise

import pytest

from recording.domain import mixmonitor_variable
from tests.http_client import HTTPClient
from tests.real_asterisk import transfers
from tests.real_asterisk.service import Serve, prepare_database
from tests.recording.conftest import API_KEY, _drop_postgres_database, _fresh_database

pytestmark = pytest.mark.slow

RETRIEVAL = "/njadmin/rest/RecordingAPI"
GAPS_ENV = "RECORDING_TEST_GAPS"
# name -> (scenario, its extensions' prefix); "workers" runs on `serve --workers 2`.
SCENARIOS = {
    "blind-crm": (transfers.blind_by_crm, "41"),
    "blind-dialplan": (transfers.blind_from_dialplan, "42"),
    "attended": (transfers.attended, "43"),
    "queue": (transfers.queue, "44"),
    "redirect": (transfers.redirect, "45"),
    "paused": (transfers.paused_transfer, "46"),
    "workers": (transfers.blind_from_dialplan, "47"),
    "attended-keys": (transfers.attended_by_keys, "48"),
}
# NOTE: a product issue (reported): the CRM recorded the agent's channel (by extension); the
# attended-transfer feature stops passing the caller's audio to the agent's channel when its code
# is pressed, and the agent's part ends only when the agent leaves for the consultation, once the
# target is typed: the caller's audio in between (seconds, as a person types) is in no leg.
TYPED = pytest.mark.xfail(strict=True, reason="the caller's audio while the agent recorded by extension types an "
                                              "attended transfer's target is in no leg (reported)")
MEASURED = ["blind-crm", "blind-dialplan", "attended", "queue", "redirect", "workers",
            pytest.param("attended-keys", marks=TYPED)]
MOST = 0.8  # of a leg's 100-ms windows, in which its own agent's and the caller's tones are heard
# The most of another agent's audio a leg may hold: the next agent may be talking with the caller
# before the service has heard of the change and muted the previous part's recording (a phone
# that answers within milliseconds of a transfer, as these Local channels do; or the caller moved
# into an attended transfer's consultation). Measured: 0 to 0.04 s (docs/transfers.md).
OTHERS = 0.1


@pytest.fixture(scope="module")
def workers(pbx, database, tmp_path_factory):
    """`serve --workers 2`, on a database of its own (the module's service hears the same
    events, and has no leg of that call to follow)."""
    backend = "sqlite" if database.startswith("sqlite") else "postgresql"
    url, name = _fresh_database(backend, tmp_path_factory.mktemp("db-workers"))
    prepare_database(url)
    transfers.attach_agents(url)
    service = Serve(url, tmp_path_factory.mktemp("serve-workers"), pbx, workers=2)
    yield service
    service.stop()
    if name:
        _drop_postgres_database(name)


@pytest.fixture(scope="module")
def followed(pbx, database, with_ami, workers):
    """Every scenario's outcome (or the exception it raised), the calls made at once."""
    transfers.set_up(pbx)
    transfers.attach_agents(database)
    results = {}
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        for name, (scenario, prefix) in SCENARIOS.items():
            service = workers if name == "workers" else with_ami
            results[name] = pool.submit(scenario, pbx, service, prefix, f"follow-{name}")
            time.sleep(0.2)
        return {name: future.exception() or future.result() for name, future in results.items()}


def outcome_of(followed, name: str) -> transfers.Outcome:
    """The scenario's outcome, its legs in the order they took over from each other.

    NOTE: a product issue (reported): with several processes a leg's start is the time the
    process that took it over heard the change, and processes hear events some milliseconds
    apart, so a part shorter than that (a Local phone answers within 2 ms of a blind transfer)
    can end before it starts, and the database's order (by start) puts it after the leg that
    followed it. Retrieval is checked in the database's order (assert_retrieval)."""
    found = followed[name]
    if isinstance(found, BaseException):
        raise found
    by_previous = {leg.view.follows: leg for leg in found.legs}
    ordered = [by_previous.pop(None)] if None in by_previous else []
    while ordered and ordered[-1].view.id in by_previous:
        ordered.append(by_previous.pop(ordered[-1].view.id))
    return replace(found, legs=ordered + list(by_previous.values()))


# -- what every followed call must show ------------------------------------------------------

def assert_followed(outcome: transfers.Outcome, expected: list[tuple], audio: bool = True) -> None:
    """The legs are ``expected`` (owner, ownership, ended_by, the agent's extension talking in
    it or None), each taking over from the one before at the moment it ended, every leg after
    the first on the caller's channel with the call's Linkedid, every leg with the tag; the
    MixMonitor running just before the caller hung up is the last leg's."""
    legs = [leg.view for leg in outcome.legs]
    assert outcome.path() == [row[:3] for row in expected], [
        (leg.leg, leg.part, leg.owner, leg.ended_by, leg.start.isoformat(), leg.end.isoformat()) for leg in legs]
    assert {leg.tag for leg in legs} == {outcome.tag}
    assert [leg.follows for leg in legs] == [None] + [leg.id for leg in legs[:-1]]
    assert all(later.start == earlier.end for earlier, later in pairwise(legs))
    assert all(leg.channel == outcome.call.anchor and leg.linkedid == outcome.call.linkedid for leg in legs[1:])
    parts = [leg.part for leg in legs[1:]]
    assert parts == sorted(set(parts)), parts
    assert list(outcome.running_before_hangup.values()) == [legs[-1].file.removesuffix(".wav")]
    if audio:
        assert_audio(outcome, [row[3] for row in expected])


def assert_audio(outcome: transfers.Outcome, extensions: list[str | None]) -> None:
    """Each leg's file: the caller's tone and its agent's tone (in most of its windows), and of
    another agent's tone no more than the moment the service takes to hear of a change (OTHERS);
    a leg with no agent holds no more of any agent's."""
    for leg, extension in zip(outcome.legs, extensions):
        own = transfers.TONES[extension[-1]] if extension else None
        where = (leg.view.id, leg.view.owner, leg.loudest)
        assert sum(leg.others(own).values()) <= OTHERS, (where, leg.others(own))
        if extension:
            assert leg.exists and leg.windows >= 10, where
            assert leg.caller >= MOST * leg.windows and leg.agents[own] >= MOST * leg.windows, \
                (where, leg.caller, leg.agents, leg.windows)
            assert leg.spans, where


def assert_retrieval(service: Serve, outcome: transfers.Outcome, in_order: bool = True) -> None:
    """retrieveMetaData by the tag: every leg in order for a Recording Manager (the order in
    which they took over from each other, unless not ``in_order``: see outcome_of), each
    agent's own legs only for that agent."""
    http = HTTPClient(service.http_port)

    def found(login):
        answer = http.get(f"{RETRIEVAL}/retrieveMetaData", tag=outcome.tag, apiKey=API_KEY, loginName=login)
        assert answer.status == 200, answer.body
        return [entry["RecordingId"] for entry in answer.json]

    stored = service.legs(tag=outcome.tag)
    assert found("boss") == [leg.id for leg in stored] and len(stored) == len(outcome.legs)
    if in_order:
        assert [leg.id for leg in stored] == [leg.view.id for leg in outcome.legs]
    for login in transfers.USERS.values():
        assert found(login) == [leg.id for leg in stored if leg.owner == login]


# -- the scenarios -------------------------------------------------------------------------

def test_the_crm_records_410_who_blind_transfers_to_411(followed, with_ami):
    outcome = outcome_of(followed, "blind-crm")

    # The first leg is on 410's own channel (the CRM named the extension); the next ones on
    # the caller's: 410's recording ends with 410's channel, 411's talk is recorded.
    assert outcome.notes["started"]["status"] == "STARTED"
    assert outcome.legs[0].view.channel.startswith("Local/410@")
    assert_followed(outcome, [("fred", "EXTENSION", "transfer", "410"), (None, "DEFAULT", "answer", None),
                              ("ann", "EXTENSION", "hangup", "411")])
    assert_retrieval(with_ami, outcome)


def test_the_dialplan_records_the_caller_who_is_blind_transferred(followed, with_ami):
    outcome = outcome_of(followed, "blind-dialplan")

    # DEFAULT while 420 rings (the dialplan's AGI() before Dial), 420's talk, DEFAULT while 421
    # rings, 421's talk: four legs on the caller's channel instead of one holding both agents.
    assert outcome.legs[0].view.channel == outcome.call.anchor
    assert_followed(outcome, [(None, "DEFAULT", "answer", None), ("fred", "EXTENSION", "transfer", "420"),
                              (None, "DEFAULT", "answer", None), ("ann", "EXTENSION", "hangup", "421")])
    assert_retrieval(with_ami, outcome)


def test_an_attended_transfer_by_atxfer_then_the_first_agent_hangs_up(followed, with_ami):
    outcome = outcome_of(followed, "attended")

    # 430 puts the caller on hold and consults 431 (the caller alone: a DEFAULT leg; the
    # consultation is in no leg), hangs up, and the caller talks with 431. 430's recording was
    # on 430's channel, which went into the consultation: it holds no 431 tone.
    assert outcome.notes["atxfer"] == "Atxfer successfully queued"
    assert_followed(outcome, [("fred", "EXTENSION", "hold", "430"), (None, "DEFAULT", "transfer", None),
                              ("ann", "EXTENSION", "hangup", "431")])
    hold = outcome.legs[1]
    assert hold.caller >= MOST * hold.windows and hold.windows >= 10
    assert_retrieval(with_ami, outcome)


def test_an_attended_transfer_by_the_agents_phone_keys(followed, with_ami):
    outcome = outcome_of(followed, "attended-keys")
    first, hold, talk = outcome.legs

    assert_followed(outcome, [("fred", "EXTENSION", "hold", "480"), (None, "DEFAULT", "transfer", None),
                              ("ann", "EXTENSION", "hangup", "481")], audio=False)
    assert_audio(replace(outcome, legs=[hold, talk]), [None, "481"])
    # 480's leg: 480 all along, no 481, and the caller only until 480 pressed *2 (the issue
    # the gap test shows: the caller is in no leg from then until 480 leaves for 481).
    assert first.agents[400] >= MOST * first.windows and not first.others(400)
    assert transfers.TALK <= max(s.end for s in first.spans) <= transfers.TALK + 1.0
    assert_retrieval(with_ami, outcome)


def test_a_queue_then_the_member_who_answered_blind_transfers(followed, with_ami):
    outcome = outcome_of(followed, "queue")
    member = outcome.notes["member"]

    assert member in ("440", "441")
    assert_followed(outcome, [(None, "DEFAULT", "answer", None), (transfers.owner_of(member), "EXTENSION", "transfer",
                                                                   member),
                              (None, "DEFAULT", "answer", None), ("joe", "EXTENSION", "hangup", "442")])
    assert_retrieval(with_ami, outcome)


def test_a_redirect_of_the_caller_the_crm_recorded_for_fred(followed, with_ami):
    outcome = outcome_of(followed, "redirect")

    # Recorded by unique id for fred (agentLoginName) while 450 talks; Redirect to 451.
    assert_followed(outcome, [("fred", "AGENT", "redirect", "450"), (None, "DEFAULT", "answer", None),
                              ("ann", "EXTENSION", "hangup", "451")])
    assert_retrieval(with_ami, outcome)


def test_a_pause_is_handed_on_until_the_new_agents_extension_resumes(followed):
    outcome = outcome_of(followed, "paused")
    call = outcome.call
    first, waiting, talk = outcome.legs
    paused_at, resumed_at = call.caller_time(call.acted["pause"]), call.caller_time(call.acted["resume"])

    assert outcome.path() == [("fred", "EXTENSION", "transfer"), (None, "DEFAULT", "answer"),
                              ("ann", "EXTENSION", "hangup")]
    assert [p.method for p in first.view.pauses] == ["mute"]
    # Nothing recorded on the caller's channel while the pause was handed on: no MixMonitor, no
    # file for the leg while 461 rang; 461's resume (by 461's extension) resumed 461's leg.
    assert outcome.notes["running_while_paused"] == {}
    assert [p.method for p in waiting.view.pauses] == ["restart"] and not waiting.exists
    assert outcome.notes["resumed"]["recordingId"] == talk.view.id
    assert [p.method for p in talk.view.pauses] == ["restart"] and talk.view.pauses[0].resumed_at is not None
    # 460's file: the caller until the pause, silence after. 461's: the caller and 461 from the
    # resume on, nothing of the time before it.
    assert max(s.end for s in first.spans) == pytest.approx(paused_at, abs=0.3)
    assert not first.others(400) and first.agents[400] >= 5
    assert resumed_at - 0.05 <= min(s.start for s in talk.spans) <= resumed_at + 0.5
    assert not talk.others(600) and talk.agents[600] >= MOST * talk.windows and talk.windows >= 10


def test_two_workers_record_each_part_once(followed, workers):
    outcome = outcome_of(followed, "workers")

    assert_followed(outcome, [(None, "DEFAULT", "answer", None), ("fred", "EXTENSION", "transfer", "470"),
                              (None, "DEFAULT", "answer", None), ("ann", "EXTENSION", "hangup", "471")])
    # Both workers heard every event; one MixMonitor was started per leg on the caller's
    # channel, none twice (each leg's i() variable was set once), and the log of the two has
    # one take-over per part change.
    started = [e["Variable"] for e in outcome.call.events(Event="VarSet", Channel=outcome.call.anchor)
               if e["Variable"].startswith("RECORDING_MIXMON_") and e.get("Value")]
    assert sorted(started) == sorted(mixmonitor_variable(leg.view.id) for leg in outcome.legs if leg.exists)
    took_over = [line for line in workers.log if f"of {outcome.call.anchor_uniqueid} for" in line
                 and "ended by" in line]
    assert len(took_over) == len(outcome.legs) - 1, took_over
    assert_retrieval(workers, outcome, in_order=False)


# -- the gap between legs ------------------------------------------------------------------

@pytest.mark.parametrize("name", MEASURED)
def test_no_more_than_a_second_of_the_callers_audio_is_missing_between_legs(followed, database, name):
    outcome = outcome_of(followed, name)
    boundaries = outcome.boundaries()
    holes = outcome.holes()
    figures = {"scenario": name, "database": database.partition(":")[0], "boundaries": boundaries, "holes": holes,
               "tones": [{tone: round(seconds, 3) for tone, seconds in leg.heard.items() if seconds}
                         for leg in outcome.legs]}
    print(json.dumps(figures))
    if os.environ.get(GAPS_ENV):
        with open(os.environ[GAPS_ENV], "a") as out:
            out.write(json.dumps({**figures, "at": time.time()}) + "\n")

    # Every agent's leg was placed on the caller's timeline (the measure cannot come out empty).
    assert len(boundaries) >= 1 and all(leg.spans for leg in outcome.legs if leg.view.ownership != "DEFAULT")
    assert all(b["missing"] <= 1.0 for b in boundaries), boundaries
    assert all(end - start <= 1.0 for start, end in holes), holes
