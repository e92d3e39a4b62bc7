"""agi/ must stay a FastAGI library: the standard library and its own modules, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import agi

PACKAGE = Path(agi.__file__).parent
OWN_MODULES = {path.stem for path in PACKAGE.glob("*.py")}


def foreign_imports(source: str) -> list[str]:
    """Every import in ``source`` (at any depth, under any ``if`` or ``try``) that is neither
    the standard library nor a sibling module of agi/."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if not _stdlib(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not _stdlib(node.module):
                    found.append(node.module)
            elif node.level > 1:
                found.append("." * node.level + (node.module or ""))
            elif node.module is None:
                found += ["." + a.name for a in node.names if a.name not in OWN_MODULES]
            elif node.module.split(".")[0] not in OWN_MODULES:
                found.append("." + node.module)
    return found


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def test_the_package_has_its_four_modules():
    # Guards the walk below against silently checking an empty or misplaced directory.
    assert {"__init__", "errors", "protocol", "session", "server"} <= OWN_MODULES


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_only_the_standard_library_and_agi(path):
    assert foreign_imports(path.read_text()) == []


@pytest.mark.parametrize(
    "source, foreign",
    [
        ("import recording", ["recording"]),
        ("import sqlalchemy.orm", ["sqlalchemy.orm"]),
        ("from recording.store import Store", ["recording.store"]),
        ("import asyncio, recording.config", ["recording.config"]),
        ("def f():\n    from sqlalchemy import text\n", ["sqlalchemy"]),
        ("try:\n    import uvloop\nexcept ImportError:\n    pass\n", ["uvloop"]),
        ("from .. import recording", [".."]),
        ("from ..recording import store", ["..recording"]),
        ("from . import store", [".store"]),
        ("from .store import Store", [".store"]),
    ],
)
def test_the_check_flags_foreign_imports(source, foreign):
    assert foreign_imports(source) == foreign


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "from __future__ import annotations",
        "from collections.abc import Mapping",
        "from .errors import AGIError",
        "from . import protocol",
        "from .session import LineReader, Session",
    ],
)
def test_the_check_accepts_the_standard_library_and_siblings(source):
    assert foreign_imports(source) == []
