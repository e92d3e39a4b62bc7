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

import os
from pathlib import Path

import pytest

from tests.real_asterisk import build
from tests.real_asterisk.pbx import Asterisk

BINARY_ENV = "RECORDING_TEST_ASTERISK"
SAMPLE = Path(__file__).resolve().parents[2] / "extensions.conf.sample"
SAMPLE_INCLUDE = "recording-sample.conf"
HOW = (f"no real Asterisk: set {BINARY_ENV}=<asterisk binary> or {build.SOURCE_ENV}=<asterisk-22.10.1.tar.gz>, "
       "or put the source at ../shared/asterisk/src/ beside the checkout")


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real_asterisk)


def asterisk_binary() -> Path | None:
    """The Asterisk to run (building it first when only its source is given), or None."""
    given = os.environ.get(BINARY_ENV, "").strip()
    if given.lower() == "off":
        return None
    if given:
        return Path(given).expanduser()
    source = build.configured_source()
    if source is None or not source.is_file():
        return None
    return build.ensure_built(source)


@pytest.fixture(scope="session")
def pbx(tmp_path_factory) -> Asterisk:
    """The session's Asterisk, started once; every test adds its own contexts to it."""
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
