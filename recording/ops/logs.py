"""Logging set-up, with the apiKey taken out of every line and every line the service's own.

Asterisk puts the whole AGI URL, apiKey included, in ``agi_request``; whatever part of the
service ends up quoting it (an exception message, a malformed line), the key must not reach a
log. And text from outside (a URL path, an argument, an AGI environment line, an AMI field) may
hold a newline followed by what looks like a log line of ours: control characters in a message
are escaped, and a traceback's lines after its first are indented, so no line of the log that
begins with a time was written by anyone but the service. The filter sits on the handlers, so
it also covers other libraries' records.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import datetime, timezone

_KEY = re.compile(r"(?i)(api_?key\s*[=:]\s*\"?)[^&\s,\"')]+")
REDACTED = r"\1[redacted]"


# C0 and C1 controls, DEL, and the characters some viewers take for a line end.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# In the text log, the lines of a record after its first (a traceback's) begin with this, so
# none can pass for a record of its own.
CONTINUATION = "\n    | "


def redact(text: str) -> str:
    return _KEY.sub(REDACTED, text)


def escape_controls(text: str) -> str:
    """``text`` with each control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u2028``): one message, one line."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text)


class RedactingFilter(logging.Filter):
    """Takes the apiKey out of a record and escapes the control characters of its message (a
    traceback keeps its line ends; the text formatter indents its lines, see CONTINUATION)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = escape_controls(redact(message))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = "\n".join(escape_controls(line) for line in redact(record.exc_text).split("\n"))
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, not at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class TextFormatter(logging.Formatter):
    """The standard text line, with the time's strftime done once a second rather than once a
    line (every session logs a line)."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        # NOTE: a message has no line end left (the filter escaped it); what follows one is a
        # traceback or a stack, each of whose lines is indented.
        text = super().format(record)
        return text.replace("\n", CONTINUATION) if "\n" in text else text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time (UTC, ISO 8601), level, logger,
    message, and the process's part (``worker``) and a traceback when there is one. Records
    have already been through the redacting filter."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.prefix:
            entry["process"] = self.prefix
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", stream=None, prefix: str = "", fmt: str = "text") -> logging.Handler:
    """One handler on the root logger, to stderr (journald takes it from there). ``prefix``
    goes before the logger's name on every line (``worker 2``: which process of several);
    ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    where = f"{prefix.replace('%', '%%')} " if prefix else ""
    if fmt == "json":
        handler.setFormatter(JSONFormatter(prefix))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.recording_handler = True
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "recording_handler", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # NOTE: our lines show none of a record's thread, process or source position, and working
    # them out (a stack walk among them) was most of the cost of the line each session logs;
    # the logging docs' "Optimization" section names these switches.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    # NOTE: Alembic announces each of its plugins at INFO on every command.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, root.level))
    return handler
