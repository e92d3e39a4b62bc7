"""The real-Asterisk part of the suite: one Asterisk 22 per test session, built from its source
when needed (tests/real_asterisk/build.py), configured and started by tests/real_asterisk/pbx.py,
stopped at the session's end whatever happens.

It runs when an Asterisk is at hand, in this order:
- ``RECORDING_TEST_ASTERISK=<asterisk binary>``: that one (``off`` turns the part off);
- ``RECORDING_TEST_ASTERISK_SOURCE=<tarball>``: built from that source (cached);
- the source beside the checkout, ``../shared/asterisk/src/asterisk-*.tar.gz`` (as in CI).
Otherwise every test here is skipped, with one line saying how to turn it on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from tests.real_asterisk import build
from tests.real_asterisk.pbx import Asterisk
from tests.real_asterisk.service import Serve, prepare_database
from tests.recording.conftest import BACKENDS, _drop_postgres_database, _fresh_database

BINARY_ENV = "RECORDING_TEST_ASTERISK"
SAMPLE = Path(__file__).resolve().parents[2] / "extensions.conf.sample"
SAMPLE_INCLUDE = "recording-sample.conf"
HOW = (f"no real Asterisk: set {BINARY_ENV}=<asterisk binary> or {build.SOURCE_ENV}=<asterisk-22.10.1.tar.gz>, "
       "or put the source at ../shared/asterisk/src/ beside the checkout")


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real_asterisk)


def pytest_runtest_setup(item):
    # NOTE: skipped here rather than in the fixture, so that every test of the part is
    # skipped at this one location and `-ra` shows one line (a fixture's skip is reported at
    # each test's own line).
    if HERE in Path(str(item.fspath)).parents and "pbx" in item.fixturenames and not asterisk_at_hand():
        raise pytest.skip.Exception(HOW)


def asterisk_at_hand() -> bool:
    """Whether an Asterisk binary or its source is given or found (without building it)."""
    given = os.environ.get(BINARY_ENV, "").strip()
    if given:
        return given.lower() != "off"
    if os.environ.get(build.SOURCE_ENV):
        return True  # given: a missing file is an error, not a reason to skip
    source = build.configured_source()
    return source is not None and source.is_file()


def asterisk_binary() -> Path | None:
    """The Asterisk to run (building it first when only its source is given), or None."""
    if not asterisk_at_hand():
        return None
    given = os.environ.get(BINARY_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return build.ensure_built(build.configured_source())


@pytest.fixture(scope="session")
def pbx(request, tmp_path_factory) -> Asterisk:
    """The session's Asterisk, started once; every test adds its own contexts to it."""
    # NOTE: a first build takes minutes: its progress goes to the terminal, not to the capture.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        binary = asterisk_binary()
    if binary is None:
        pytest.skip(HOW)
    if not binary.is_file():
        pytest.fail(f"{BINARY_ENV}={binary}: no such file")
    asterisk = Asterisk(binary, tmp_path_factory.mktemp("asterisk"), includes={SAMPLE_INCLUDE: SAMPLE.read_text()})
    asterisk.start()
    try:
        yield asterisk
    finally:
        asterisk.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def database(request, pbx, tmp_path_factory):
    url, name = _fresh_database(request.param, tmp_path_factory.mktemp("db"))
    prepare_database(url)
    yield url
    if name:
        _drop_postgres_database(name)


@pytest.fixture(scope="module")
def with_ami(pbx, database, tmp_path_factory):
    """The service with FastAGI, the HTTP API and AMI."""
    service = Serve(database, tmp_path_factory.mktemp("serve-ami"), pbx)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def without_ami(pbx, database, tmp_path_factory):
    """The service with FastAGI only: no AMI, no HTTP API (pause stops MixMonitor, resume appends)."""
    service = Serve(database, tmp_path_factory.mktemp("serve-plain"), pbx, ami=False, http=False)
    yield service
    service.stop()
