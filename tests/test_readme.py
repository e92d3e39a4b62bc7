"""The README stays true: its two set-up commands are the ones CI runs, and its configuration
table lists every setting with its real default."""

from __future__ import annotations

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
