"""The recordings' files as this host sees them: MixMonitor writes them on the Asterisk host, at
the path RECORDING_MONITOR_TEMPLATE gave; the service reads and deletes them only when it can see
that folder (the same host, or a share, RECORDING_MONITOR_MOUNT), and says why when it cannot.

Nothing here touches the database; :mod:`.retention` and :mod:`.integrity` put the two together.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .journal import fsync_directory

HASH_CHUNK = 1 << 20
# MixMonitor picks the format from the file's extension; what a browser should be told of each.
CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".wav16": "audio/wav",
    ".WAV": "audio/wav",  # wav49: GSM in a WAV container
    ".gsm": "audio/x-gsm",
    ".ulaw": "audio/basic",
    ".ul": "audio/basic",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".sln": "audio/L16;rate=8000",
}
HOW_TO_SEE = ("run the service on the Asterisk host, or share the monitor directory with this host "
              "(RECORDING_MONITOR_MOUNT names where it is mounted)")


def template_root(template: str) -> str:
    """The folder at the start of a monitor template, before its first field:
    ``/var/spool/asterisk/monitor`` for ``/var/spool/asterisk/monitor/{date:%Y}/{uniqueid}.wav``.
    '' for a relative template (MixMonitor puts those in Asterisk's own monitor directory)."""
    fixed = template.split("{", 1)[0]
    if not os.path.isabs(fixed):
        return ""
    folder = fixed.rstrip("/") if fixed.endswith("/") else os.path.dirname(fixed)
    return os.path.normpath(folder or "/")


FALLBACK_TYPE = "application/octet-stream"


def content_type(path: str | os.PathLike) -> str:
    """What a file of MixMonitor's is, by its extension (the format MixMonitor wrote)."""
    return CONTENT_TYPES.get(Path(path).suffix, FALLBACK_TYPE)


@dataclass(frozen=True)
class Look:
    """What this host sees of a leg's file: ``present`` (with its size and modification time),
    ``gone`` (nothing at ``path``), or ``unseen`` (the service cannot look: ``why`` says so)."""

    status: str
    path: Path | None = None
    size: int = 0
    mtime_ns: int = 0
    why: str = ""


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str
    mtime_ns: int


class MonitorDirectory:
    """Asterisk's monitor directory (the fixed start of the template) and where this host sees
    it: ``mount`` when given, else the same path."""

    @classmethod
    def of(cls, settings) -> "MonitorDirectory":
        """The monitor directory the service's settings name (RECORDING_MONITOR_TEMPLATE and
        RECORDING_MONITOR_MOUNT)."""
        return cls(settings.monitor_template, settings.monitor_mount)

    def __init__(self, template: str, mount: str = ""):
        self.template = template
        self.root = template_root(template)
        if mount:
            self.local_root: Path | None = Path(mount)
        else:
            self.local_root = Path(self.root) if self.root else None

    def problem(self) -> str | None:
        """None when this host can see the monitor directory; else one sentence saying why not.

        An empty folder counts as not seen: it is what an unmounted share, or a host that is not
        the Asterisk host, shows, and a purge must not take its missing files for deleted ones."""
        if self.local_root is None:
            return (f"RECORDING_MONITOR_TEMPLATE {self.template!r} names files relative to Asterisk's own monitor "
                    "directory, which this service cannot know: set RECORDING_MONITOR_MOUNT to where this host "
                    "sees it")
        where = self.local_root
        try:
            info = os.stat(where)
        except FileNotFoundError:
            return f"the monitor directory {where} does not exist on this host: {HOW_TO_SEE}"
        except OSError as exc:
            return f"the monitor directory {where} cannot be read here ({exc.strerror or exc}): {HOW_TO_SEE}"
        if not stat.S_ISDIR(info.st_mode):
            return f"the monitor directory {where} is not a directory on this host: {HOW_TO_SEE}"
        try:
            with os.scandir(where) as entries:
                empty = next(entries, None) is None
        except OSError as exc:
            return f"the monitor directory {where} cannot be listed by this service ({exc.strerror or exc})"
        if empty:
            return (f"the monitor directory {where} is empty on this host (a share not mounted?): "
                    f"the recordings are not visible here; {HOW_TO_SEE}")
        return None

    def local(self, file: str) -> Path | None:
        """Where this host finds a leg's file, or None when the file is not inside the monitor
        directory (recorded under another template, or a path that climbs out of it)."""
        if self.local_root is None:
            return None
        if not self.root:
            if os.path.isabs(file):
                return None
            inside = os.path.normpath(file)
        else:
            normal = os.path.normpath(file)
            if not os.path.isabs(normal) or os.path.commonpath([normal, self.root]) != self.root:
                return None
            inside = os.path.relpath(normal, self.root)
        if inside == ".." or inside.startswith("../") or inside == ".":
            return None
        return self.local_root / inside

    def look(self, file: str) -> Look:
        """What this host sees of ``file`` now (a stat; no content is read)."""
        problem = self.problem()
        if problem is not None:
            return Look("unseen", why=problem)
        path = self.local(file)
        if path is None:
            return Look("unseen", why=f"{file} is not inside the monitor directory {self.root or '(relative)'} "
                                      "of RECORDING_MONITOR_TEMPLATE, so the service leaves it alone")
        try:
            real = path.resolve(strict=True)
            info = real.stat()
        except FileNotFoundError:
            return Look("gone", path, why=f"no file at {path}")
        except OSError as exc:
            return Look("unseen", path, why=f"{path} cannot be read here ({exc.strerror or exc})")
        # NOTE: a link out of the monitor directory is not followed (nor served, nor hashed).
        if not real.is_relative_to(self.local_root.resolve()) or not stat.S_ISREG(info.st_mode):
            return Look("unseen", path, why=f"{path} is not a plain file inside the monitor directory")
        return Look("present", path, info.st_size, info.st_mtime_ns)


def digest(path: Path) -> Digest | None:
    """The file's size and SHA-256, read in chunks; None when it changed while being read (it is
    still being written: try again later). Raises OSError when it cannot be read."""
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        sha = hashlib.sha256()
        size = 0
        while chunk := handle.read(HASH_CHUNK):
            sha.update(chunk)
            size += len(chunk)
        after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
        return None
    return Digest(size, sha.hexdigest(), after.st_mtime_ns)


def delete(path: Path, *, sync: bool = True) -> bool:
    """Deletes the file and (``sync``) makes the deletion durable by syncing its folder, so
    that a leg marked purged afterwards cannot find its file back after a power cut; a caller
    deleting many files syncs their folders once with :func:`.journal.fsync_directory`. False
    when there was no file. Raises OSError when it cannot be deleted."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync:
        fsync_directory(path.parent)
    return True
