"""Reads a site's dialplan (extensions.conf) for its calls to this service, with pyst2's
Asterisk config parser, and says what would go wrong: a route the service does not have, an
argument it would refuse, an apiKey written into the file (Asterisk logs the AGI URL)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import asterisk.config

from .check import Finding
from ..doors.fastagi import ARGUMENTS

# The first argument of AGI(...): it ends at a comma or the closing paren.
_AGI = re.compile(r"\bAGI\(\s*([^,)]*)", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{[^}]*\}")


def check_dialplan(path: str, routes: tuple[str, ...]) -> list[Finding]:
    """One finding per AGI() line that reaches a FastAGI server and has a problem, and one
    that sums up; a file that cannot be read or parsed is one failed finding."""
    try:
        config = asterisk.config.Config(path)
    except asterisk.config.ParseError as exc:
        line, reason = exc.args if len(exc.args) == 2 else ("?", exc)
        return [Finding("dialplan", False, f"{path} line {line}: {reason}")]
    except OSError as exc:
        return [Finding("dialplan", False, f"{path}: {exc.strerror or exc}")]
    # NOTE: sites keep the server's address in [globals] (AGI(${RECORDING_AGI}/...)): those
    # plain ${NAME}s are put in before reading the line.
    globals_ = {item.name.strip(): item.value.strip() for c in config.categories if c.name == "globals"
                for item in c.items}
    findings, seen = [], 0
    for category in config.categories:
        for item in category.items:
            for written in _AGI.findall(item.value):
                url = re.sub(r"\$\{(\w+)\}", lambda m: globals_.get(m.group(1), m.group(0)), written).strip()
                if not re.match(r"h?agi://", url, re.IGNORECASE):
                    continue  # a local AGI script, not a FastAGI server
                seen += 1
                problem = _problem(url, written, routes)
                if problem:
                    findings.append(Finding("dialplan", False, f"{path} line {item.number} [{category.name}]: {problem}"))
    if not findings:
        findings.append(Finding("dialplan", True, f"{path}: {seen} AGI() calls to FastAGI, none with a problem"))
    return findings


def _problem(url: str, written: str, routes: tuple[str, ...]) -> str | None:
    """What is wrong with one FastAGI URL (``written`` as in the file, ``url`` with the
    [globals] put in), or None."""
    address = url.split("://", 1)[1]
    path = address.split("/", 1)[1] if "/" in address else ""
    if _VARIABLE.fullmatch(path) or not path:
        return None  # the route is chosen at run time (a variable): nothing to say here
    script, _, query = path.partition("?")
    script = script.strip("/")
    if _VARIABLE.search(script):
        return None
    if script not in routes:
        return f"{url}: the service has no route {script!r} (it has {', '.join(routes)})"
    for name, value in parse_qsl(query, keep_blank_values=True):
        if _VARIABLE.fullmatch(name):
            continue
        if name.lower() not in ARGUMENTS:
            return f"{url}: unknown argument {name!r} would be refused (expected {', '.join(ARGUMENTS.values())})"
    written_query = written.partition("?")[2]
    for name, value in parse_qsl(written_query, keep_blank_values=True):
        if name.lower() == "apikey" and value and not _VARIABLE.search(value):
            return (f"{written}: the apiKey is written into the AGI URL, which Asterisk logs; keep it in the "
                    "channel variable RECORDING_API_KEY (a [globals] entry) and leave it out of the URL")
    return None
