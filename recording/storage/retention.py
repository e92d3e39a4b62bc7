"""Retention: the audio of ended legs past a period is deleted, except under a legal hold; the
leg stays, as ``purged``, with when and why, and each purge is one audit line.

One leg's purge is three steps, each committed (or synced to disk) before the next begins:

1. *begin*: the intent, its time and reason, are written with the leg. A held leg is not
   begun, and a begun one can no longer be held (a database check says so too).
2. *delete*: the file is deleted and its folder synced.
3. *finish*: the leg becomes ``purged``, keeping the state it had ended in.

So a crash leaves, at worst, a leg marked for purge (step 1 done) whose file exists or not;
never a leg marked purged whose file still exists (3 follows 2), and never a deleted file whose
leg is not marked (2 follows 1). Every purge first finishes the legs left between 1 and 3, and
the service does so at start-up.

Nothing is done when the monitor directory cannot be seen from this host: a file this host
cannot see is not a deleted file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from ..domain import LegView
from . import audio
from .audio import MonitorDirectory
from .store import Store

audit = logging.getLogger("recording.audit")
log = logging.getLogger("recording.retention")

PAGE = 500


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    """Purges legs of ``store`` whose files are in ``monitor``. ``stop``, when set, ends a run
    between two legs (the service's shutdown)."""

    def __init__(self, store: Store, monitor: MonitorDirectory, *, stop: threading.Event | None = None,
                 now: Callable[[], datetime] = utcnow):
        self.store = store
        self.monitor = monitor
        self.stop = stop or threading.Event()
        self.now = now

    def run(self, older_than: timedelta, reason: str, *, dry_run: bool = False) -> PurgeReport:
        """Purges every ended leg whose end is more than ``older_than`` ago and that is not held;
        ``reason`` is stored with each and written in its audit line."""
        report = PurgeReport(cutoff=self.now() - older_than, dry_run=dry_run)
        report.problem = self.monitor.problem()
        if report.problem is not None:
            return report
        if not dry_run:
            self.finish_interrupted(report)
        after = None
        while not self.stop.is_set():
            page = self.store.legs_ended_before(report.cutoff, after, PAGE)
            if not page:
                break
            after = (page[-1].end, page[-1].id)
            for leg in page:
                if self.stop.is_set():
                    break
                if leg.held:
                    report.held.append(leg)
                elif leg.purge_started_at is not None:
                    continue  # another purge is at it (or it was finished above)
                elif dry_run:
                    self._preview(leg, report)
                else:
                    self._purge(leg, reason, report)
        return report

    def finish_interrupted(self, report: PurgeReport | None = None) -> PurgeReport:
        """Finishes the purges that were begun and not marked done (a crash, a kill, a
        database that went away between the steps)."""
        report = report or PurgeReport()
        if report.problem is None:
            report.problem = self.monitor.problem()
        if report.problem is not None:
            return report
        for leg in self.store.unfinished_purges():
            if self.stop.is_set():
                break
            if self._finish(leg, leg.purge_reason or "", report, interrupted=True):
                report.finished += 1
        return report

    def _preview(self, leg: LegView, report: PurgeReport) -> None:
        look = self.monitor.look(leg.file)
        if look.status == "present":
            report.purged.append((leg, f"would delete {look.path} ({look.size} bytes)"))
        elif look.status == "gone":
            report.purged.append((leg, f"would mark it purged: {look.why}"))
        else:
            report.failed.append((leg, look.why))

    def _purge(self, leg: LegView, reason: str, report: PurgeReport) -> None:
        look = self.monitor.look(leg.file)
        if look.status == "unseen":
            report.failed.append((leg, look.why))
            return
        if not self.store.begin_purge(leg.id, self.now(), reason):
            return  # held, or begun by another purge, meanwhile
        self._finish(leg, reason, report)

    def _finish(self, leg: LegView, reason: str, report: PurgeReport, *, interrupted: bool = False) -> bool:
        """Steps 2 and 3 of a begun purge. True when the leg is purged now."""
        look = self.monitor.look(leg.file)
        if look.status == "unseen":
            # Left begun: the next purge finishes it once the file can be seen again.
            report.failed.append((leg, f"its purge was begun and is left to finish later: {look.why}"))
            return False
        if look.status == "present":
            try:
                audio.delete(look.path)
            except OSError as exc:
                # Taken back, so the leg may be held meanwhile; the next purge decides again.
                self.store.abandon_purge(leg.id)
                report.failed.append((leg, f"{look.path} could not be deleted: {exc.strerror or exc}"))
                return False
            done = f"deleted {look.path}"
        else:
            done = f"its file was already gone ({look.why})"
        if not self.store.finish_purge(leg.id, self.now()):
            return False  # another purge finished it meanwhile
        report.purged.append((leg, done))
        audit.info(
            "purged the audio of leg %s (call %s, leg %d, %s, ended %s)%s: %s; %s",
            leg.id, leg.unique_id, leg.leg, leg.state, leg.end.isoformat(timespec="seconds") if leg.end else "-",
            " finishing an interrupted purge" if interrupted else "", reason, done,
        )
        return True


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
