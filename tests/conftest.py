"""Suite-wide: every log line the suite's runs produce, through the service's own redacting
filter, is kept, and at the end none may hold the apiKey (Asterisk puts it in agi_request, so
it reaches the service in every session that carries it in its URL)."""

from __future__ import annotations

import io
import logging

import pytest

from recording.ops.logs import RedactingFilter
from tests.recording.conftest import API_KEY


@pytest.fixture(scope="session", autouse=True)
def no_api_key_in_any_log_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(level)
    lines = stream.getvalue().splitlines()
    leaks = [line for line in lines if API_KEY in line]
    assert not leaks, f"{len(leaks)} log lines hold the apiKey, e.g. {leaks[0]!r}"
