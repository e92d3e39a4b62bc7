"""The README stays true: its two set-up commands are the ones CI runs, and its configuration
table lists every setting with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from recording.ops.config import describe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table_with_its_default():
    for _, env, default, _ in describe():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{env}` |")), None)
        assert row is not None, f"{env} missing from the README"
        assert f"| `{default}` |" in row, f"{env}: README default differs from {default!r}"


def test_ci_runs_the_readme_test_command():
    test_command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    assert f"    {test_command}\n" in README
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_run_command_uses_the_console_script():
    assert "    python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/recording-agi serve\n" in README


def test_each_asterisk_fact_names_a_real_asterisk_test_that_exists():
    section = README.split("### Asterisk facts, and the tests that prove them", 1)[1].split("\n### ", 1)[0]
    files = {"facts": "test_asterisk_facts.py", "dialplan": "test_service_dialplan.py",
             "http": "test_service_http.py", "load": "test_service_load.py"}
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fact")]
    named = [(kind, name) for row in rows for kind, name in re.findall(r"(facts|dialplan|http|load) `(test_\w+)`", row)]
    assert len(rows) >= 10 and all(re.search(r"`test_\w+`", row) for row in rows)
    for kind, name in named:
        source = (ROOT / "tests" / "real_asterisk" / files[kind]).read_text()
        assert f"def {name}(" in source, f"{name} is not in {files[kind]}"
