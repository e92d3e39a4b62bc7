"""The dialplan's key is not a master key: retrieval, play and holds over the HTTP API prove the
user with the user's own token, and take the apiKey's word (loginName) only where the site
trusts its CRM with every user's rights: a database in use before migration 0006, or
RECORDING_TRUST_CRM_LOGIN_NAME=true."""

from __future__ import annotations

import logging

import pytest

from recording.storage.people import People
from recording.storage.store import Store
from tests.http_client import HTTPClient
from tests.recording.conftest import API_KEY
from tests.recording.pages_support import stored_leg
from tests.service_runner import RunningService

RETRIEVAL = "/njadmin/rest/RecordingAPI"


def token_of(cli, login: str, *more: str) -> str:
    code, out, err = cli("users", "token", login, *more)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("rat_") and len(token) > 40 and "shown only this once" in err
    return token


def by_tag(http, tag: str, token: str | None = None, **query):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.request("GET", f"{RETRIEVAL}/retrieveMetaData", query={"tag": tag, **query}, headers=headers)


@pytest.fixture
def api(store, people, files_settings):
    """The HTTP API as a new install has it: the CRM is not trusted to say who asks."""
    with RunningService(files_settings.with_(http_listen="127.0.0.1:0", trust_crm_login_name="")) as running:
        yield HTTPClient(running.app.http_port)


def test_a_new_install_does_not_take_the_apikey_for_who_asks(api, store):
    stored_leg(store, agent=store.find_user("fred"), tag="CRM-1")

    answer = by_tag(api, "CRM-1", apiKey=API_KEY, loginName="boss")
    wrong_key = by_tag(api, "CRM-1", apiKey="guess", loginName="boss")

    assert answer.status == 403 and "the apiKey does not prove who asks" in answer.body
    assert "RECORDING_TRUST_CRM_LOGIN_NAME=true" in answer.body
    assert wrong_key.status == 403 and "apiKey is not valid" in wrong_key.body
    assert People(store).crm_trusted() is False


def test_a_token_names_its_user_and_sees_what_that_user_may(api, store, cli):
    fred, ann = store.find_user("fred"), store.find_user("ann")
    freds = stored_leg(store, agent=fred, tag="CRM-2")
    stored_leg(store, agent=ann, tag="CRM-2")
    freds_token, boss_token = token_of(cli, "fred", "--label", "crm"), token_of(cli, "boss")

    as_fred = by_tag(api, "CRM-2", freds_token)
    as_boss = by_tag(api, "CRM-2", boss_token)
    named_other = by_tag(api, "CRM-2", freds_token, loginName="boss")
    named_self = by_tag(api, "CRM-2", freds_token, loginName="FRED")
    not_bearer = api.request("GET", f"{RETRIEVAL}/retrieveMetaData", query={"tag": "CRM-2"},
                             headers={"Authorization": f"Basic {freds_token}"})

    assert as_fred.status == 200 and [e["RecordingId"] for e in as_fred.json] == [freds]
    assert as_boss.status == 200 and len(as_boss.json) == 2
    assert named_other.status == 403 and "the token is fred's" in named_other.body
    assert named_self.status == 200
    assert not_bearer.status == 400 and "Authorization must be 'Bearer TOKEN'" in not_bearer.body
    code, out, _ = cli("users", "token", "fred", "--list")
    assert code == 0 and out.count("\n") == 1 and "in use" in out and "crm" in out and freds_token not in out
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT token_hash FROM api_tokens").scalars().all()
    assert freds_token not in stored and all(len(value) == 64 for value in stored)


def test_a_revoked_token_is_refused_and_wrong_tokens_are_slowed(store, people, files_settings, cli, caplog):
    limits = {"apikey_failure_threshold": 2, "apikey_failure_max_delay": 0.2}
    token = token_of(cli, "boss")
    with RunningService(files_settings.with_(http_listen="127.0.0.1:0", **limits)) as running:
        http = HTTPClient(running.app.http_port)
        before = by_tag(http, "X", token)
        assert cli("users", "token", "boss", "--revoke", "all")[1].strip() == "1 token of boss revoked"
        after = by_tag(http, "X", token)
        guesses = [by_tag(http, "X", "rat_" + "x" * 43).status for _ in range(2)]
        slowed = running.app.gate.limiter.delay("127.0.0.1")

    assert before.status == 200 and after.status == 403 and "the token is not valid" in after.body
    assert guesses == [403, 403] and slowed > 0
    assert "revoked" in cli("users", "token", "boss", "--list")[1]
    assert token not in caplog.text


def test_play_and_hold_with_a_token_and_both_are_audited(store, people, files_settings, cli):
    from pathlib import Path

    from recording.storage.audit import Audit
    from tests.fake_asterisk import FakeAsterisk
    from tests.recording.test_recording_download import recorded_call

    settings = files_settings.with_(http_listen="127.0.0.1:0", trust_crm_login_name="false")
    token = token_of(cli, "boss")
    with RunningService(settings) as running:
        _, leg = recorded_call(FakeAsterisk(running.port, filesystem=Path("/")), store)
        http = HTTPClient(running.app.http_port)
        auth = {"Authorization": f"Bearer {token}"}
        played = http.request("GET", f"{RETRIEVAL}/retrieveRecording", query={"recordingId": leg.id}, headers=auth)
        held = http.request("POST", f"{RETRIEVAL}/holdRecording", form={"recordingId": leg.id, "reason": "case 3"},
                            headers=auth)
        legacy = http.post(f"{RETRIEVAL}/holdRecording", recordingId=leg.id, apiKey=API_KEY, loginName="boss")

    assert played.status == 200 and held.status == 200 and held.json["status"] == "HELD"
    assert legacy.status == 403 and "does not prove who asks" in legacy.body
    events = [(e.action, e.login, e.door, e.address, e.detail) for e in Audit(store).events(leg_id=leg.id)]
    assert events == [("download", "boss", "http", "127.0.0.1", None), ("hold", "boss", "http", "127.0.0.1", "case 3")]


def test_the_trust_setting_overrides_the_database_either_way(store, people, files_settings, caplog):
    caplog.set_level(logging.WARNING, logger="recording.http")
    stored_leg(store, agent=store.find_user("fred"), tag="CRM-4")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO system_variables (name, value, updated_at) "
                             "VALUES ('trustCrmLoginName', 'true', CURRENT_TIMESTAMP)")
    statuses = {}
    for said in ("", "false", "true"):
        with RunningService(files_settings.with_(http_listen="127.0.0.1:0", trust_crm_login_name=said)) as running:
            statuses[said] = by_tag(HTTPClient(running.app.http_port), "CRM-4", apiKey=API_KEY, loginName="fred").status

    assert statuses == {"": 200, "false": 403, "true": 200}
    warnings = [r.getMessage() for r in caplog.records if "whoever holds the apiKey may act as any user" in r.getMessage()]
    assert len(warnings) == 2  # once per process that trusts


def test_migration_0006_trusts_an_install_in_use_not_a_new_one_and_takes_itself_back(empty_database_url):
    from sqlalchemy import inspect

    store = Store(empty_database_url)
    try:
        store.upgrade()
        new_install = People(store).crm_trusted()
        store.downgrade("0005")
        store.add_user("fred")  # an install in use: it has users (or legs)
        store.upgrade()
        in_use = People(store).crm_trusted()
        store.downgrade("0005")
        with store.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            indexes = {index["name"] for index in inspect(conn).get_indexes("recording_legs")}
            variables = conn.exec_driver_sql("SELECT name FROM system_variables").scalars().all()
        store.upgrade()

        assert (new_install, in_use) == (False, True)
        assert not tables & {"passwords", "page_sessions", "api_tokens", "audit_events", "leg_checks"}
        assert not {name for name in indexes if "started_at" in name or name.endswith("_held")}
        assert "trustCrmLoginName" not in variables
        assert store.schema_revision() == store.head_revision() and People(store).crm_trusted() is True
    finally:
        store.close()


def test_an_address_past_the_threshold_waits_before_its_key_is_looked_at(settings):
    """The limiter acts before a key, token or password is hashed: hold_back waits first."""
    import asyncio
    import time

    from recording.ops.gate import Gate

    gate = Gate(settings.with_(apikey_failure_threshold=2, apikey_failure_max_delay=0.3))

    async def attempts():
        waits = []
        for _ in range(4):
            started = time.monotonic()
            await gate.hold_back("10.0.0.9")
            waits.append(time.monotonic() - started)
            await gate.wrong_key("10.0.0.9", "HTTP")
        return waits

    waits = asyncio.run(attempts())

    assert waits[0] < 0.1 and waits[1] < 0.1  # below the threshold: no wait
    assert waits[2] >= 0.25 and waits[3] >= 0.3  # then a wait before each check, doubling to the cap
    assert gate.limiter.delay("10.0.0.10") == 0.0
