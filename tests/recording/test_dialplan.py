"""`check --dialplan` reads a site's extensions.conf with pyst2's parser and names the AGI()
lines that would fail or leak the key."""

from __future__ import annotations

from pathlib import Path

from recording.doors.fastagi import ROUTES
from recording.cli import main
from recording.ops.dialplan import check_dialplan

SAMPLE = Path(__file__).resolve().parents[2] / "extensions.conf.sample"

BAD = """\
[globals]
RECORDING_AGI=agi://127.0.0.1:4573
KEY=x

[bad]
exten => 1,1,AGI(agi://127.0.0.1:4573/recording/start?tag=${X}&apiKey=plaintext-key)
 same => n,AGI(${RECORDING_AGI}/recording/strat?tag=1)
 same => n,AGI(hagi://rec.example.com/recording/start?tga=1,foo)
 same => n,AGI(agi://127.0.0.1:4573/recording/start?apiKey=${KEY})
 same => n,AGI(/usr/share/asterisk/agi-bin/other.agi)
"""


def test_the_shipped_sample_has_no_problem():
    (finding,) = check_dialplan(str(SAMPLE), ROUTES)
    assert finding.ok and "6 AGI() calls" in finding.detail


def test_each_problem_line_is_named(tmp_path):
    path = tmp_path / "extensions.conf"
    path.write_text(BAD)

    findings = check_dialplan(str(path), ROUTES)

    assert [f.ok for f in findings] == [False, False, False]
    line5, line6, line7 = (f.detail for f in findings)
    assert "line 6 [bad]" in line5 and "apiKey is written into the AGI URL" in line5
    assert "line 7 [bad]" in line6 and "no route 'recording/strat'" in line6
    assert "line 8 [bad]" in line7 and "unknown argument 'tga'" in line7


def test_an_unreadable_or_broken_file_is_one_failed_finding(tmp_path):
    (missing,) = check_dialplan(str(tmp_path / "nope.conf"), ROUTES)
    broken = tmp_path / "broken.conf"
    broken.write_text("[ctx\nexten => 1,1,NoOp()\n")
    (unparsed,) = check_dialplan(str(broken), ROUTES)

    assert not missing.ok and "nope.conf" in missing.detail
    assert not unparsed.ok and "line 1" in unparsed.detail


def test_check_reports_the_dialplan_and_fails_on_its_problems(store, database_url, tmp_path, capsys):
    path = tmp_path / "extensions.conf"
    path.write_text(BAD)

    good = main(["--database-url", database_url, "check", "--listen", "127.0.0.1:0", "--dialplan", str(SAMPLE)])
    assert good == 0 and "ok   dialplan:" in capsys.readouterr().out
    bad = main(["--database-url", database_url, "check", "--listen", "127.0.0.1:0", "--dialplan", str(path)])
    assert bad == 1 and capsys.readouterr().out.count("FAIL dialplan:") == 3
