"""The store's part after the call: a leg by its id, its digest, legal holds and the two-step
purge, and the pages of ended legs the retention and integrity walks read. A mixin of
:class:`~recording.storage.store.Store`, whose transactions and leg queries it uses."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlalchemy import or_, select, update

from ..domain import ENDED_STATES, LegView
from ..errors import Conflict, NotFound
from .models import RecordingLeg

_legs = RecordingLeg.__table__


class Keeping:
    # -- after the call: a leg's digest, legal hold and purge --------------------------------

    def leg(self, leg_id: str) -> LegView | None:
        """The leg with that id, or None."""
        with self._read() as conn:
            views = self._views(conn, conn.execute(self._leg_query().where(_legs.c.id == leg_id)))
        return views[0] if views else None

    def legs_ended_before(self, cutoff: datetime, after: tuple[datetime, str] | None = None, limit: int = 500
                          ) -> list[LegView]:
        """Ended legs whose audio is still kept and whose end is before ``cutoff``, oldest
        first, the ``limit`` after the (end, id) ``after``; held ones and ones whose purge was
        begun included (the caller tells them apart)."""
        query = self._leg_query().where(_legs.c.state.in_(ENDED_STATES), _legs.c.ended_at < cutoff)
        return self._page(query, _legs.c.ended_at, after, limit)

    def unfinished_purges(self) -> list[LegView]:
        """Legs whose purge was begun and not marked done: a purge that was interrupted."""
        query = self._leg_query().where(_legs.c.purge_started_at.is_not(None), _legs.c.state != "purged")
        with self._read() as conn:
            return self._views(conn, conn.execute(query.order_by(_legs.c.purge_started_at, _legs.c.id)))

    def begin_purges(self, leg_ids: Sequence[str], at: datetime, reason: str) -> set[str]:
        """The first step of a purge, committed before any file is touched: the intent, its time
        and reason, for each of ``leg_ids`` that may be purged (ended, not held, not begun
        already). Returns the ids it was written for."""
        if not leg_ids:
            return set()
        with self._write() as conn:
            return set(conn.scalars(
                update(_legs)
                .where(_legs.c.id.in_(leg_ids), _legs.c.state.in_(ENDED_STATES), _legs.c.held_at.is_(None),
                       _legs.c.purge_started_at.is_(None))
                .values(purge_started_at=at, purge_reason=reason[:255])
                .returning(_legs.c.id)
            ))

    def begin_purge(self, leg_id: str, at: datetime, reason: str) -> bool:
        return leg_id in self.begin_purges([leg_id], at, reason)

    def abandon_purge(self, leg_id: str) -> bool:
        """Takes back a begun purge whose file could not be deleted (so the leg can be held)."""
        with self._write() as conn:
            changed = conn.execute(
                update(_legs)
                .where(_legs.c.id == leg_id, _legs.c.purge_started_at.is_not(None), _legs.c.state != "purged")
                .values(purge_started_at=None, purge_reason=None)
            )
            return changed.rowcount == 1

    def finish_purges(self, leg_ids: Sequence[str], at: datetime, then=None) -> set[str]:
        """The last step, once the files are gone: the legs become ``purged``, keeping the state
        they had ended in. Returns the ids finished now (not those never begun, or finished
        already). ``then(conn, finished)`` runs in the same transaction (the audit's rows)."""
        if not leg_ids:
            return set()
        with self._write() as conn:
            finished = set(conn.scalars(
                update(_legs)
                .where(_legs.c.id.in_(leg_ids), _legs.c.purge_started_at.is_not(None),
                       _legs.c.state.in_(ENDED_STATES))
                .values(state="purged", purged_at=at, state_before_purge=_legs.c.state)
                .returning(_legs.c.id)
            ))
            if then is not None:
                then(conn, finished)
            return finished

    def finish_purge(self, leg_id: str, at: datetime) -> bool:
        return leg_id in self.finish_purges([leg_id], at)

    def set_hold(self, leg_id: str, *, held: bool, by: str, at: datetime, reason: str | None = None, then=None
                 ) -> tuple[LegView, bool]:
        """Places (``held``) or releases a legal hold. Returns the leg and whether anything
        changed (holding a held leg, or releasing one that is not, changes nothing). Raises
        NotFound for an unknown leg and Conflict for a leg with no audio left to hold.
        ``then(conn, leg, changed)`` runs in the same transaction (the audit's row)."""
        with self._write() as conn:
            row = conn.execute(select(_legs).where(_legs.c.id == leg_id)).first()
            if row is None:
                raise NotFound(f"no recording leg has the id {leg_id!r}")
            changed = False
            if held and row.held_at is None:
                if row.state == "purged":
                    raise Conflict(f"the audio of leg {leg_id} was purged at {row.purged_at.isoformat()}: "
                                   "there is nothing left to hold")
                if row.state == "failed":
                    raise Conflict(f"leg {leg_id} recorded nothing (its MixMonitor did not start): nothing to hold")
                if row.purge_started_at is not None:
                    raise Conflict(f"the purge of leg {leg_id} began at {row.purge_started_at.isoformat()} "
                                   f"({row.purge_reason}): it can no longer be held")
                # NOTE: the condition is checked again by the UPDATE itself, so a purge that
                # began meanwhile (another process) wins cleanly instead of both going ahead.
                changed = conn.execute(
                    update(_legs).where(_legs.c.id == leg_id, _legs.c.purge_started_at.is_(None))
                    .values(held_at=at, held_by=by[:128], hold_reason=reason[:255] if reason else None)
                ).rowcount == 1
                if not changed:
                    raise Conflict(f"the purge of leg {leg_id} began just now: it can no longer be held")
            elif not held and row.held_at is not None:
                conn.execute(update(_legs).where(_legs.c.id == leg_id)
                             .values(held_at=None, held_by=None, hold_reason=None))
                changed = True
            view = self._views(conn, conn.execute(self._leg_query().where(_legs.c.id == leg_id)))[0]
            if then is not None:
                then(conn, view, changed)
        return view, changed

    def unhashed_legs(self, since: datetime, limit: int) -> list[LegView]:
        """Ended legs since ``since`` whose file has no digest yet (and no purge begun), the
        most recently ended first."""
        query = self._leg_query().where(
            _legs.c.state.in_(ENDED_STATES), _legs.c.file_sha256.is_(None), _legs.c.purge_started_at.is_(None),
            _legs.c.ended_at >= since,
        ).order_by(_legs.c.ended_at.desc(), _legs.c.id).limit(limit)
        with self._read() as conn:
            return self._views(conn, conn.execute(query))

    def store_digest(self, leg_id: str, size: int, sha256: str, at: datetime) -> bool:
        """Stores a complete file's size and SHA-256 with its leg, once: a digest is never
        overwritten. False when the leg had one already, or is being purged."""
        with self._write() as conn:
            changed = conn.execute(
                update(_legs)
                .where(_legs.c.id == leg_id, _legs.c.file_sha256.is_(None), _legs.c.state.in_(ENDED_STATES),
                       _legs.c.purge_started_at.is_(None))
                .values(file_size=size, file_sha256=sha256, hashed_at=at)
            )
            return changed.rowcount == 1

    def ended_legs_page(self, since: datetime | None, after: tuple[datetime, str] | None, limit: int
                        ) -> list[LegView]:
        """Ended legs whose audio is kept, started at ``since`` or later, in the order of their
        start, the ``limit`` after the (start, id) ``after``: a page of a long walk."""
        query = self._leg_query().where(_legs.c.state.in_(ENDED_STATES))
        if since is not None:
            query = query.where(_legs.c.started_at >= since)
        return self._page(query, _legs.c.started_at, after, limit)

    def _page(self, query, column, after: tuple[datetime, str] | None, limit: int) -> list[LegView]:
        """The ``limit`` legs of ``query`` after ``after`` in (``column``, id) order: one page
        of a walk that holds no transaction open between pages."""
        if after is not None:
            query = query.where(or_(column > after[0], (column == after[0]) & (_legs.c.id > after[1])))
        query = query.order_by(column, _legs.c.id).limit(limit)
        with self._read() as conn:
            return self._views(conn, conn.execute(query))
