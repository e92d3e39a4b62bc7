"""The service's health from its workers' reports (``serve --workers``): how they combine, and
the folder they are shared through."""

from __future__ import annotations

import json
import re
import time

import pytest

from recording.ops.health import STALE_AFTER, Board, combine, report_path

OK = {"ok": True, "status": "ok", "database": "up", "journalBacklog": 0, "ami": "connected", "problems": []}
AWAY = {"ok": True, "status": "degraded", "database": "away", "journalBacklog": 4, "ami": "connected",
        "problems": ["the database is away: recordings start and their legs are journaled"]}
CANNOT = {"ok": False, "status": "unavailable", "database": "away", "journalBacklog": 0, "ami": "down",
          "problems": ["the database is away and the journal cannot be written"]}
NO_KEY = {"ok": False, "status": "unavailable", "database": "up", "journalBacklog": 0, "ami": "connected",
          "problems": ["no apiKey is known (recording-agi apikey generate)"]}


@pytest.mark.parametrize("reports, expected", [
    ([OK, OK], {"ok": True, "status": "ok", "database": "up", "journalBacklog": 0, "ami": "connected",
                "problems": []}),
    # One worker journals: the service is degraded, whoever is asked.
    ([OK, AWAY], {"ok": True, "status": "degraded", "database": "away", "journalBacklog": 4, "ami": "connected",
                  "problems": ["worker 2: the database is away: recordings start and their legs are journaled"]}),
    ([AWAY, AWAY], {"ok": True, "status": "degraded", "database": "away", "journalBacklog": 8, "ami": "connected",
                    "problems": ["workers 1, 2: the database is away: recordings start and their legs are journaled"]}),
    # One cannot start a recording, another can: degraded, not failing.
    ([CANNOT, OK], {"ok": True, "status": "degraded", "database": "away", "journalBacklog": 0, "ami": "down",
                    "problems": ["worker 1: the database is away and the journal cannot be written"]}),
    # None can: failing.
    ([NO_KEY, CANNOT], {"ok": False, "status": "unavailable", "database": "away", "journalBacklog": 0,
                        "ami": "down", "problems": ["worker 1: no apiKey is known (recording-agi apikey generate)",
                                                    "worker 2: the database is away and the journal cannot be written"]}),
])
def test_the_service_from_its_workers(reports, expected):
    combined = combine(list(enumerate(reports, 1)))
    assert {key: value for key, value in combined.items() if key != "workers"} == expected
    assert combined["workers"] == [{"worker": n, **report} for n, report in enumerate(reports, 1)]


def test_a_field_the_workers_disagree_on_and_this_module_does_not_know_is_shown_per_worker():
    combined = combine([(2, {**OK, "directory": "snapshot"}), (1, {**OK, "directory": "live"})])
    assert combined["directory"] == {"1": "live", "2": "snapshot"}
    assert combine([(1, {**OK, "directory": "live"}), (2, {**OK, "directory": "live"})])["directory"] == "live"


def test_workers_read_each_other_through_the_folder(tmp_path):
    first, second = Board(tmp_path, 1), Board(tmp_path, 2)
    first.publish(OK)
    second.publish(AWAY)

    assert first.combine(OK)["status"] == second.combine(AWAY)["status"] == "degraded"
    assert [w["worker"] for w in first.combine(OK)["workers"]] == [1, 2]
    # A worker's own report is the fresh one it is given, not its file.
    assert second.combine(OK)["status"] == "ok"
    assert not list(tmp_path.glob(".*"))  # no half-written file left

    second.withdraw()
    assert first.combine(OK)["workers"] == [{"worker": 1, **OK}]
    second.withdraw()  # again: nothing to do


def test_a_report_not_renewed_counts_as_a_worker_that_cannot(tmp_path):
    Board(tmp_path, 2).publish(OK)
    board = Board(tmp_path, 1)
    assert board.siblings(time.monotonic() + STALE_AFTER - 1) == [(2, OK)]
    ((worker, report),) = board.siblings(time.monotonic() + STALE_AFTER + 2)
    assert worker == 2 and report["ok"] is False and report["status"] == "unavailable"
    assert re.fullmatch(r"no report for (\d+)s \(stuck, or stopping\)", report["problems"][0])
    assert int(report["problems"][0].split()[3][:-1]) >= STALE_AFTER + 2
    combined = combine([(1, OK), *board.siblings(time.monotonic() + STALE_AFTER + 2)])
    assert combined["ok"] and combined["status"] == "degraded"


def test_a_file_that_cannot_be_read_is_passed_over(tmp_path):
    report_path(tmp_path, 3).write_text("{not json")
    report_path(tmp_path, 4).write_text(json.dumps({"worker": 4}))
    assert Board(tmp_path, 1).siblings() == []
