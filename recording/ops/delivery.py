"""The background task of `serve` that delivers webhooks: it claims due deliveries in the
database (so that among all the processes and hosts sharing it, one sends each), posts them
concurrently, and marks each delivered, or failed for now (to be tried again later), or given
up. The FastAGI path never waits for it: the events are queued by the database's triggers and
this loop only reads and marks them, in threads of its own.

A receiver is sent at most :data:`PER_RECEIVER` requests at a time and holds at most
:data:`BACKLOG_PER_RECEIVER` of the :data:`IN_FLIGHT` claims of a process, so a slow or dead one
delays only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Callable
from urllib.parse import urlsplit

from sqlalchemy import event

from ..domain import utcnow
from ..errors import StorageUnavailable
from ..storage.outbox import Claimed, Outbox
from ..storage.retention import lease_owner
from ..storage.store import Store
from .webhooks import Destinations, GuardedResolver, payload, post, session

log = logging.getLogger("recording.webhooks")

IN_FLIGHT = 128
PER_RECEIVER = 8
BACKLOG_PER_RECEIVER = 32
CLAIM_BATCH = 64
# Seconds between looks for due deliveries while there is nothing to send, and at least
# between two rounds while there is (so that a busy stream is claimed and marked in batches: on
# SQLite each round takes the one write lock the calls' writer needs too).
POLL = 0.1
CLAIM_GAP = {"sqlite": 0.05, "postgresql": 0.02}
# Seconds between two readings of the oldest undelivered event (for /metrics).
AGE_EVERY = 5.0
PRUNE_EVERY = timedelta(hours=1)


def shown(url: str) -> str:
    """A URL for the log: without its query (a CRM's token often rides there) or credentials."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _own_store(store: Store) -> Store:
    """The store the deliverer claims and marks through. On SQLite, a connection pool of its own
    that does not wait for the disk at each commit (synchronous=NORMAL, in WAL mode: nothing is
    corrupted by a power loss, only the last commits may be undone). The events themselves are
    written with the legs, durably; a claim or a mark undone is a delivery sent again, with the
    same webhook-id. Without it each delivery cost the calls' writer two more fsyncs."""
    if store.dialect != "sqlite":
        return store
    own = Store(store.url)
    event.listen(own.engine, "connect", _relaxed)
    return own


def _relaxed(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Deliverer:
    """Delivers the webhooks queued in ``store``'s database. ``on_outcome`` is told of each try:
    ``delivered``, ``retried`` (failed, to be tried again) or ``given_up``."""

    def __init__(self, store: Store, settings, *, on_outcome: Callable[[str], None] | None = None):
        self._given = store
        self.store = _own_store(store)
        self.outbox = Outbox(self.store)
        self.settings = settings
        self.owner = lease_owner()
        self.on_outcome = on_outcome or (lambda outcome: None)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording-webhooks")
        self._flights: dict[asyncio.Task, Claimed] = {}
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._resolver: GuardedResolver | None = None
        self._client = None
        self._done: list[tuple[Claimed, int]] = []
        self._receivers: dict[int, asyncio.Semaphore] = {}
        self._rules: tuple[str, str] | None = None
        self._oldest = None
        self._age_read = 0.0
        self.outcomes: Counter[str] = Counter()

    @property
    def lease(self) -> timedelta:
        """How long a claim holds: longer than a try can take, so that only a dead process's
        claims run out."""
        return timedelta(seconds=2 * self.settings.webhook_timeout + 10)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self, grace: float = 2.0) -> None:
        """Stops claiming, gives the tries under way ``grace`` seconds, and hands back the
        claims of those that did not finish (they are sent again, with the same webhook-id)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # The loop no longer marks what finishes: this does, until the grace is over.
        ends = time.monotonic() + grace
        while self._flights and time.monotonic() < ends:
            await asyncio.wait(list(self._flights), timeout=ends - time.monotonic())
        with contextlib.suppress(StorageUnavailable):
            await self._settle(0, [])
        unfinished = list(self._flights.values())
        for task in list(self._flights):
            task.cancel()
        if self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)
        if unfinished:
            try:
                await self._call(self.outbox.release, unfinished, self.owner)
            except StorageUnavailable:
                pass
        if self._client is not None:
            await self._client.close()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        if self.store is not self._given:
            self.store.close()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def backlog_age(self) -> float:
        """Seconds since the oldest event still waiting for a delivery was written; 0 if none."""
        return 0.0 if self._oldest is None else max(0.0, (utcnow() - self._oldest).total_seconds())

    async def _call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _destinations(self) -> GuardedResolver:
        """The resolver with the settings' destination rules (they may change on SIGHUP)."""
        rules = (self.settings.webhook_deny, self.settings.webhook_allow)
        if rules != self._rules:
            destinations = Destinations(*rules)
            if self._resolver is None:
                self._resolver = GuardedResolver(destinations)
            self._resolver.destinations = destinations
            self._rules = rules
        return self._resolver

    async def _run(self) -> None:
        client = self._client = session(self._destinations(), limit=IN_FLIGHT)
        while True:
            more = False
            try:
                await self._housekeeping()
                more = await self._round(client)
            except StorageUnavailable as exc:
                log.debug("webhooks wait for the database: %s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("the webhooks' round failed; trying again")
                await asyncio.sleep(1.0)
            if not more:
                try:
                    async with asyncio.timeout(POLL):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
            await asyncio.sleep(CLAIM_GAP.get(self.store.dialect, 0.05))

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._age_read >= AGE_EVERY:
            self._age_read = now
            self._oldest = await self._call(self.outbox.oldest_pending)
            if await self._call(self.store.take_turn, "webhooks.prune", PRUNE_EVERY, utcnow()):
                pruned = await self._call(self.outbox.prune)
                if pruned:
                    log.info("pruned %d old webhook deliveries", pruned)

    async def _round(self, client) -> bool:
        """Claims what this process can take now and starts sending it. True when there may
        be more due right away."""
        free = IN_FLIGHT - len(self._flights)
        counts = Counter(claimed.subscription_id for claimed in self._flights.values())
        busy = [subscription for subscription, n in counts.items() if n >= BACKLOG_PER_RECEIVER]
        wanted = max(0, min(free, CLAIM_BATCH))
        if wanted and not self._done and not await self._call(self.outbox.due):
            return False
        claims = await self._settle(wanted, busy)
        self._destinations()
        for claimed in claims:
            task = asyncio.create_task(self._deliver(client, claimed))
            self._flights[task] = claimed
            task.add_done_callback(self._landed)
        return wanted > 0 and len(claims) == wanted

    async def _settle(self, wanted: int, busy: list[int]) -> list[Claimed]:
        """Marks the deliveries done since the last time and claims up to ``wanted`` more, in
        one transaction. Marks that cannot be stored leave those deliveries to be sent again
        (with the same webhook-id) once their claims run out."""
        done, self._done = self._done, []
        if not done and not wanted:
            return []
        try:
            return await self._call(self.outbox.claim, self.owner, self.lease, wanted, busy, None, done)
        except Exception as exc:
            if done:
                log.warning("%d webhook deliveries could not be marked done (%s); they will be sent again",
                            len(done), exc)
            raise

    def _landed(self, task: asyncio.Task) -> None:
        self._flights.pop(task, None)
        self.wake()

    async def _deliver(self, client, claimed: Claimed) -> None:
        event = claimed.event
        receiver = self._receivers.get(claimed.subscription_id)
        if receiver is None:
            receiver = self._receivers[claimed.subscription_id] = asyncio.Semaphore(PER_RECEIVER)
        async with receiver:
            answer = await post(client, self._resolver.destinations, claimed.url, claimed.secret, event.message_id,
                                payload(event), self.settings.webhook_timeout)
        try:
            if answer.ok:
                # Marked done by the loop's next round, in the transaction of its claim: one
                # transaction for every delivery that finished meanwhile, not one each.
                self._done.append((claimed, answer.status))
                self.wake()
                outcome = "delivered"
            else:
                state = await self._call(self.outbox.attempt_failed, claimed, self.owner, answer.status, answer.error)
                outcome = "given_up" if state == "failed" else "retried"
                level = logging.WARNING if outcome == "given_up" else logging.INFO
                log.log(level, "webhook %s (%s of leg %s) to subscription %d at %s: %s%s", event.message_id,
                        event.kind, event.leg_id, claimed.subscription_id, shown(claimed.url), answer.error,
                        "; given up after 3 days of tries (webhooks redeliver sends it again)"
                        if outcome == "given_up" else "")
        except Exception as exc:
            # The claim runs out and the delivery is tried again, with the same webhook-id.
            log.warning("webhook %s: its outcome could not be stored (%s); it will be sent again",
                        event.message_id, exc)
            return
        self.outcomes[outcome] += 1
        self.on_outcome(outcome)
