"""Leases and turns among the processes that share one database (``serve --workers``, several
hosts), kept as timestamped rows of ``system_variables``: one process at a time does what a lease
stands for; one per period takes a turn. A mixin of :class:`~recording.storage.store.Store`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, or_, select

from .models import SystemVariable

_variables = SystemVariable.__table__

STAMP_WIDTH = len("2026-11-30T10:00:00.000000Z")


def _stamp(when: datetime) -> str:
    """A UTC time as fixed-width text, so that two of them compare as the times do."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    def lease(self, name: str, owner: str, ttl: timedelta, now: datetime, *, take_from: str | None = None) -> bool:
        """True when ``owner`` holds the lease ``name`` now: it held it within ``ttl`` (and
        renews it), or nobody did, or ``take_from`` held it (a holder known to be dead). One
        process at a time does what the lease stands for; when it stops renewing, another takes
        over after ``ttl``."""
        value = f"{_stamp(now)} {owner}"
        stamp = func.substr(_variables.c.value, 1, STAMP_WIDTH)
        holder = func.substr(_variables.c.value, STAMP_WIDTH + 2)
        takes = or_(holder == owner, stamp <= _stamp(now - ttl))
        if take_from is not None:
            takes = or_(takes, holder == take_from)
        stmt = self._insert(_variables).values(name=name, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            where=takes,
        ).returning(_variables.c.name)
        with self._write() as conn:
            return conn.scalar(stmt) is not None

    def lease_holder(self, name: str) -> str | None:
        """Who holds (or last held) the lease ``name``; None if nobody does."""
        with self._read() as conn:
            value = conn.scalar(select(_variables.c.value).where(_variables.c.name == name))
        return value[STAMP_WIDTH + 1:] if value else None

    def release_lease(self, name: str, owner: str) -> None:
        """Gives up the lease ``name`` if ``owner`` holds it, so the next caller need not wait
        out its time."""
        holder = func.substr(_variables.c.value, STAMP_WIDTH + 2)
        with self._write() as conn:
            conn.execute(delete(_variables).where(_variables.c.name == name, holder == owner))

    def take_turn(self, name: str, every: timedelta, now: datetime) -> bool:
        """True for exactly one caller per ``every`` among all the processes that share this
        database (``serve --workers``, several hosts): the one that moves the time stored under
        ``name`` forward. A process that crashed during its turn waits for the next one."""
        stamp, due = _stamp(now), _stamp(now - every)
        stmt = self._insert(_variables).values(name=name, value=stamp, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            where=_variables.c.value <= due,
        ).returning(_variables.c.name)
        with self._write() as conn:
            return conn.scalar(stmt) is not None
