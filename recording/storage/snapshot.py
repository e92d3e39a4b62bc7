"""The directory on disk: the apiKey hash, the users with their groups and the extension
attachments, as last read from the database. It lets a service that starts while the database
cannot be reached check apiKeys and resolve agents and attachments all the same.

One JSON file, ``directory-snapshot.json``, in the journal directory, owner-only (0600), and
replaced atomically (a temporary file in the same directory, fsynced, renamed over the old one)
each time the directory is read from the database. It holds the apiKey's hash, never the key.

Under ``serve --workers`` each worker keeps one in its ``worker-N`` folder; a process looking
for a snapshot takes the newest of its own folder's, its ``worker-*`` subfolders', and for a
``worker-N`` folder its parent's and its siblings' (as the journal takes over their files).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..domain import DirectorySnapshot, UserRef
from ..errors import StorageUnavailable
from .journal import WORKER_DIR, fsync_directory, worker_directories

log = logging.getLogger("recording.snapshot")

NAME = "directory-snapshot.json"
VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    """A directory as read from ``database`` (its URL without the password) at ``taken_at``."""

    directory: DirectorySnapshot
    taken_at: datetime
    database: str
    path: Path

    def age(self, now: datetime | None = None) -> float:
        """Seconds since the snapshot was taken."""
        return ((now or datetime.now(timezone.utc)) - self.taken_at).total_seconds()

    @property
    def when(self) -> str:
        return self.taken_at.isoformat(timespec="seconds")


def encode(directory: DirectorySnapshot, database: str, taken_at: datetime) -> bytes:
    users = sorted(directory.users.values(), key=lambda u: u.id)
    return json.dumps({
        "version": VERSION,
        "taken_at": taken_at.isoformat(),
        "database": database,
        "api_key_hash": directory.api_key_hash,
        "users": [{"id": u.id, "login": u.login, "groups": sorted(u.groups)} for u in users],
        "attachments": dict(sorted(directory.attachments.items())),
    }, separators=(",", ":")).encode()


def decode(raw: bytes, path: Path) -> Snapshot:
    """Raises ValueError (KeyError, TypeError) for a file that is not a snapshot of ours."""
    data = json.loads(raw)
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
    users = {
        u["login"].casefold(): UserRef(int(u["id"]), u["login"], frozenset(u["groups"])) for u in data["users"]
    }
    attachments = {str(extension): int(user) for extension, user in data["attachments"].items()}
    taken_at = datetime.fromisoformat(data["taken_at"])
    if taken_at.tzinfo is None:
        raise ValueError("taken_at has no time zone")
    return Snapshot(DirectorySnapshot(data["api_key_hash"], users, attachments), taken_at, data["database"], path)


def save(folder: str | os.PathLike, directory: DirectorySnapshot, database: str,
         taken_at: datetime | None = None) -> Path:
    """Writes the snapshot into ``folder`` (made owner-only if missing) atomically: a reader
    sees the old file or the new one, whole, also after a crash. Raises OSError."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = encode(directory, database, taken_at or datetime.now(timezone.utc))
    # NOTE: mkstemp makes the file 0600 whatever the umask: the hash never sits readable.
    handle, temporary = tempfile.mkstemp(prefix=f".{NAME}.", dir=folder)
    try:
        try:
            os.write(handle, payload)
            os.fsync(handle)
        finally:
            os.close(handle)
        target = folder / NAME
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(folder)
    return target


def load(path: Path) -> Snapshot | None:
    """The snapshot in ``path``; None when there is none, or it cannot be read (said in the log:
    an atomic write never leaves a damaged file, so someone else made it)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("directory snapshot %s cannot be read: %s", path, exc)
        return None
    try:
        return decode(raw, path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s is not a directory snapshot this version can use (%s): ignored", path, exc)
        return None


def candidates(folder: str | os.PathLike) -> list[Path]:
    """Where a process whose journal is ``folder`` looks for a snapshot (see the module)."""
    folder = Path(folder)
    found = [folder, *worker_directories(folder)]
    if WORKER_DIR.match(folder.name):
        parent = folder.parent
        found += [parent] + [p for p in worker_directories(parent) if p.name != folder.name]
    return [place / NAME for place in found]


def find(folder: str | os.PathLike, database: str) -> Snapshot | None:
    """The newest snapshot of ``database`` a process whose journal is ``folder`` can use."""
    usable = [s for s in map(load, candidates(folder)) if s is not None and s.database == database]
    return max(usable, key=lambda s: s.taken_at, default=None)


def require(folder: str | os.PathLike, database: str, unreachable: StorageUnavailable) -> Snapshot:
    """The snapshot to serve from while the database is ``unreachable``; raises
    StorageUnavailable with one sentence saying why there is none."""
    found = find(folder, database)
    if found is not None:
        return found
    others = sorted({s.database for s in map(load, candidates(folder)) if s is not None})
    if others:
        why = f"the directory snapshot in {Path(folder).absolute()} is of another database ({', '.join(others)})"
    else:
        why = (f"there is no directory snapshot in {Path(folder).absolute()} to serve from (one is written "
               "once the service has read the directory from the database)")
    raise StorageUnavailable(f"{unreachable}, and {why}")

