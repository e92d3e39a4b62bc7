"""The local journal: where legs and tags wait, durable on disk, while the database is away.

Append-only files of JSON lines (``journal-<time>.jsonl``) in one directory. An entry is
flushed and fsynced before the session that wrote it reports STARTED, so a crash right after
loses nothing. Replay reads sealed files in order and deletes a file only once every entry in it
is in the database. Replaying an entry twice changes nothing: a leg is known by its id, and a
pause, resume or end by its key (see LegChange). A line that cannot be read is set aside in
``rejected.jsonl`` with where it was, and replay goes on with the next.

One process per directory: ``open`` takes an exclusive lock (``journal.lock``, flock) held
until ``close``, and refuses a directory another process holds. Several processes (``serve
--workers``) each have their own ``worker-N`` folder; on opening, a journal first takes over
the files of such folders that no process holds (its own ``worker-*`` subfolders, and for a
``worker-N`` folder its parent and its siblings), so nothing is stranded when the number of
processes changes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from ..domain import LegChange, NewLeg, TagUpdate, UserRef
from ..errors import StorageUnavailable


class JournalError(StorageUnavailable):
    """The journal's own files cannot be written, read or removed: a local disk's failure, not
    the database's (the log must not blame the database for it)."""

log = logging.getLogger("recording.journal")

PREFIX, SUFFIX = "journal-", ".jsonl"
LOCK_NAME = "journal.lock"
REJECTED = "rejected.jsonl"
WORKER_DIR = re.compile(r"^worker-[0-9]+$")
# NOTE: a sibling taking over this folder's leftovers holds its lock for a moment; wait that
# long before calling the folder taken.
LOCK_WAIT = 1.0


def encode(write: NewLeg | TagUpdate | LegChange) -> dict:
    if isinstance(write, TagUpdate):
        return {"kind": "tag", "unique_id": write.unique_id, "tag": write.tag, "at": write.at.isoformat()}
    if isinstance(write, LegChange):
        entry = {k: getattr(write, k) for k in ("leg_id", "unique_id", "action", "state", "by", "method",
                                                 "mixmonitor_id", "key")}
        return entry | {"kind": "change", "at": write.at.isoformat()}
    entry = {k: getattr(write, k) for k in (
        "id", "unique_id", "leg", "channel", "extension", "file", "mixmonitor_id", "tag", "agent_login",
        "source", "state", "linkedid", "part", "follows",
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
        fields = {k: v for k, v in entry.items() if k not in ("kind", "at", "rejected")}
        return LegChange(**fields, at=datetime.fromisoformat(entry["at"]))
    fields = {k: v for k, v in entry.items() if k not in ("kind", "agent", "started_at", "ended_at", "rejected")}
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
        self._lock_fd: int | None = None
        self.appended = 0
        self.adopted = 0
        # Lines that could not be read and were set aside in rejected.jsonl (for the metrics).
        self.set_aside = 0

    def open(self) -> None:
        """Creates the directory (owner-only: it holds tags and file names) if needed, locks
        it for this process until :meth:`close`, and takes over the files left in ``worker-*``
        folders nobody holds (see the module's description). Raises StorageUnavailable when
        the directory cannot be made or another process holds it."""
        if self._lock_fd is not None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"journal directory {self.directory} cannot be created: {exc}") from exc
        try:
            self._lock_fd = _lock(self.directory, wait=LOCK_WAIT)
        except OSError as exc:
            raise JournalError(f"journal directory {self.directory} cannot be locked: {exc}") from exc
        if self._lock_fd is None:
            raise JournalError(
                f"journal directory {self.directory} is in use by another process (it holds "
                f"{self.directory / LOCK_NAME}); each process needs a journal directory of its own "
                "(RECORDING_JOURNAL_DIR)"
            )
        for source in self._neighbours():
            try:
                self.adopted += self._adopt(source)
            except OSError as exc:
                log.error("journal files left in %s could not be taken over (they stay there): %s", source, exc)

    def close(self) -> None:
        with self._lock:
            self._close_current()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _neighbours(self) -> list[Path]:
        """Folders whose leftovers this journal takes over when no process holds them."""
        found = worker_directories(self.directory)
        if WORKER_DIR.match(self.directory.name):
            parent = self.directory.parent
            found += [parent] + [p for p in worker_directories(parent) if p.name != self.directory.name]
        return found

    def _adopt(self, source: Path) -> int:
        """Moves the segments (and refused writes) of ``source`` here if no process holds it;
        returns how many files were moved. Names keep their time, so replay order survives."""
        segments = _segment_files(source)
        rejected = source / REJECTED
        if not segments and not rejected.exists():
            return 0
        held = _lock(source, wait=0)
        if held is None:
            log.info("%s is in use by another process: its journal files are left to it", source)
            return 0
        try:
            segments = _segment_files(source)
            for segment in segments:
                target = self.directory / segment.name
                copy = 0
                while target.exists():
                    copy += 1
                    target = self.directory / f"{segment.stem}-{copy}{SUFFIX}"
                os.rename(segment, target)
            if rejected.exists():
                fd = os.open(self.directory / REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    _write_all(fd, rejected.read_bytes())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                rejected.unlink()
            fsync_directory(self.directory)
            fsync_directory(source)
        finally:
            os.close(held)
        if segments:
            log.warning("took over %d journal file%s left in %s by a process that no longer runs; "
                        "replayed from %s", len(segments), "" if len(segments) == 1 else "s", source,
                        self.directory)
        return len(segments)

    def append(self, writes: Sequence[NewLeg | TagUpdate]) -> list[None]:
        """Writes the entries and fsyncs them; raises JournalError if the disk refuses (then none
        of them may be reported as stored, and none is left in the file to be replayed)."""
        payload = "".join(json.dumps(encode(w), separators=(",", ":")) + "\n" for w in writes).encode()
        with self._lock:
            offset = None
            try:
                if self._fd is None:
                    self._open_segment()
                offset = os.lseek(self._fd, 0, os.SEEK_END)
                _write_all(self._fd, payload)
                os.fsync(self._fd)
            except OSError as exc:
                self._undo(offset)
                raise JournalError(f"the journal in {self.directory} cannot be written: {exc}") from exc
            self.appended += len(writes)
        return [None] * len(writes)

    def _undo(self, offset: int | None) -> None:
        """Takes a failed append back out of the file (it may have been written in part: a
        full disk writes what fits), then closes it: the next append starts a new file."""
        try:
            if offset is not None and self._fd is not None:
                os.ftruncate(self._fd, offset)
                os.fsync(self._fd)
        except OSError as exc:
            log.error("a failed journal write could not be taken back out of %s (%s): its entries, which no "
                      "session was told are stored, may be replayed", self._current, exc)
        self._close_current()

    def _open_segment(self) -> None:
        path = self.directory / f"{PREFIX}{time.time_ns():020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._current = path
        # NOTE: the new file's directory entry must be on disk too, or a crash can lose it.
        fsync_directory(self.directory)

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
        return _segment_files(self.directory)

    def has_open_segment(self) -> bool:
        with self._lock:
            return self._fd is not None

    def read(self, segment: Path) -> list[NewLeg | TagUpdate]:
        """The entries of a sealed file. A last line cut short by a crash was never fsynced,
        so nobody was told it was stored: it is dropped with a warning. Any other line that
        cannot be read is set aside in ``rejected.jsonl`` (logged, counted in
        :attr:`set_aside`), and the lines after it are read: one damaged line must not hold
        back every later write. Raises JournalError when the file cannot be read."""
        writes = []
        try:
            lines = segment.read_bytes().split(b"\n")
        except OSError as exc:
            raise JournalError(f"the journal file {segment} cannot be read: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                writes.append(decode(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                if number >= len(lines) - 1 and not line.endswith(b"}"):
                    log.warning("%s: dropping an unfinished last entry (%s)", segment.name, exc)
                    continue
                self._set_aside(segment, number, line, exc)
        return writes

    def _set_aside(self, segment: Path, number: int, line: bytes, exc: Exception) -> None:
        reason = f"line {number} of {segment.name} cannot be read: {type(exc).__name__}: {exc}"
        self._keep_rejected({"damaged": line.decode("utf-8", "backslashreplace"), "rejected": reason})
        self.set_aside += 1
        log.error("journal %s set aside in %s; replay goes on with the next line", reason,
                  self.directory / REJECTED)

    def reject(self, write: NewLeg | TagUpdate, reason: str) -> None:
        """Keeps a write the database refused at replay in ``rejected.jsonl`` for a person to
        look at, and says so in the log: it is neither retried forever nor dropped."""
        entry = encode(write) | {"rejected": reason}
        self._keep_rejected(entry)
        log.error("journaled %s for %s refused by the database and kept in %s: %s",
                  entry["kind"], write.unique_id, self.directory / REJECTED, reason)

    def _keep_rejected(self, entry: dict) -> None:
        """Appends to ``rejected.jsonl``, owner-only like the journal (it holds tags and file
        names). Raises JournalError."""
        try:
            fd = os.open(self.directory / REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, (json.dumps(entry) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise JournalError(f"{self.directory / REJECTED} cannot be written: {exc}") from exc

    def remove(self, segment: Path) -> None:
        """Deletes a segment whose every entry reached the database; raises JournalError."""
        try:
            segment.unlink(missing_ok=True)
        except OSError as exc:
            raise JournalError(f"the replayed journal file {segment} cannot be removed: {exc}") from exc

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


def worker_directories(directory: str | os.PathLike) -> list[Path]:
    """The ``worker-N`` folders of ``directory`` (``serve --workers`` gives each its own)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if WORKER_DIR.match(p.name) and p.is_dir())


def _segment_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def _lock(directory: Path, wait: float) -> int | None:
    """An open descriptor holding the exclusive lock of ``directory``, or None if another
    process (or another open journal in this one) still holds it after ``wait`` seconds.
    The lock goes with the descriptor, also when the process dies."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            raise


def fsync_directory(directory: Path) -> None:
    """Makes the folder's entries (a file created, renamed or deleted) durable. Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data``: os.write may write less than it is given (a full disk, a
    signal), and says so only in what it returns. Raises OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"the disk took none of the {len(view)} bytes left to write")
        view = view[written:]


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0
