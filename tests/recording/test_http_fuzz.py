"""The HTTP API under schemathesis: every operation in the description (the one the service
serves at /openapi.json, as test_http checks; so an operation added to
recording/doors/openapi.py is fuzzed without a change here), against the real server on a
loopback socket, with the fake AMI as Asterisk's manager and a valid apiKey, so the requests
get past the key check to the service. Every check schemathesis has is on (max_response_time
with a limit that only a hang exceeds), and two of ours.

RECORDING_FUZZ_EXAMPLES sets the examples per operation: 20 by default, which keeps this module
under half a minute for both backends (schemathesis's coverage phase adds its own ~80 requests
per POST operation); a longer run, e.g.
``RECORDING_FUZZ_EXAMPLES=500 pytest tests/recording/test_http_fuzz.py``.
"""

from __future__ import annotations

import logging
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from recording.doors.openapi import KEY, spec
from tests.recording.conftest import API_KEY

EXAMPLES = int(os.environ.get("RECORDING_FUZZ_EXAMPLES", "20"))
TAG = "CRM-1"  # the example tag in the description, so retrieval by example finds legs
# The rules the description states in words because JSON Schema cannot: a 400 for data the
# schema allows must be one of these, and nothing else.
CROSS_FIELD_RULES = ("is given twice with different values", "unknown agent", "loginName is required with the apiKey")


@schemathesis.check
def refusals_of_valid_data_are_stated_rules(ctx, response, case):
    """A 400 for a request the description allows must be a rule the description states."""
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and response.status_code == 400:
        assert any(rule in response.text for rule in CROSS_FIELD_RULES), (
            f"valid data refused with a 400 the description does not explain: {response.text!r}")


@schemathesis.check
def errors_are_one_sentence(ctx, response, case):
    """Every answer but a success is one line of plain text."""
    if response.status_code >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("text/plain"), response.headers
        lines = response.text.splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"not one sentence: {response.text!r}"


def config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "checks": {
            # On only when given a limit; this one is no benchmark, it tells a hang from a slow machine.
            "max_response_time": 5.0,
            # The defaults, and a 400 for valid data as far as refusals_of_valid_data_are_stated_rules allows.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"],
            },
        },
        "generation": {"max-examples": EXAMPLES},
    })


@pytest.fixture
def live_api(ami_service, fake_ami, store, http):
    """The service with users, a live channel for the description's example extension, and a
    leg with its example tag, so that requests made of the description's examples find them."""
    store.add_user("fred")
    store.add_user("boss", ["Recording Manager"])
    fake_ami.add_channel("PJSIP/410-0000001a", bridge_id="bridge-1")
    fake_ami.add_channel("PJSIP/411-0000001b", bridge_id="bridge-1")
    started = http.post("/servicemanager/rest/CallManagementAPI/start", extenOrUniqueId="411", tag=TAG,
                        agentLoginName="fred", apiKey=API_KEY)
    assert started.status == 200, started.body
    found = http.get("/njadmin/rest/RecordingAPI/retrieveMetaData", tag=TAG, loginName="boss", apiKey=API_KEY)
    assert found.status == 200 and len(found.json) == 1, found.body
    return ami_service


# NOTE: loaded when the module is, not from the running service (schemathesis's lazy loader,
# from_fixture, fails on pytest 9.2), so that each operation is a test of its own.
schema = schemathesis.openapi.from_dict(spec(), config=config())


@schema.auth()
class TheApiKey:
    """The valid apiKey, in the query string (the description's security scheme). A form body
    may carry the key too, but one generated there would be refused (given twice with different
    values) before anything else is looked at, so a generated text key is taken out of the
    body, as schemathesis does with generated credentials it does not use; one that is not text
    is left: it is then what makes the request invalid."""

    def get(self, case, context):
        return API_KEY

    def set(self, case, data, context):
        case.query = {**(case.query or {}), KEY: data}
        if isinstance(case.body, dict) and isinstance(case.body.get(KEY), str):
            del case.body[KEY]


@schema.parametrize()
# NOTE: function_scoped_fixture: one service per operation, shared by its examples, on purpose.
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_operation_answers_as_described(case, live_api, caplog):
    with caplog.at_level(logging.INFO):
        case.call_and_validate(
            base_url=f"http://127.0.0.1:{live_api.app.http_port}",
            additional_checks=[refusals_of_valid_data_are_stated_rules, errors_are_one_sentence],
        )
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, f"logged with a traceback or as an error: {failures[0].getMessage()}"
