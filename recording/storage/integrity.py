"""Proof that a recording was not altered: once a leg's file is complete, its size and SHA-256
are stored with the leg; ``recordings verify`` recomputes them.

NOTE: Asterisk sends no AMI event when MixMonitor closes a file (its own thread closes it after
the hangup: ami-events-mixmonitor-ext393), so "complete" is told by the file itself: the leg has
ended and the file's size and modification time stayed the same for RECORDING_FILE_QUIET
seconds, as this process saw them (not by the file's time against our clock, which on a share
is the other host's clock).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterator

from ..domain import LegView, utcnow
from . import audio
from .audio import MonitorDirectory
from .store import Store

log = logging.getLogger("recording.integrity")

# Legs that ended longer ago than this without a complete file are not looked at again (a
# MixMonitor with option b that was never bridged writes no file at all); verify lists them.
HASH_WINDOW = timedelta(days=7)
HASH_BATCH = 500
PAGE = 500


class Hasher:
    """Stores the digests of complete files, one pass at a time (see the module). It remembers
    what it saw of each file in the previous passes, to tell when a file stopped changing."""

    def __init__(self, store: Store, *, quiet: float, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow):
        self.store = store
        self.quiet = quiet
        self.stop = stop or threading.Event()
        self.clock = clock
        self.now = now
        # leg id -> (size, mtime_ns, when first seen so)
        self._seen: dict[str, tuple[int, int, float]] = {}
        self.hashed = 0
        self.passes = 0

    def run(self, monitor: MonitorDirectory) -> int:
        """One pass over the ended legs without a digest; returns how many got one. A pass does
        nothing when the monitor directory cannot be seen (its problem is logged by the caller)."""
        self.passes += 1
        if monitor.problem() is not None:
            return 0
        started = self.now()
        legs = self.store.unhashed_legs(started - HASH_WINDOW, HASH_BATCH)
        candidates = {leg.id for leg in legs}
        self._seen = {leg_id: seen for leg_id, seen in self._seen.items() if leg_id in candidates}
        stored = 0
        for leg in legs:
            if self.stop.is_set():
                break
            if leg.end is None or (started - leg.end).total_seconds() < self.quiet:
                continue
            stored += self._consider(leg, monitor)
        self.hashed += stored
        return stored

    def _consider(self, leg: LegView, monitor: MonitorDirectory) -> bool:
        look = monitor.look(leg.file)
        if look.status != "present":
            self._seen.pop(leg.id, None)
            return False
        now = self.clock()
        size, mtime, since = self._seen.get(leg.id, (-1, -1, now))
        if (size, mtime) != (look.size, look.mtime_ns):
            self._seen[leg.id] = (look.size, look.mtime_ns, now)
            return False
        if now - since < self.quiet:
            return False
        try:
            found = audio.digest(look.path)
        except OSError as exc:
            log.warning("the file of leg %s cannot be read to hash it: %s", leg.id, exc)
            return False
        if found is None or (found.size, found.mtime_ns) != (look.size, look.mtime_ns):
            self._seen[leg.id] = (-1, -1, now)  # it changed after all: watch it again
            return False
        self._seen.pop(leg.id, None)
        if not self.store.store_digest(leg.id, found.size, found.sha256, self.now()):
            return False
        log.info("leg %s complete: %s, %d bytes, SHA-256 %s", leg.id, look.path, found.size, found.sha256)
        return True


@dataclass(frozen=True)
class Finding:
    """One leg ``recordings verify`` reports: ``kind`` is changed, vanished, unreadable or
    unhashed, and ``detail`` one sentence."""

    leg: LegView
    kind: str
    detail: str


@dataclass
class VerifyReport:
    problem: str | None = None
    checked: int = 0
    unchanged: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("changed", "vanished", "unreadable",
                                                                           "unhashed"), 0))

    @property
    def ok(self) -> bool:
        """No file proven changed or gone, none unreadable, and the files could be seen at all."""
        return self.problem is None and not (self.counts["changed"] or self.counts["vanished"]
                                             or self.counts["unreadable"])

    def summary(self) -> str:
        if self.problem:
            return f"nothing verified: {self.problem}"
        c = self.counts
        return (f"{self.checked} legs checked: {self.unchanged} unchanged, {c['changed']} changed, "
                f"{c['vanished']} vanished, {c['unreadable']} unreadable, {c['unhashed']} never hashed")


def verify(store: Store, monitor: MonitorDirectory, since: datetime | None, report: VerifyReport,
           keep: Callable[[list[tuple[str, datetime, str, str | None]]], None] | None = None) -> Iterator[Finding]:
    """Recomputes the digest of every ended leg started at ``since`` or later whose audio is
    kept, yielding each leg whose file changed, vanished, cannot be read or was never hashed;
    ``report`` counts them all. ``keep``, when given, is handed what was found of each hashed
    leg, a page at a time, as (leg id, when, outcome, detail): the leg's last verification."""
    report.problem = monitor.problem()
    if report.problem is not None:
        return
    after = None
    while True:
        page = store.ended_legs_page(since, after, PAGE)
        if not page:
            return
        after = (page[-1].start, page[-1].id)
        kept = []
        for leg in page:
            report.checked += 1
            finding = _check(leg, monitor)
            if finding is None or finding.kind != "unhashed":
                kept.append((leg.id, utcnow(), finding.kind if finding else "unchanged",
                             finding.detail if finding else None))
            if finding is None:
                report.unchanged += 1
                continue
            report.counts[finding.kind] += 1
            yield finding
        if keep is not None:
            keep(kept)


def _check(leg: LegView, monitor: MonitorDirectory) -> Finding | None:
    look = monitor.look(leg.file)
    if leg.file_sha256 is None:
        there = f"{look.path} has {look.size} bytes" if look.status == "present" else look.why
        return Finding(leg, "unhashed", f"never hashed: {there}")
    hashed = f"hashed at {leg.hashed_at.isoformat(timespec='seconds')}: {leg.file_size} bytes"
    if look.status == "gone":
        return Finding(leg, "vanished", f"{look.why} ({hashed})")
    if look.status == "unseen":
        return Finding(leg, "unreadable", look.why)
    if look.size != leg.file_size:
        return Finding(leg, "changed", f"{look.path} has {look.size} bytes ({hashed})")
    try:
        found = audio.digest(look.path)
    except OSError as exc:
        return Finding(leg, "unreadable", f"{look.path} cannot be read: {exc.strerror or exc}")
    if found is None:
        return Finding(leg, "changed", f"{look.path} is being written to ({hashed})")
    if found.sha256 != leg.file_sha256:
        return Finding(leg, "changed", f"{look.path} has SHA-256 {found.sha256}, not {leg.file_sha256} ({hashed})")
    return None
