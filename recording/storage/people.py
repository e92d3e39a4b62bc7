"""Who a person is, as the database says: passwords, the pages' sessions and the per-user API
tokens, through the Store's transactions. Only hashes are stored (see ``recording.credentials``).

Everything that decides who is signed in is in the database, so a session begun on one process
or host is good on every other that shares it, and one ended anywhere is ended everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from ..domain import UserRef
from ..errors import Invalid
from .models import TRUST_CRM_VARIABLE, ApiToken, PageSession, Password, SystemVariable
from .store import Store

_sessions = PageSession.__table__
_tokens = ApiToken.__table__
_passwords = Password.__table__
# A session's last-seen time is written at most this often: not a write for every request.
TOUCH_EVERY = timedelta(seconds=30)


@dataclass(frozen=True)
class TokenInfo:
    """One of a user's API tokens, as ``users token LOGIN --list`` shows it (never the token)."""

    id: int
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class People:
    """Passwords, sessions and tokens in ``store``'s database. Synchronous and thread-safe, as
    the Store is: the event loop calls it from worker threads."""

    def __init__(self, store: Store):
        self.store = store

    def _user(self, conn, login: str) -> UserRef:
        user = self.store._user_by_login(conn, login)
        if user is None:
            raise Invalid(f"unknown user {login!r} (recording-agi users add {login})")
        return user

    # -- passwords ----------------------------------------------------------------------------

    def set_password(self, login: str, hashed: str, now: datetime) -> tuple[UserRef, int]:
        """Stores the user's new password hash and ends every session of the user, in one
        transaction. Returns the user and how many sessions were ended."""
        with self.store._write() as conn:
            user = self._user(conn, login)
            conn.execute(delete(_passwords).where(_passwords.c.user_id == user.id))
            conn.execute(_passwords.insert().values(user_id=user.id, hash=hashed, changed_at=now))
            ended = conn.execute(delete(_sessions).where(_sessions.c.user_id == user.id)).rowcount
        return user, ended

    def password_of(self, login: str) -> tuple[UserRef | None, str | None]:
        """The user with that login and its password hash; (None, None) for an unknown login,
        (user, None) for a user without a password."""
        with self.store._read() as conn:
            user = self.store._user_by_login(conn, login)
            if user is None:
                return None, None
            return user, conn.scalar(select(_passwords.c.hash).where(_passwords.c.user_id == user.id))

    def rehash(self, user_id: int, old: str, new: str) -> None:
        """Replaces a hash made with weaker parameters, unless the password changed meanwhile."""
        with self.store._write() as conn:
            conn.execute(update(_passwords).where(_passwords.c.user_id == user_id, _passwords.c.hash == old)
                         .values(hash=new))

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, user_id: int, token_hash: str, now: datetime, max_age: timedelta, *,
                     address: str | None, via: str) -> None:
        """A new signed-in session; sessions past their time (anyone's) are cleared on the way."""
        with self.store._write() as conn:
            conn.execute(delete(_sessions).where(_sessions.c.expires_at < now))
            conn.execute(_sessions.insert().values(
                token_hash=token_hash, user_id=user_id, created_at=now, last_seen_at=now, expires_at=now + max_age,
                address=(address or "")[:64] or None, via=via,
            ))

    def session_user(self, token_hash: str, now: datetime, idle: timedelta) -> tuple[UserRef, str] | None:
        """The user signed in by that session and how (``password`` or ``sso``), with the
        groups the database gives the user now; None when there is no such session, or it was
        idle longer than ``idle`` or is past its time (it is then deleted)."""
        with self.store._write() as conn:
            row = conn.execute(select(_sessions).where(_sessions.c.token_hash == token_hash)).first()
            if row is None:
                return None
            if row.expires_at <= now or row.last_seen_at + idle <= now:
                conn.execute(delete(_sessions).where(_sessions.c.token_hash == token_hash))
                return None
            # NOTE: often enough that a short idle time does not end a session in use.
            if row.last_seen_at + min(TOUCH_EVERY, idle / 4) <= now:
                conn.execute(update(_sessions).where(_sessions.c.token_hash == token_hash).values(last_seen_at=now))
            return self.store._user_by_id(conn, row.user_id), row.via

    def end_session(self, token_hash: str) -> bool:
        with self.store._write() as conn:
            return conn.execute(delete(_sessions).where(_sessions.c.token_hash == token_hash)).rowcount == 1

    def sessions_of(self, login: str) -> int:
        """How many sessions the user has open (for tests and ``check``)."""
        with self.store._read() as conn:
            user = self._user(conn, login)
            return conn.scalar(select(func.count()).select_from(_sessions).where(_sessions.c.user_id == user.id))

    # -- API tokens ---------------------------------------------------------------------------

    def add_token(self, login: str, token_hash: str, now: datetime, label: str | None) -> tuple[UserRef, int]:
        with self.store._write() as conn:
            user = self._user(conn, login)
            token_id = conn.scalar(_tokens.insert().values(
                user_id=user.id, token_hash=token_hash, label=label, created_at=now,
            ).returning(_tokens.c.id))
        return user, token_id

    def tokens(self, login: str) -> list[TokenInfo]:
        with self.store._read() as conn:
            user = self._user(conn, login)
            rows = conn.execute(select(_tokens).where(_tokens.c.user_id == user.id).order_by(_tokens.c.id))
            return [TokenInfo(r.id, r.label, r.created_at, r.last_used_at, r.revoked_at) for r in rows]

    def revoke_tokens(self, login: str, token_id: int | None, now: datetime) -> int:
        """Revokes one of the user's tokens (``token_id``) or all of them (None); returns how
        many were in use and are revoked now."""
        condition = [_tokens.c.revoked_at.is_(None)]
        if token_id is not None:
            condition.append(_tokens.c.id == token_id)
        with self.store._write() as conn:
            user = self._user(conn, login)
            return conn.execute(update(_tokens).where(_tokens.c.user_id == user.id, *condition)
                                .values(revoked_at=now)).rowcount

    def token_user(self, token_hash: str, now: datetime) -> UserRef | None:
        """The user a token names (with its groups now), None for a token nobody has or one
        revoked."""
        with self.store._write() as conn:
            row = conn.execute(select(_tokens.c.id, _tokens.c.user_id, _tokens.c.last_used_at).where(
                _tokens.c.token_hash == token_hash, _tokens.c.revoked_at.is_(None))).first()
            if row is None:
                return None
            if row.last_used_at is None or row.last_used_at + TOUCH_EVERY <= now:
                conn.execute(update(_tokens).where(_tokens.c.id == row.id).values(last_used_at=now))
            return self.store._user_by_id(conn, row.user_id)

    # -- the CRM's word -----------------------------------------------------------------------

    def crm_trusted(self) -> bool:
        """Whether the database says to take the apiKey's word for who asks (set by migration
        0006 on a database in use before it)."""
        with self.store._read() as conn:
            value = conn.scalar(select(SystemVariable.value).where(SystemVariable.name == TRUST_CRM_VARIABLE))
        return (value or "").strip().lower() == "true"

