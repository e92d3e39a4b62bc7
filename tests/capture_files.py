"""Reading the captures in ``tests/captures`` (a copy of ``../shared/asterisk``) for the tests
that are checked against them."""

from __future__ import annotations

import json
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent / "captures"


def captured_msets() -> list[tuple[str, dict[str, str]]]:
    """Each whole ``EXEC MSet`` command line of fastagi-mset-ext390 (as sent, without ``>> ``)
    with the values Asterisk then gave back for its variables (``GET VARIABLE``), in order."""
    found: list[tuple[str, dict[str, str]]] = []
    lines = (CAPTURES / "fastagi-mset-ext390.txt").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if not line.startswith(">> EXEC MSet ") or line.endswith(" ..."):
            continue
        values = {}
        for ask, answer in zip(lines[index + 2::2], lines[index + 3::2]):
            if not ask.startswith(">> GET VARIABLE "):
                break
            values[ask.removeprefix(">> GET VARIABLE ")] = answer.removeprefix("<< 200 result=1 (")[:-1]
        found.append((line.removeprefix(">> "), values))
    return found


def mset_values() -> list[tuple[str, str]]:
    """fastagi-mset-values.jsonl: every value sent through MSet and what Asterisk stored."""
    with open(CAPTURES / "fastagi-mset-values.jsonl", encoding="utf-8") as rows:
        return [(row["sent"], row["stored"]) for row in map(json.loads, rows)]
