"""The audit: one row for every play, download, hold, release and purge of a leg, whichever door
it came through (the pages, the HTTP API, the command line, the service's own retention), with
who, when and from which address. It has no foreign key, so it outlives the purge of the audio
and any change to the users; rows are only ever added.

Each act is written before (play, download) or with (hold, release, purge: in the same
transaction) what it records, so a leg's audio is never served without its row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..domain import LegView, utcnow
from .models import AUDIT_ACTIONS, AUDIT_DOORS, AuditEvent
from .store import Store

log = logging.getLogger("recording.audit")
_events = AuditEvent.__table__
# The same person playing the same leg through the same door again within this long is one
# listening (a player asks for the file again on each seek): it is written once.
PLAY_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True)
class Event:
    """One act on a leg. ``login``: the user, or for the command line the system user, or
    ``retention`` for the service's own purge. ``detail``: a hold's reason, a purge's reason,
    what a hold found (already held)."""

    action: str
    leg_id: str
    unique_id: str | None
    login: str
    door: str
    address: str | None = None
    detail: str | None = None
    at: datetime | None = None
    id: int | None = None

    def __post_init__(self):
        if self.action not in AUDIT_ACTIONS or self.door not in AUDIT_DOORS:
            raise ValueError(f"not an audited act: {self.action} through {self.door}")

    @classmethod
    def of(cls, action: str, leg: LegView, login: str, door: str, address: str | None = None,
           detail: str | None = None) -> "Event":
        return cls(action, leg.id, leg.unique_id, login, door, address, detail)

    def as_json(self) -> dict:
        return {"id": self.id, "at": self.at.isoformat() if self.at else None, "action": self.action,
                "leg": self.leg_id, "uniqueId": self.unique_id, "user": self.login, "address": self.address,
                "door": self.door, "detail": self.detail}


def _row(event: Event, at: datetime) -> dict:
    return {
        "at": event.at or at, "action": event.action, "leg_id": event.leg_id[:32],
        "unique_id": (event.unique_id or None) and event.unique_id[:150], "login": event.login[:128] or "-",
        "address": (event.address or None) and event.address[:64], "door": event.door,
        "detail": (event.detail or None) and event.detail[:255],
    }


def write(conn: Connection, events: Iterable[Event], at: datetime | None = None) -> int:
    """Adds ``events`` in the caller's transaction (so the act and its row commit together)."""
    rows = [_row(event, at or utcnow()) for event in events]
    if rows:
        conn.execute(_events.insert(), rows)
        for row in rows:
            log.info("audit: %s of leg %s by %s through %s from %s%s", row["action"], row["leg_id"], row["login"],
                     row["door"], row["address"] or "-", f" ({row['detail']})" if row["detail"] else "")
    return len(rows)


class Audit:
    """The audit table of ``store``'s database."""

    def __init__(self, store: Store):
        self.store = store

    def record(self, *events: Event) -> int:
        """Adds ``events`` in a transaction of their own."""
        with self.store._write() as conn:
            return write(conn, events)

    def record_play(self, event: Event, now: datetime | None = None) -> bool:
        """Adds a play, unless the same person played the same leg through the same door within
        PLAY_WINDOW (a seek asks for the file again). True when a row was written."""
        now = now or utcnow()
        with self.store._write() as conn:
            recent = conn.scalar(select(_events.c.id).where(
                _events.c.leg_id == event.leg_id, _events.c.login == event.login[:128], _events.c.door == event.door,
                _events.c.action == "play", _events.c.at > now - PLAY_WINDOW,
            ).limit(1))
            if recent is not None:
                return False
            write(conn, [event], now)
            return True

    def events(self, *, leg_id: str | None = None, login: str | None = None, since: datetime | None = None,
               after: int | None = None, limit: int = 500) -> list[Event]:
        """Events in the order they happened, at most ``limit`` after the event id ``after``
        (a page of a long listing), of a leg, a user, since a time."""
        query = select(_events)
        if leg_id is not None:
            query = query.where(_events.c.leg_id == leg_id)
        if login is not None:
            query = query.where(_events.c.login == login)
        if since is not None:
            query = query.where(_events.c.at >= since)
        if after is not None:
            query = query.where(_events.c.id > after)
        query = query.order_by(_events.c.id).limit(limit)
        with self.store._read() as conn:
            return [Event(r.action, r.leg_id, r.unique_id, r.login, r.door, r.address, r.detail, r.at, r.id)
                    for r in conn.execute(query)]

    def all_events(self, **filters) -> Iterable[Event]:
        """Every event matching ``filters`` (see :meth:`events`), a page at a time."""
        after = None
        while True:
            page = self.events(after=after, **filters)
            yield from page
            if len(page) < 500:
                return
            after = page[-1].id


def hold_event(leg: LegView, held: bool, changed: bool, login: str, door: str, address: str | None,
               reason: str | None) -> Event:
    """The row of a hold placed or released (``reason``: the one given), or asked for and
    found so already."""
    what = None if changed else ("already held" if held else "was not held")
    detail = "; ".join(part for part in (reason, what) if part) or None
    return Event.of("hold" if held else "release", leg, login, door, address, detail)
