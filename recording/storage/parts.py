"""The store's part of following a call (issue 21): which process records a call's next part,
decided in one transaction (``take_over``), and where a process that starts mid-call goes on
numbering the parts (``last_parts``). A mixin of :class:`~recording.storage.store.Store`, whose
transactions and leg queries it uses."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain import ACTIVE_STATES, CommitResult, LegView, NewLeg
from .models import RecordingLeg, RecordingPause

_legs = RecordingLeg.__table__
_pauses = RecordingPause.__table__


class Parts:
    def take_over(self, channels: Sequence[str], leg: NewLeg, *, cause: str, key: str,
                  from_agent: str | None = None) -> tuple[LegView, CommitResult | None] | None:
        """The next part of a followed call, as the database decides it, in one transaction.

        The call's active leg is the one on one of the unique ids ``channels`` (its anchor, or
        the agent's channel a request recorded) or of the call ``leg.linkedid``. When the new
        part has the same owner as that leg (the user attached to the new agent's extension,
        or nobody for both), or the leg was given an agentLoginName before the call's first
        agent answered (``from_agent`` None, cause ``answer``: the agent it was given for),
        or the agent hung up and left the caller alone (cause ``hangup``, no new agent: the caller
        most often hangs up too), and it runs on the anchor, it goes on, now covering the new
        part: the result is ``(leg, None)``. Otherwise it is ended by ``cause`` at ``leg``'s start, and ``leg`` is
        written as taking over from it, with its tag, paused (method ``restart``: nothing
        records until a resume) when that leg was paused: ``(leg taken over, as it was, the
        new leg's CommitResult)``. ``key`` names the pause the new leg starts with.

        None when no leg is active there (the call is not followed: never recorded, or a stop
        was asked for it), or it records this part or a later one already (``leg.part``): the
        change was another process's to record (the database lets exactly one).
        """
        try:
            with self._write() as conn:
                mine = _legs.c.unique_id.in_(channels)
                if leg.linkedid:
                    mine = or_(mine, _legs.c.linkedid == leg.linkedid)
                views = self._views(conn, conn.execute(
                    self._leg_query().where(mine, _legs.c.state.in_(ACTIVE_STATES))
                    .order_by(_legs.c.started_at.desc()).limit(1)
                ))
                if not views or (views[0].part is not None and leg.part is not None and views[0].part >= leg.part):
                    return None
                before = views[0]
                owner = self._attached_owners(conn, [leg.extension]).get(leg.extension) if leg.extension else None
                given = (cause == "answer" and from_agent is None and before.ownership == "AGENT"
                         and before.source != "follow")
                # NOTE: the agent hung up and the caller is alone, most often hanging up too: a
                # leg for that moment would be an empty one on nearly every call.
                left_alone = cause == "hangup" and not leg.extension
                if before.unique_id == leg.unique_id and (before.owner_id == owner or given or left_alone):
                    kept = conn.execute(
                        update(_legs).where(_legs.c.id == before.id, _legs.c.state.in_(ACTIVE_STATES))
                        .values(linkedid=leg.linkedid, part=leg.part)
                    ).rowcount
                    return (before, None) if kept == 1 else None
                return self._hand_over(conn, before, leg, cause, key)
        except IntegrityError:
            return None  # that part was recorded by another process at the same moment

    def _hand_over(self, conn: Connection, before: LegView, leg: NewLeg, cause: str, key: str
                   ) -> tuple[LegView, CommitResult] | None:
        """take_over's second half: ``before`` ends, ``leg`` follows it. NOTE: never before
        ``before`` began: the two may come from two processes' clocks (a part of a millisecond
        between them, written by another process)."""
        at = max(leg.started_at, before.start)
        leg = replace(leg, started_at=at)
        ended = conn.execute(
            update(_legs).where(_legs.c.id == before.id, _legs.c.state.in_(ACTIVE_STATES))
            .values(state="ended", ended_at=at, ended_by=cause[:128], changed_at=at, seen_at=at)
        ).rowcount
        if ended != 1:
            return None
        conn.execute(update(_pauses).where(_pauses.c.leg_id == before.id, _pauses.c.resumed_at.is_(None))
                     .values(resumed_at=at, resumed_by=cause[:128]))
        paused = before.state == "paused"
        leg = replace(leg, follows=before.id, tag=leg.tag or before.external_reference or before.tag,
                      state="paused" if paused else leg.state)
        (result,) = self._commit(conn, [leg], replay=False)
        if paused and result.status == "STARTED":
            conn.execute(_pauses.insert().values(leg_id=leg.id, paused_at=at, method="restart",
                                                 paused_by=cause[:128], pause_key=key))
        return before, result

    def last_parts(self, linkedids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """For each of these calls that has a followed leg, the part of its newest one and that
        part's agent extension (None: no agent): where a process that starts in the middle of
        the calls goes on numbering them (calls.rebuild)."""
        if not linkedids:
            return {}
        found: dict[str, tuple[int, str | None]] = {}
        with self._read() as conn:
            for start in range(0, len(linkedids), 500):
                chunk = list(linkedids)[start:start + 500]
                rows = conn.execute(select(_legs.c.linkedid, _legs.c.part, _legs.c.extension)
                                    .where(_legs.c.linkedid.in_(chunk), _legs.c.part.is_not(None)))
                for linkedid, part, extension in rows:
                    if linkedid not in found or part > found[linkedid][0]:
                        found[linkedid] = (part, extension or None)
        return found
