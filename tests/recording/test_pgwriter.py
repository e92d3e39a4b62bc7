"""PostgreSQL's hot path committed from the event loop (storage/pgwriter.py), against the real
server: a group of writes is one statement, and what it cannot finish goes to the store's
general path on the writer thread, whose answer the session gets."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from recording.domain import TagUpdate
from recording.errors import StorageRefused, StorageUnavailable
from recording.storage.batching import BatchThread
from recording.storage.pgwriter import LoopWriter
from recording.storage.store import Store
from tests.recording.test_store import NOW, leg
from tests.throwaway_postgres import prepared_cluster


@pytest.fixture
def pg_store(store):
    if store.dialect != "postgresql":
        pytest.skip("the loop writer is PostgreSQL's")
    return store


def run_writer(url: str, scenario):
    """Runs ``scenario(writer, thread)`` with a started LoopWriter whose fallback is a real
    writer thread on ``url``; both are stopped after, whatever happens."""
    async def main():
        store = Store(url)
        thread = BatchThread("test-writer", store.commit, lambda exc: exc)
        thread.start()
        writer = LoopWriter(url, thread.enqueue)
        await writer.start()
        try:
            async with asyncio.timeout(30):
                return await scenario(writer, thread)
        finally:
            await writer.stop()
            thread.stop()
            store.close()

    return asyncio.run(main())


async def outcomes(futures):
    return await asyncio.gather(*futures, return_exceptions=True)


def test_writes_queued_together_are_one_statement(pg_store):
    writes = [leg(unique_id=f"9.{n}", tag=f"T{n}") for n in range(20)] + [TagUpdate("9.0", "newer", NOW)]

    async def scenario(writer, thread):
        return await outcomes([writer.enqueue(w) for w in writes]), writer.batches, thread.batches

    results, batches, thread_batches = run_writer(pg_store.url, scenario)

    assert [r.status for r in results] == ["STARTED"] * 20 + ["TAGGED"]
    assert (batches, thread_batches) == (1, 0)
    assert pg_store.find_legs(unique_id="9.0")[0].external_reference == "newer"


def test_a_leg_for_a_call_already_recorded_is_answered_by_the_store(pg_store):
    first, second = leg(unique_id="8.1"), leg(unique_id="8.1", number=2)

    async def scenario(writer, thread):
        return await outcomes([writer.enqueue(first), writer.enqueue(second)]), thread.items

    (a, b), handed_over = run_writer(pg_store.url, scenario)

    # Which of the two the statement inserted is PostgreSQL's choice; the other is told so.
    winner, loser = (a, b) if a.status == "STARTED" else (b, a)
    assert (winner.status, loser.status) == ("STARTED", "ALREADY_RECORDING")
    assert loser.leg_id == winner.leg_id
    assert handed_over == 1


def test_a_refused_batch_is_written_one_by_one_and_only_the_bad_write_fails(pg_store, caplog):
    good = [leg(unique_id=f"7.{n}") for n in range(3)]
    bad = replace(leg(unique_id="7.bad"), channel="x" * 300)  # longer than the column allows

    async def scenario(writer, thread):
        return await outcomes([writer.enqueue(w) for w in (good[0], bad, *good[1:])])

    results = run_writer(pg_store.url, scenario)

    assert [type(r).__name__ for r in results] == ["CommitResult", "StorageRefused", "CommitResult", "CommitResult"]
    assert [r.status for r in results] == ["STARTED", "ERROR", "STARTED", "STARTED"]
    assert isinstance(results[1], StorageRefused)
    assert {v.unique_id for v in pg_store.find_legs()} == {"7.0", "7.1", "7.2"}
    assert any("writing them one by one" in r.getMessage() for r in caplog.records)


def test_a_database_that_goes_away_fails_the_write_and_is_found_again():
    with prepared_cluster() as cluster:
        async def scenario(writer, thread):
            before = await writer.enqueue(leg(unique_id="6.1"))
            await asyncio.to_thread(cluster.stop, "immediate")
            during = (await outcomes([writer.enqueue(leg(unique_id="6.2"))]))[0]
            await asyncio.to_thread(cluster.start)
            after = await writer.enqueue(leg(unique_id="6.3"))
            return before, during, after

        before, during, after = run_writer(cluster.url, scenario)

    assert (before.status, after.status) == ("STARTED", "STARTED")
    assert isinstance(during, StorageUnavailable) and "unavailable" in str(during)
