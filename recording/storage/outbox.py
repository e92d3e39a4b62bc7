"""The webhooks' side of the database: subscriptions, and the deliveries that the triggers of
migration 0007 queue for them (one per event and subscription), claimed by whichever process
delivers them.

A deliverer claims due deliveries with a lease (``claimed_until``) in a transaction of its own
(PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so two claimers never take one row; SQLite: its one
writer at a time), sends them, then marks each. A process that dies holding claims leaves them
to be taken again once the lease has passed: at least once, never lost. A delivery is due only
when no earlier event of the same leg is still pending for the same subscription, so a leg's
events reach a subscriber in the order they happened, and a receiver that fails delays only
its own deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

from sqlalchemy import case, delete, exists, func, or_, select, update

from ..domain import utcnow
from ..errors import Invalid, NotFound
from .models import WEBHOOK_EVENTS, WebhookDelivery, WebhookEvent, WebhookSubscription
from .store import Store

_subs = WebhookSubscription.__table__
_events = WebhookEvent.__table__
_deliveries = WebhookDelivery.__table__

# A delivery that keeps failing is retried for this long after it was queued, then kept as failed.
GIVE_UP_AFTER = timedelta(days=3)
# The longest wait between two tries.
LONGEST_WAIT = timedelta(hours=1)
# How long delivered ones (and events nobody wanted) are kept, and failed ones (for redeliver).
KEEP_DELIVERED = timedelta(days=7)
KEEP_FAILED = timedelta(days=30)


def backoff(attempts: int) -> timedelta:
    """The wait before the next try after ``attempts`` failed ones: 5 s, doubling, at most an
    hour (5, 10, 20 s ... 43 min, then hourly: about 80 tries in three days)."""
    return min(LONGEST_WAIT, timedelta(seconds=5 * 2 ** min(max(attempts - 1, 0), 20)))


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    secret: str
    events: tuple[str, ...] | None
    tag_prefix: str | None
    created_at: datetime
    failing_since: datetime | None = None
    last_success_at: datetime | None = None
    pending: int = 0
    failed: int = 0

    def wants(self, kind: str) -> bool:
        return self.events is None or kind in self.events


@dataclass(frozen=True)
class Event:
    """An event as the triggers wrote it: what is sent (see recording.ops.webhooks.payload)."""

    id: int
    message_id: str
    kind: str
    leg_id: str
    unique_id: str
    leg: int
    tag: str | None
    owner: str | None
    ownership: str
    at: datetime
    state: str | None = None
    actor: str | None = None
    reason: str | None = None
    method: str | None = None
    file_size: int | None = None
    file_sha256: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A delivery this process holds: its event, where to send it and the key to sign it with."""

    id: int
    attempts: int
    queued_at: datetime
    subscription_id: int
    url: str
    secret: str
    event: Event


@dataclass(frozen=True)
class DeliveryView:
    id: int
    subscription_id: int
    url: str
    message_id: str
    kind: str
    leg_id: str
    state: str
    attempts: int
    next_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    queued_at: datetime


def parse_events(text: str | None) -> tuple[str, ...] | None:
    """``started,ended`` as a tuple of kinds; None or '' or ``all`` for every kind. Raises
    Invalid naming a kind that does not exist."""
    if text is None or not text.strip() or text.strip() == "all":
        return None
    kinds = tuple(dict.fromkeys(k.strip().removeprefix("recording.") for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in WEBHOOK_EVENTS]
    if unknown:
        raise Invalid(f"unknown event {', '.join(unknown)}: choose among {', '.join(WEBHOOK_EVENTS)}")
    return kinds


class Outbox:
    """The webhook tables of ``store``'s database."""

    def __init__(self, store: Store):
        self.store = store
        self._postgres = store.dialect == "postgresql"

    # -- subscriptions --------------------------------------------------------------------------

    def add(self, url: str, secret: str, events: Sequence[str] | None = None, tag_prefix: str | None = None
            ) -> Subscription:
        """A new subscription; from now on every event it wants is queued for it."""
        stored = f",{','.join(events)}," if events else None
        with self.store._write() as conn:
            new_id = conn.scalar(_subs.insert().values(
                url=url, secret=secret, events=stored, tag_prefix=tag_prefix or None, created_at=utcnow()
            ).returning(_subs.c.id))
        return self.subscription(new_id)

    def remove(self, subscription_id: int) -> bool:
        """Deletes the subscription and its deliveries (pending ones are not sent)."""
        with self.store._write() as conn:
            return conn.execute(delete(_subs).where(_subs.c.id == subscription_id)).rowcount == 1

    def subscription(self, subscription_id: int) -> Subscription:
        for found in self.subscriptions([subscription_id]):
            return found
        raise NotFound(f"no webhook subscription has the id {subscription_id}")

    def subscriptions(self, ids: Iterable[int] | None = None) -> list[Subscription]:
        """Every subscription (or those of ``ids``) with its count of pending and failed deliveries."""
        counts = (
            select(_deliveries.c.subscription_id,
                   func.sum(case((_deliveries.c.state == "pending", 1), else_=0)).label("pending"),
                   func.sum(case((_deliveries.c.state == "failed", 1), else_=0)).label("failed"))
            .where(_deliveries.c.state != "delivered")
            .group_by(_deliveries.c.subscription_id).subquery()
        )
        query = (select(_subs, counts.c.pending, counts.c.failed)
                 .outerjoin(counts, counts.c.subscription_id == _subs.c.id).order_by(_subs.c.id))
        if ids is not None:
            query = query.where(_subs.c.id.in_(list(ids)))
        with self.store._read() as conn:
            return [
                Subscription(row.id, row.url, row.secret, tuple(k for k in row.events.split(",") if k) if row.events
                             else None, row.tag_prefix, row.created_at, row.failing_since, row.last_success_at,
                             int(row.pending or 0), int(row.failed or 0))
                for row in conn.execute(query)
            ]

    def failing(self, since: datetime) -> list[Subscription]:
        """Subscriptions whose every try has failed since before ``since``."""
        return [s for s in self.subscriptions() if s.failing_since is not None and s.failing_since <= since]

    # -- claims ---------------------------------------------------------------------------------

    def claim(self, owner: str, lease: timedelta, limit: int, busy: Iterable[int] = (), now: datetime | None = None,
              done: Sequence[tuple[Claimed, int]] = ()) -> list[Claimed]:
        """Takes up to ``limit`` due deliveries for ``owner`` until ``now + lease``: pending, due,
        not claimed by a live claim, of no subscription in ``busy``, and with no earlier event of
        the same leg pending for the same subscription. Oldest due first. ``done``: deliveries
        to mark delivered first, in the same transaction (see :meth:`delivered`)."""
        now = now or utcnow()
        d, e = _deliveries.alias("d"), _deliveries.alias("e")
        earlier = select(e.c.id).where(e.c.subscription_id == d.c.subscription_id, e.c.leg_id == d.c.leg_id,
                                       e.c.event_id < d.c.event_id, e.c.state == "pending")
        due = (select(d.c.id)
               .where(d.c.state == "pending", d.c.next_at <= now,
                      or_(d.c.claimed_until.is_(None), d.c.claimed_until < now), ~exists(earlier))
               .order_by(d.c.next_at, d.c.id).limit(limit))
        busy = list(busy)
        if busy:
            due = due.where(d.c.subscription_id.not_in(busy))
        if self._postgres:
            # NOTE: a row another claimer is taking right now is skipped, not waited for.
            due = due.with_for_update(skip_locked=True, of=d)
        with self.store._write() as conn:
            if done:
                self._delivered(conn, done, now)
            if limit <= 0:
                return []
            ids = list(conn.scalars(
                update(_deliveries).where(_deliveries.c.id.in_(due))
                .values(claimed_until=now + lease, claimed_by=owner).returning(_deliveries.c.id)
            ))
            if not ids:
                return []
            rows = conn.execute(
                select(_deliveries.c.id.label("delivery_id"), _deliveries.c.attempts, _deliveries.c.queued_at,
                       _deliveries.c.subscription_id, _subs.c.url, _subs.c.secret, _events)
                .join(_subs, _subs.c.id == _deliveries.c.subscription_id)
                .join(_events, _events.c.id == _deliveries.c.event_id)
                .where(_deliveries.c.id.in_(ids)).order_by(_deliveries.c.event_id)
            ).mappings().all()
        return [Claimed(row["delivery_id"], row["attempts"], row["queued_at"], row["subscription_id"], row["url"],
                        row["secret"], _event(row)) for row in rows]

    def due(self, now: datetime | None = None) -> bool:
        """Whether a delivery may be due now. On SQLite, a plain read that takes no lock (every
        transaction here takes the one write lock the calls need), so an idle deliverer's
        looks cost the calls nothing; on PostgreSQL the claim itself is as cheap: True."""
        if self._postgres:
            return True
        stamp = (now or utcnow()).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        raw = self.store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ? "
                "AND (claimed_until IS NULL OR claimed_until < ?))", (stamp, stamp))
            return bool(cursor.fetchone()[0])
        except Exception as exc:
            raise self.store._failure(exc) from exc
        finally:
            raw.close()

    def delivered(self, done: Sequence[tuple[Claimed, int]], now: datetime | None = None) -> None:
        """Marks deliveries done, with the status each was answered (whoever holds their claims
        now: they have been received), in one transaction."""
        if done:
            with self.store._write() as conn:
                self._delivered(conn, done, now or utcnow())

    @staticmethod
    def _delivered(conn, done: Sequence[tuple[Claimed, int]], now: datetime) -> None:
        by_status: dict[int, list[int]] = {}
        for claimed, status in done:
            by_status.setdefault(status, []).append(claimed.id)
        for status, ids in by_status.items():
            conn.execute(update(_deliveries)
                         .where(_deliveries.c.id.in_(ids), _deliveries.c.state == "pending")
                         .values(state="delivered", delivered_at=now, attempts=_deliveries.c.attempts + 1,
                                 last_attempt_at=now, last_status=status, last_error=None, claimed_until=None,
                                 claimed_by=None))
        conn.execute(update(_subs).where(_subs.c.id.in_({claimed.subscription_id for claimed, _ in done}))
                     .values(failing_since=None, last_success_at=now))

    def attempt_failed(self, claimed: Claimed, owner: str, status: int | None, error: str,
                       now: datetime | None = None) -> str:
        """Records a failed try: the delivery waits (see :func:`backoff`), or is kept as
        ``failed`` once it has been tried for :data:`GIVE_UP_AFTER`. Returns the state it is
        left in; a delivery whose claim passed to another process meanwhile is left to it."""
        now = now or utcnow()
        attempts = claimed.attempts + 1
        gave_up = now - claimed.queued_at >= GIVE_UP_AFTER
        with self.store._write() as conn:
            changed = conn.execute(
                update(_deliveries)
                .where(_deliveries.c.id == claimed.id, _deliveries.c.claimed_by == owner,
                       _deliveries.c.state == "pending")
                .values(state="failed" if gave_up else "pending", attempts=attempts, last_attempt_at=now,
                        next_at=now + backoff(attempts), last_status=status, last_error=error[:255],
                        claimed_until=None, claimed_by=None)
            ).rowcount
            conn.execute(update(_subs).where(_subs.c.id == claimed.subscription_id)
                         .values(failing_since=func.coalesce(_subs.c.failing_since, now)))
        if not changed:
            return "taken"
        return "failed" if gave_up else "pending"

    def release(self, claims: Sequence[Claimed], owner: str) -> None:
        """Gives back claims not tried (a stopping process), so another can take them at once."""
        if claims:
            with self.store._write() as conn:
                conn.execute(update(_deliveries)
                             .where(_deliveries.c.id.in_([c.id for c in claims]), _deliveries.c.claimed_by == owner)
                             .values(claimed_until=None, claimed_by=None))

    # -- looking and redelivering --------------------------------------------------------------

    def deliveries(self, *, failed_only: bool = False, subscription_id: int | None = None, limit: int = 100
                   ) -> list[DeliveryView]:
        """The newest deliveries first (or only the failed ones)."""
        query = (select(_deliveries, _subs.c.url, _events.c.message_id, _events.c.kind)
                 .join(_subs, _subs.c.id == _deliveries.c.subscription_id)
                 .join(_events, _events.c.id == _deliveries.c.event_id)
                 .order_by(_deliveries.c.id.desc()).limit(limit))
        if failed_only:
            query = query.where(_deliveries.c.state == "failed")
        if subscription_id is not None:
            query = query.where(_deliveries.c.subscription_id == subscription_id)
        with self.store._read() as conn:
            return [DeliveryView(r.id, r.subscription_id, r.url, r.message_id, r.kind, r.leg_id, r.state, r.attempts,
                                 r.next_at, r.last_status, r.last_error, r.delivered_at, r.queued_at)
                    for r in conn.execute(query)]

    def redeliver(self, delivery_ids: Sequence[int] = (), *, all_failed: bool = False,
                  subscription_id: int | None = None) -> int:
        """Queues deliveries again (with their webhook-id), for three more days of tries: the
        given ones, or every failed one (of one subscription). Returns how many."""
        now = utcnow()
        condition = _deliveries.c.state != "pending"
        if all_failed:
            condition = _deliveries.c.state == "failed"
        elif delivery_ids:
            condition = condition & _deliveries.c.id.in_(list(delivery_ids))
        else:
            return 0
        if subscription_id is not None:
            condition = condition & (_deliveries.c.subscription_id == subscription_id)
        with self.store._write() as conn:
            return conn.execute(update(_deliveries).where(condition).values(
                state="pending", attempts=0, next_at=now, queued_at=now, claimed_until=None, claimed_by=None,
                delivered_at=None,
            )).rowcount

    def oldest_pending(self) -> datetime | None:
        """When the oldest event still waiting for a delivery was written (None: none waits)."""
        with self.store._read() as conn:
            return conn.scalar(select(func.min(_events.c.created_at))
                               .join(_deliveries, _deliveries.c.event_id == _events.c.id)
                               .where(_deliveries.c.state == "pending"))

    def prune(self, now: datetime | None = None) -> int:
        """Deletes deliveries done for :data:`KEEP_DELIVERED` (failed ones after
        :data:`KEEP_FAILED`) and the events left with no delivery. Returns deliveries deleted."""
        now = now or utcnow()
        with self.store._write() as conn:
            deleted = conn.execute(delete(_deliveries).where(or_(
                (_deliveries.c.state == "delivered") & (_deliveries.c.delivered_at < now - KEEP_DELIVERED),
                (_deliveries.c.state == "failed") & (_deliveries.c.last_attempt_at < now - KEEP_FAILED),
            ))).rowcount
            orphan = ~exists(select(_deliveries.c.id).where(_deliveries.c.event_id == _events.c.id))
            conn.execute(delete(_events).where(_events.c.created_at < now - timedelta(days=1), orphan))
        return deleted


def _event(row) -> Event:
    return Event(row["id"], row["message_id"], row["kind"], row["leg_id"], row["unique_id"], row["leg"], row["tag"],
                 row["owner"], row["ownership"], row["at"], row["state"], row["actor"], row["reason"], row["method"],
                 row["file_size"], row["file_sha256"])
