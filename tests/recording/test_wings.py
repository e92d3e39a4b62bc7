"""recording/'s wings import in one direction (README, "Design"): storage and asterisk know
nothing of the doors or of the service; calls (the model of calls that AMI events update)
knows only the domain; the domain knows none of the wings; and no module reaches back to one
that reaches it, directly or round a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import recording

PACKAGE = Path(recording.__file__).parent
WINGS = ("doors", "storage", "asterisk", "ops", "calls")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}


def imports_of(name: str, source: str) -> set[str]:
    """The recording modules ``source`` imports, at any depth (a function-level import is an
    import too), by full name."""
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from x import y` imports the module x.y when there is one, else the name y of x.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "recording":
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path.read_text()) for name, path in MODULES.items()}


def test_the_walk_sees_the_wings_and_their_imports():
    # Guards the checks below against passing over an empty or misread tree.
    assert {f"recording.{wing}" for wing in WINGS} <= set(MODULES)
    assert "recording.storage.store" in GRAPH["recording.app"]
    assert "recording.domain" in GRAPH["recording.storage.store"]
    assert imports_of("recording.storage.store", "from ..doors import http\nfrom . import models\n") == {
        "recording.doors.http", "recording.storage.models"}
    assert imports_of("recording.cli", "def f():\n    from .ops.check import check\n") == {"recording.ops.check"}


@pytest.mark.parametrize("wing", ["storage", "asterisk"])
def test_storage_and_asterisk_import_nothing_from_the_doors_or_the_service(wing):
    above = ("recording.doors", "recording.service", "recording.app", "recording.cli")
    offending = {
        name: sorted(t for t in targets if t.startswith(above))
        for name, targets in GRAPH.items() if name.startswith(f"recording.{wing}")
    }
    assert {name: t for name, t in offending.items() if t} == {}


def test_calls_imports_the_domain_only():
    """The call model is plain data fed by events: no socket, no database, no acting."""
    outside = {
        name: sorted(t for t in targets if not t.startswith("recording.calls") and t != "recording.domain")
        for name, targets in GRAPH.items() if name.startswith("recording.calls")
    }
    assert len(outside) >= 5
    assert {name: t for name, t in outside.items() if t} == {}


def test_the_domain_imports_none_of_the_wings():
    assert sorted(t for t in GRAPH["recording.domain"] if t.startswith(tuple(f"recording.{w}" for w in WINGS))) == []


def test_no_import_circle():
    circles = [sorted(group) for group in strongly_connected(GRAPH) if len(group) > 1]
    assert circles == []


def test_the_circle_check_finds_a_circle():
    assert [sorted(g) for g in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(g) > 1] == [
        ["a", "b", "c"]]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components: a group of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups
