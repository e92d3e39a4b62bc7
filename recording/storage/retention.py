"""Retention: the audio of ended legs past a period is deleted, except under a legal hold; the
leg stays, as ``purged``, with when and why, and each purge is one audit line.

One leg's purge is three steps, each committed (or synced to disk) before the next begins (for a
batch of legs at a time):

1. *begin*: the intent, its time and reason, are written with the leg. A held leg is not
   begun, and a begun one can no longer be held (a database check says so too).
2. *delete*: the file is deleted and its folder synced.
3. *finish*: the leg becomes ``purged``, keeping the state it had ended in.

So a crash leaves, at worst, a leg marked for purge (step 1 done) whose file exists or not;
never a leg marked purged whose file still exists (3 follows 2), and never a deleted file whose
leg is not marked (2 follows 1). Every purge first finishes the legs left between 1 and 3, and
the service does so at start-up. One purge runs at a time among all the processes sharing the
database (a lease, renewed each batch): legs another purge has begun are that purge's, not
interrupted ones.

Nothing is done when the monitor directory cannot be seen from this host: a file this host
cannot see is not a deleted file.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from ..domain import LegView, utcnow
from . import audio
from . import audit as audit_table
from .audio import MonitorDirectory
from .journal import fsync_directory
from .store import Store

audit = logging.getLogger("recording.audit")
log = logging.getLogger("recording.retention")

# Legs purged together: one transaction begins them, one finishes them.
BATCH = 100
# The lease a purge holds; one that stops renewing it (a crash) lets the next take over after
# LEASE_TTL, and that one finishes what it left.
LEASE = "retention.purger"
LEASE_TTL = timedelta(minutes=10)


@dataclass
class PurgeReport:
    """What a purge did. ``problem``: the monitor directory cannot be seen, so nothing was done.
    ``purged`` and ``failed`` hold (leg, sentence) pairs; with ``dry_run`` nothing was changed
    and ``purged`` lists what would have been."""

    cutoff: datetime | None = None
    dry_run: bool = False
    problem: str | None = None
    purged: list[tuple[LegView, str]] = field(default_factory=list)
    held: list[LegView] = field(default_factory=list)
    failed: list[tuple[LegView, str]] = field(default_factory=list)
    finished: int = 0  # of them, interrupted purges finished

    @property
    def ok(self) -> bool:
        """Whether everything past the period that is not held was purged."""
        return self.problem is None and not self.failed

    def summary(self) -> str:
        if self.problem:
            return f"nothing purged: {self.problem}"
        verb = "would be purged" if self.dry_run else "purged"
        parts = [f"{len(self.purged)} legs {verb}"]
        if self.finished:
            parts.append(f"{self.finished} of them finishing an interrupted purge")
        parts.append(f"{len(self.held)} held legs kept")
        if self.failed:
            parts.append(f"{len(self.failed)} could not be purged")
        ended = f" (ended before {self.cutoff.isoformat(timespec='seconds')})" if self.cutoff else ""
        return ", ".join(parts) + ended


class Purger:
    """Purges legs of ``store`` whose files are in ``monitor``, a batch of legs at a time (each
    step once per batch: one transaction to begin, one to finish, one sync per folder). ``stop``,
    when set, ends a run between two legs (the service's shutdown): what was begun is finished
    by the next run."""

    def __init__(self, store: Store, monitor: MonitorDirectory, *, stop: threading.Event | None = None,
                 now: Callable[[], datetime] = utcnow, batch: int = BATCH, by: str = "retention",
                 door: str = "service"):
        self.store = store
        # Who purges, in the audit table: the service's retention, or a system user at the command line.
        self.by, self.door = by, door
        self.monitor = monitor
        self.stop = stop or threading.Event()
        self.now = now
        self.batch = batch
        # Who holds the purge's lease while this purge runs: unique to this Purger.
        self.owner = lease_owner()

    def run(self, older_than: timedelta, reason: str, *, dry_run: bool = False) -> PurgeReport:
        """Purges every ended leg whose end is more than ``older_than`` ago and that is not held;
        ``reason`` is stored with each and written in its audit line. One purge at a time among
        all the processes that share the database (``problem`` says so when another runs)."""
        report = PurgeReport(cutoff=self.now() - older_than, dry_run=dry_run)
        report.problem = self.monitor.problem()
        if report.problem is not None or dry_run:
            if report.problem is None:
                self._walk(report, reason)
            return report
        if not self._hold_lease(report):
            return report
        try:
            self._finish_begun(report)
            self._walk(report, reason)
        finally:
            self.store.release_lease(LEASE, self.owner)
        return report

    def _walk(self, report: PurgeReport, reason: str) -> None:
        after = None
        while not self.stop.is_set():
            page = self.store.legs_ended_before(report.cutoff, after, self.batch)
            if not page:
                break
            after = (page[-1].end, page[-1].id)
            todo = []
            for leg in page:
                if leg.held:
                    report.held.append(leg)
                elif leg.purge_started_at is not None:
                    continue  # begun, and left by the finishing above (its file cannot be seen)
                elif report.dry_run:
                    self._preview(leg, report)
                else:
                    todo.append(leg)
            if todo and not self._hold_lease(report):
                break
            self._purge(todo, reason, report)

    def finish_interrupted(self) -> PurgeReport:
        """Finishes the purges that were begun and not marked done (a crash, a kill, a
        database that went away between the steps), unless a purge runs elsewhere (then it is
        that one's to finish, and ``problem`` says so)."""
        report = PurgeReport()
        report.problem = self.monitor.problem()
        # Nothing begun, nothing to take the lease for (a start-up must not hold up a purge).
        if report.problem is not None or not self.store.unfinished_purges() or not self._hold_lease(report):
            return report
        try:
            self._finish_begun(report)
        finally:
            self.store.release_lease(LEASE, self.owner)
        return report

    def _finish_begun(self, report: PurgeReport) -> None:
        # NOTE: read again under the lease, not taken from before it: a leg another purge
        # abandoned meanwhile (its file could not be deleted) must not have its file deleted here.
        begun = self.store.unfinished_purges()
        for start in range(0, len(begun), self.batch):
            if self.stop.is_set() or not self._hold_lease(report):
                break
            report.finished += self._finish(begun[start:start + self.batch], report, interrupted=True)

    def _hold_lease(self, report: PurgeReport) -> bool:
        """Takes (or renews) the purge's lease; from a holder on this host whose process is
        gone at once (a purge killed half way is finished by the next), from one elsewhere
        after LEASE_TTL. NOTE: without it a purge starting in one process took the legs another
        process's purge had just begun for interrupted ones, and finished them under its feet."""
        now = self.now()
        if self.store.lease(LEASE, self.owner, LEASE_TTL, now):
            return True
        holder = self.store.lease_holder(LEASE)
        if holder is not None and _dead_here(holder) and self.store.lease(LEASE, self.owner, LEASE_TTL, now,
                                                                          take_from=holder):
            return True
        report.problem = report.problem or f"another purge is under way ({holder}); try again later"
        return False

    def _preview(self, leg: LegView, report: PurgeReport) -> None:
        look = self.monitor.look(leg.file)
        if look.status == "present":
            report.purged.append((leg, f"would delete {look.path} ({look.size} bytes)"))
        elif look.status == "gone":
            report.purged.append((leg, f"would mark it purged: {look.why}"))
        else:
            report.failed.append((leg, look.why))

    def _purge(self, legs: list[LegView], reason: str, report: PurgeReport) -> None:
        seen = []
        for leg in legs:
            look = self.monitor.look(leg.file)
            if look.status == "unseen":
                report.failed.append((leg, look.why))
            else:
                seen.append(leg)
        # Step 1 for the whole batch; a leg held, or begun by another purge, meanwhile is left out.
        begun = self.store.begin_purges([leg.id for leg in seen], self.now(), reason)
        self._finish([replace(leg, purge_reason=reason) for leg in seen if leg.id in begun], report)

    def _finish(self, legs: list[LegView], report: PurgeReport, *, interrupted: bool = False) -> int:
        """Steps 2 and 3 for begun legs; returns how many are purged now."""
        done: dict[str, str] = {}
        folders: dict[Path, list[str]] = {}
        for leg in legs:
            if self.stop.is_set():
                break  # left begun: finished by the next run
            look = self.monitor.look(leg.file)
            if look.status == "unseen":
                report.failed.append((leg, f"its purge was begun and is left to finish later: {look.why}"))
            elif look.status == "present":
                try:
                    audio.delete(look.path, sync=False)
                except OSError as exc:
                    # Taken back, so the leg may be held meanwhile; the next purge decides again.
                    self.store.abandon_purge(leg.id)
                    report.failed.append((leg, f"{look.path} could not be deleted: {exc.strerror or exc}"))
                    continue
                done[leg.id] = f"deleted {look.path}"
                folders.setdefault(look.path.parent, []).append(leg.id)
            else:
                done[leg.id] = f"its file was already gone ({look.why})"
        for folder, ids in folders.items():
            try:
                fsync_directory(folder)
            except OSError as exc:
                for leg_id in ids:  # not durably deleted: left begun, for the next run
                    done.pop(leg_id)
                log.warning("the deletions in %s could not be synced (%s): %d legs left to finish later",
                            folder, exc.strerror or exc, len(ids))
        def audited(conn, finished: set[str]) -> None:
            audit_table.write(conn, [
                audit_table.Event.of("purge", leg, self.by, self.door, detail=leg.purge_reason)
                for leg in legs if leg.id in finished
            ])

        finished = self.store.finish_purges(list(done), self.now(), then=audited)
        for leg in legs:
            if leg.id in finished:
                report.purged.append((leg, done[leg.id]))
                audit.info(
                    "purged the audio of leg %s (call %s, leg %d, %s, ended %s)%s: %s; %s", leg.id, leg.unique_id,
                    leg.leg, leg.state, leg.end.isoformat(timespec="seconds") if leg.end else "-",
                    " finishing an interrupted purge" if interrupted else "", leg.purge_reason, done[leg.id],
                )
        return len(finished)


def lease_owner() -> str:
    """A lease holder's name, unique to its caller: ``host/pid/random``, so that a holder on
    this host whose process is gone can be told (:func:`_dead_here`)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _dead_here(owner: str) -> bool:
    """Whether a lease owner (``host/pid/...``) is a process of this host that no longer runs."""
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def hold_sentence(leg: LegView) -> str:
    """Who holds the leg since when, and why, for messages."""
    if not leg.held:
        return f"leg {leg.id} is not held"
    why = f" ({leg.hold_reason})" if leg.hold_reason else ""
    return f"leg {leg.id} is held since {leg.held_at.isoformat(timespec='seconds')} by {leg.held_by}{why}"


def audit_hold(leg: LegView, held: bool, changed: bool, by: str) -> None:
    """The audit line of a hold placed or released (or asked for, and so already)."""
    what = ("held" if held else "released") if changed else ("already held" if held else "not held: nothing released")
    why = f" ({leg.hold_reason})" if held and leg.hold_reason else ""
    audit.info("legal hold on leg %s (call %s, leg %d) %s by %s%s", leg.id, leg.unique_id, leg.leg, what, by, why)
