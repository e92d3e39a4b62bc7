"""The fake Asterisk speaks as the captured Asterisk 22 does: its environment block is the
captured one, byte for byte, given the same channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_asterisk import environment

CAPTURES = Path(__file__).resolve().parent / "captures"


@pytest.mark.parametrize(
    "capture,channel,uniqueid,extension,threadid,args",
    [
        ("fastagi-start-ext100.raw.txt", "Local/100@acceptance-00000001;2", "1795825765.3", "100",
         "140521815484096", ()),
        ("fastagi-start-ext102.raw.txt", "Local/102@acceptance-00000005;2", "1795825829.11", "102",
         "140521815996096", ("first arg", "second", "quoted,with comma", "102")),
    ],
)
def test_the_environment_block_is_the_captured_one(capture, channel, uniqueid, extension, threadid, args):
    raw = (CAPTURES / capture).read_bytes()
    block = raw[: raw.index(b"\n\n") + 2]

    made = environment("recording/start?tag=22&agentLoginName=Fred&apiKey=k1", port=4574, channel=channel,
                       uniqueid=uniqueid, extension=extension, threadid=threadid, args=args)

    assert made == block
