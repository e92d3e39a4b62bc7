"""Log lines of the call tracker: what comes from Asterisk is escaped and bounded."""

from __future__ import annotations

import logging

from recording.calls import CallTracker
from recording.calls.transitions import describe_part, printable

from tests.call_streams import Stream


def test_printable_escapes_control_characters_and_bounds_the_length():
    assert printable("PJSIP/410-0000001a") == "PJSIP/410-0000001a"
    assert printable("a\nb\rc\x1b[2Jd\x00e\u2028f\x85g\\h") == "a\\nb\\rc\\x1b[2Jd\\x00e\\u2028f\\x85g\\\\h"
    assert printable("é中") == "é中"
    assert printable("x" * 300, limit=10) == "x" * 10 + "..."
    assert printable(None) == "-"


def test_describe_part():
    assert describe_part(None, None, None) == "-"
    assert describe_part(1, None, None) == "part 1 (no agent)"
    assert describe_part(2, "410", "PJSIP/410-0000001a") == "part 2 (410 on PJSIP/410-0000001a)"


def test_a_hostile_channel_name_reaches_the_log_escaped(caplog):
    caplog.set_level(logging.DEBUG, logger="recording.calls")
    s = Stream()
    caller = s.channel("trunk")
    agent = s.channel("4\x1b[31m10\nFAKE LINE", caller.linkedid)
    s.bridge("b", agent, caller)
    tracker = CallTracker()
    for at, event in s.events:
        tracker.feed(event, at)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line and "\x1b" not in line for line in lines)
    assert "4\\x1b[31m10\\nFAKE LINE" in lines[1]
