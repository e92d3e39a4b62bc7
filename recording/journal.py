"""The local journal: where legs and tags wait, durable on disk, while the database is away.

Append-only files of JSON lines (``journal-<time>.jsonl``) in one directory. An entry is
flushed and fsynced before the session that wrote it reports STARTED, so a crash right after
loses nothing. Replay reads sealed files in order and deletes a file only once every entry in it
is in the database; replaying an entry twice is harmless (the store answers APPLIED).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from .domain import LegChange, NewLeg, TagUpdate, UserRef
from .errors import StorageUnavailable

log = logging.getLogger("recording.journal")

PREFIX, SUFFIX = "journal-", ".jsonl"


def encode(write: NewLeg | TagUpdate | LegChange) -> dict:
    if isinstance(write, TagUpdate):
        return {"kind": "tag", "unique_id": write.unique_id, "tag": write.tag, "at": write.at.isoformat()}
    if isinstance(write, LegChange):
        entry = {k: getattr(write, k) for k in ("leg_id", "unique_id", "action", "state", "by", "method",
                                                 "mixmonitor_id")}
        return entry | {"kind": "change", "at": write.at.isoformat()}
    entry = {k: getattr(write, k) for k in (
        "id", "unique_id", "leg", "channel", "extension", "file", "mixmonitor_id", "tag", "agent_login",
        "source", "state",
    )}
    entry["kind"] = "leg"
    entry["agent"] = None if write.agent is None else {"id": write.agent.id, "login": write.agent.login}
    entry["started_at"] = write.started_at.isoformat()
    entry["ended_at"] = write.ended_at.isoformat() if write.ended_at else None
    return entry


def decode(entry: dict) -> NewLeg | TagUpdate | LegChange:
    if entry["kind"] == "tag":
        return TagUpdate(entry["unique_id"], entry["tag"], datetime.fromisoformat(entry["at"]))
    if entry["kind"] == "change":
        fields = {k: v for k, v in entry.items() if k not in ("kind", "at")}
        return LegChange(**fields, at=datetime.fromisoformat(entry["at"]))
    fields = {k: v for k, v in entry.items() if k not in ("kind", "agent", "started_at", "ended_at")}
    agent = entry.get("agent")
    return NewLeg(
        **fields,
        agent=UserRef(agent["id"], agent["login"]) if agent else None,
        started_at=datetime.fromisoformat(entry["started_at"]),
        ended_at=datetime.fromisoformat(entry["ended_at"]) if entry.get("ended_at") else None,
    )


@dataclass(frozen=True)
class SegmentStatus:
    name: str
    entries: int
    oldest: str | None
    newest: str | None


class Journal:
    """The journal directory. ``append`` runs on one thread (the journal's batch thread);
    ``seal``/``read``/``remove`` on the replayer's; a lock keeps them apart."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._fd: int | None = None
        self.appended = 0

    def open(self) -> None:
        """Creates the directory (owner-only: it holds tags and file names) if needed."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"journal directory {self.directory} cannot be created: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._close_current()

    def append(self, writes: Sequence[NewLeg | TagUpdate]) -> list[None]:
        """Writes the entries and fsyncs them, all in one write; raises StorageUnavailable if
        the disk refuses (then none of them may be reported as stored)."""
        payload = "".join(json.dumps(encode(w), separators=(",", ":")) + "\n" for w in writes).encode()
        with self._lock:
            try:
                if self._fd is None:
                    self._open_segment()
                os.write(self._fd, payload)
                os.fsync(self._fd)
            except OSError as exc:
                self._close_current()
                raise StorageUnavailable(f"the journal in {self.directory} cannot be written: {exc}") from exc
            self.appended += len(writes)
        return [None] * len(writes)

    def _open_segment(self) -> None:
        path = self.directory / f"{PREFIX}{time.time_ns():020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._current = path
        # NOTE: the new file's directory entry must be on disk too, or a crash can lose it.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _close_current(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._current = None

    def seal(self) -> list[Path]:
        """Ends the current file (the next append starts a new one) and returns every file
        waiting for replay, oldest first."""
        with self._lock:
            self._close_current()
            return self._segments()

    def _segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))

    def has_open_segment(self) -> bool:
        with self._lock:
            return self._fd is not None

    def read(self, segment: Path) -> list[NewLeg | TagUpdate]:
        """The entries of a sealed file. A last line cut short by a crash was never fsynced,
        so nobody was told it was stored: it is dropped with a warning."""
        writes = []
        lines = segment.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                writes.append(decode(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                if number >= len(lines) - 1:
                    log.warning("%s: dropping an unfinished last entry (%s)", segment.name, exc)
                    continue
                raise StorageUnavailable(f"{segment} line {number} is damaged: {exc}") from exc
        return writes

    def reject(self, write: NewLeg | TagUpdate, reason: str) -> None:
        """Keeps a write the database refused at replay in ``rejected.jsonl`` for a person to
        look at, and says so in the log: it is neither retried forever nor dropped."""
        entry = encode(write) | {"rejected": reason}
        with open(self.directory / "rejected.jsonl", "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())
        log.error("journaled %s for %s refused by the database and kept in %s: %s",
                  entry["kind"], write.unique_id, self.directory / "rejected.jsonl", reason)

    def remove(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)

    def pending(self) -> int:
        """How many entries wait for replay (counted from the files)."""
        with self._lock:
            segments = self._segments()
        return sum(_count_lines(p) for p in segments)

    def status(self) -> list[SegmentStatus]:
        with self._lock:
            segments = self._segments()
        result = []
        for segment in segments:
            writes = self.read(segment)
            stamps = sorted(w.started_at if isinstance(w, NewLeg) else w.at for w in writes)
            result.append(SegmentStatus(
                segment.name, len(writes),
                stamps[0].isoformat() if stamps else None, stamps[-1].isoformat() if stamps else None,
            ))
        return result


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0
