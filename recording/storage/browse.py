"""The legs a person may see, as the recordings pages list them: filtered, newest first, a page
at a time by keyset (the (start, id) of the last row shown, never OFFSET), so that the hundredth
page costs what the first does at a million legs. And the last verification of each leg's file.

Who sees what is the API's rule, applied in the query: a Recording Manager every leg, anyone
else the legs they own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import func, literal, or_, select, tuple_

from ..domain import LegView, UserRef
from .models import CallRecord, LegCheck, RecordingLeg, User, UTCDateTime
from .store import Store

_legs = RecordingLeg.__table__
_calls = CallRecord.__table__
_checks = LegCheck.__table__
# Past this many calls with one tag, the tag's calls are matched by a subquery instead of a list.
TAG_CALLS = 1000


@dataclass(frozen=True)
class Filters:
    """What the list is narrowed to; None: not narrowed. ``since`` inclusive, ``until``
    exclusive; ``owner`` a login (a Recording Manager's filter); ``held`` True or False."""

    since: datetime | None = None
    until: datetime | None = None
    tag: str | None = None
    unique_id: str | None = None
    extension: str | None = None
    owner: str | None = None
    state: str | None = None
    held: bool | None = None

    def given(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Check:
    """What ``recordings verify`` last found of a leg's file, and when."""

    at: datetime
    outcome: str
    detail: str | None


class Browse:
    def __init__(self, store: Store):
        self.store = store

    def page(self, user: UserRef, filters: Filters, after: tuple[datetime, str] | None, limit: int
             ) -> tuple[list[LegView], tuple[datetime, str] | None]:
        """The ``limit`` newest legs ``user`` may see that match ``filters``, started before the
        (start, id) ``after``; and the key of the next page (None: this is the last)."""
        with self.store._read() as conn:
            query = self.statement(conn, user, filters, after, limit + 1)
            if query is None:
                return [], None
            legs = self.store._views(conn, conn.execute(query))
        if len(legs) > limit:
            legs = legs[:limit]
            return legs, (legs[-1].start, legs[-1].id)
        return legs, None

    def statement(self, conn, user: UserRef, filters: Filters, after: tuple[datetime, str] | None, limit: int):
        """The SELECT of a page (None when nothing can match); bench/pages_1m.py EXPLAINs it."""
        query = self._query(conn, user, filters)
        if query is None:
            return None
        if after is not None:
            # NOTE: a row comparison, which PostgreSQL reads as one range of the (start, id)
            # indexes; the values are typed as the columns, so SQLite compares them as stored.
            query = query.where(tuple_(_legs.c.started_at, _legs.c.id)
                                < tuple_(literal(after[0], UTCDateTime()), literal(after[1])))
        return query.order_by(_legs.c.started_at.desc(), _legs.c.id.desc()).limit(limit)

    def _query(self, conn, user: UserRef, filters: Filters):
        """The list's query without its order and page; None when nothing can match."""
        query = self.store._leg_query()
        if not user.is_manager:
            query = query.where(_legs.c.owner_id == user.id)
        if filters.owner is not None:
            owner = conn.scalar(select(User.id).where(func.lower(User.login) == filters.owner.strip().lower()))
            if owner is None:
                return None
            query = query.where(_legs.c.owner_id == owner)
        if filters.tag is not None:
            query = query.where(self._tagged(conn, filters.tag))
        if filters.since is not None:
            query = query.where(_legs.c.started_at >= filters.since)
        if filters.until is not None:
            query = query.where(_legs.c.started_at < filters.until)
        if filters.unique_id is not None:
            query = query.where(_legs.c.unique_id == filters.unique_id)
        if filters.extension is not None:
            query = query.where(_legs.c.extension == filters.extension)
        if filters.state is not None:
            query = query.where(_legs.c.state == filters.state)
        if filters.held is not None:
            query = query.where(_legs.c.held_at.is_not(None) if filters.held else _legs.c.held_at.is_(None))
        return query

    @staticmethod
    def _tagged(conn, tag: str):
        """Legs with that tag, or of a call whose External Reference it is (as retrieval finds
        them). NOTE: the calls are looked up first, so the database ORs two index scans of
        recording_legs (tag; call) instead of joining every leg to its call to compare."""
        calls = select(_calls.c.id).where(_calls.c.external_reference == tag)
        ids = list(conn.scalars(calls.limit(TAG_CALLS + 1)))
        of_call = _legs.c.call_record_id.in_(calls.scalar_subquery() if len(ids) > TAG_CALLS else ids)
        return or_(_legs.c.tag == tag, of_call) if ids else _legs.c.tag == tag

    def call_legs(self, user: UserRef, unique_id: str) -> list[LegView]:
        """Every leg of the call ``user`` may see, in order."""
        return [leg for leg in self.store.find_legs(unique_id=unique_id) if leg.visible_to(user)]

    # -- verification ---------------------------------------------------------------------------

    def checks(self, leg_ids: Sequence[str]) -> dict[str, Check]:
        """The last verification of each of ``leg_ids`` that has one."""
        if not leg_ids:
            return {}
        with self.store._read() as conn:
            rows = conn.execute(select(_checks).where(_checks.c.leg_id.in_(list(leg_ids))))
            return {r.leg_id: Check(r.checked_at, r.outcome, r.detail) for r in rows}

    def record_checks(self, found: Iterable[tuple[str, datetime, str, str | None]]) -> None:
        """Keeps the newest verification of each leg: (leg id, when, outcome, detail)."""
        rows = [{"leg_id": leg_id, "checked_at": at, "outcome": outcome, "detail": (detail or None) and detail[:255]}
                for leg_id, at, outcome, detail in found]
        if not rows:
            return
        stmt = self.store._insert(_checks).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=["leg_id"], set_={
            "checked_at": stmt.excluded.checked_at, "outcome": stmt.excluded.outcome, "detail": stmt.excluded.detail})
        with self.store._write() as conn:
            conn.execute(stmt)
