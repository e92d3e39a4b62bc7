"""The service's health under ``serve --workers``, whichever worker is asked: each worker
publishes its own report (what ``Application.health()`` returns) as a file in a folder the
supervisor makes, every second, and the worker that answers ``/healthz`` combines its fresh
report with its siblings' files. The service can start a recording when any worker can; it is
degraded when any worker cannot, or journals; a worker whose report is older than
:data:`STALE_AFTER` seconds counts as one that cannot (stuck, or on its way out).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger("recording.health")

# Set by the supervisor in each worker's environment: the folder of the workers' reports.
HEALTH_ENV = "RECORDING_HEALTH_DIR"
PUBLISH_EVERY = 1.0
STALE_AFTER = 5.0


def report_path(directory: str | Path, worker: int) -> Path:
    return Path(directory) / f"worker-{worker}.json"


class Board:
    """One worker's side of the folder: :meth:`publish` its report, :meth:`combine` the
    service's from its own and the others'."""

    def __init__(self, directory: str | Path, worker: int):
        self.directory = Path(directory)
        self.worker = worker
        self.path = report_path(directory, worker)
        self._scratch = self.directory / f".worker-{worker}.json.new"

    def publish(self, report: dict) -> None:
        """Writes ``report`` as this worker's, whole or not at all (readers never see half)."""
        # NOTE: CLOCK_MONOTONIC is one clock for the whole host on Linux, so a sibling can tell
        # the report's age by its own time.monotonic(); a wall clock could be stepped.
        body = {"worker": self.worker, "pid": os.getpid(), "at": time.monotonic(), "report": report}
        try:
            self._scratch.write_text(json.dumps(body))
            os.replace(self._scratch, self.path)
        except OSError as exc:
            log.warning("cannot publish this worker's health in %s: %s", self.directory, exc)

    def withdraw(self) -> None:
        self.path.unlink(missing_ok=True)

    def siblings(self, now: float | None = None) -> list[tuple[int, dict]]:
        """The other workers' reports, by worker number; a stale one as a report that cannot."""
        now = time.monotonic() if now is None else now
        found = []
        for path in sorted(self.directory.glob("worker-*.json")):
            try:
                body = json.loads(path.read_text())
                worker, at, report = int(body["worker"]), float(body["at"]), dict(body["report"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # gone between the listing and the read (a worker that stopped)
            if worker == self.worker:
                continue
            if now - at > STALE_AFTER:
                report = {"ok": False, "status": "unavailable",
                          "problems": [f"no report for {now - at:.0f}s (stuck, or stopping)"]}
            found.append((worker, report))
        return found

    def combine(self, own: dict) -> dict:
        """The service's report: this worker's ``own`` (fresh) with its siblings'."""
        return combine([(self.worker, own), *self.siblings()])


def combine(entries: Iterable[tuple[int, dict]]) -> dict:
    """The service's report from its workers' ``(number, report)``: the fields of one
    worker's report, over them all (``ok`` when any worker can start a recording; ``status``
    ``ok`` when every worker says so, ``unavailable`` when none can, else ``degraded``;
    ``database`` away (else slow) and ``ami`` down when so for any; ``journalBacklog`` the sum; each problem
    once, with the workers that have it), and ``workers``: each one's own report."""
    entries = sorted(entries, key=lambda entry: entry[0])
    reports = [report for _, report in entries]
    can = any(report.get("ok") for report in reports)
    if not can:
        status = "unavailable"
    elif all(report.get("status") == "ok" for report in reports):
        status = "ok"
    else:
        status = "degraded"
    combined: dict = {"ok": can, "status": status}
    for key in _other_keys(reports):
        values = [(worker, report[key]) for worker, report in entries if key in report]
        combined[key] = _over_workers(key, values)
    combined["problems"] = _problems(entries)
    combined["workers"] = [{"worker": worker, **report} for worker, report in entries]
    return combined


def _other_keys(reports: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for report in reports:
        keys.update(dict.fromkeys(k for k in report if k not in ("ok", "status", "problems", "workers")))
    return list(keys)


def _over_workers(key: str, values: list[tuple[int, object]]):
    seen = [value for _, value in values]
    if key == "journalBacklog":
        return sum(seen)
    if key == "database" and ("away" in seen or "slow" in seen):
        return "away" if "away" in seen else "slow"
    if key == "ami" and "down" in seen:
        return "down"
    if all(value == seen[0] for value in seen):
        return seen[0]
    # A field this module does not know, on which the workers differ: each one's value.
    return {str(worker): value for worker, value in values}


def _problems(entries: list[tuple[int, dict]]) -> list[str]:
    holders: dict[str, list[int]] = {}
    for worker, report in entries:
        for problem in report.get("problems", ()):
            holders.setdefault(problem, []).append(worker)
    lines = []
    for problem, workers in holders.items():
        who = f"worker {workers[0]}" if len(workers) == 1 else "workers " + ", ".join(map(str, workers))
        lines.append(f"{who}: {problem}")
    return lines
