"""Who is at the pages: a session signed in with a password (or opened for the user a trusted
single-sign-on proxy names), or a user's API token for the JSON twins. Sessions live in the
database only (``storage/people.py``): the cookie holds a random value, the database its
SHA-256, so any process or host sharing the database knows the same sessions, and none keeps
one in its memory.

The client's address is the peer's, or, from a proxy RECORDING_PAGES_TRUSTED_PROXIES lists,
the last address its X-Forwarded-For adds; the same proxies alone may say HTTPS
(X-Forwarded-Proto) or name the user (RECORDING_PAGES_SSO_HEADER).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from aiohttp import web

from ... import credentials
from ...domain import UserRef, utcnow
from ...errors import Denied
from ...ops.access import AddressAllowList
from ..asker import bearer
from ..http import request_key

log = logging.getLogger("recording.pages")
COOKIE = "recording_session"
# The sign-in form's double-submit value: a page of another site cannot post a sign-in (which
# would sign the victim in as the attacker).
SIGNIN_COOKIE = "recording_signin"
# Set on a request whose answer must carry a new session cookie (a session opened for SSO).
NEW_SESSION = request_key("recording.pages.new_session", str)
# Password checks (argon2: 64 MiB and tens of milliseconds each) running at once, at most.
HASHING = 2


@dataclass(frozen=True)
class Visitor:
    """A person at the pages: the user (its groups as the database says now), the session's
    secret cookie value (None for a token), and how they came: password, sso or token."""

    user: UserRef
    session: str | None
    via: str

    @property
    def csrf(self) -> str:
        """The CSRF token of this session's forms ('' for a token, which needs none)."""
        return credentials.csrf_token(self.session) if self.session else ""


@lru_cache(maxsize=8)
def _networks(text: str) -> AddressAllowList:
    return AddressAllowList(text, "RECORDING_PAGES_TRUSTED_PROXIES")


class Auth:
    """``pages`` gives the settings, the people store, the gate and the executor."""

    def __init__(self, pages):
        self.pages = pages
        self._hashing = asyncio.Semaphore(HASHING)

    @property
    def settings(self):
        return self.pages.service.settings

    def from_proxy(self, request: web.Request) -> bool:
        """Whether the peer is a proxy the settings trust."""
        proxies = self.settings.pages_trusted_proxies
        return bool(proxies) and _networks(proxies).allows(request.remote)

    def client(self, request: web.Request) -> str | None:
        """The client's address (see the module)."""
        if self.from_proxy(request):
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return request.remote

    def https(self, request: web.Request) -> bool:
        if self.settings.pages_https or request.secure and not self.from_proxy(request):
            return True
        return self.from_proxy(request) and request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    # -- who is there -------------------------------------------------------------------------

    async def visitor(self, request: web.Request) -> Visitor | None:
        """Who is at the pages, or None (nobody signed in). Raises WrongKey for a wrong token,
        Denied for a user the single-sign-on proxy names who is not a user here."""
        token = bearer(request)
        if token is not None:
            user = await self.pages.asker.token_user(request, token, self.client(request))
            return Visitor(user, None, "token")
        secret = request.cookies.get(COOKIE)
        found = None
        if secret and len(secret) <= 128:
            found = await self.pages.read(self.pages.people.session_user, credentials.digest(secret), utcnow(),
                                          timedelta(seconds=self.settings.pages_idle_timeout))
        sso = self._sso_login(request)
        if sso is not None:
            if found is not None and found[0].login.casefold() == sso.casefold():
                return Visitor(found[0], secret, found[1])
            return await self._open_sso(request, sso)
        return Visitor(found[0], secret, found[1]) if found else None

    def _sso_login(self, request: web.Request) -> str | None:
        header = self.settings.pages_sso_header
        if not header or not self.from_proxy(request):
            return None
        login = request.headers.get(header, "").strip()
        return login[:128] or None

    async def _open_sso(self, request: web.Request, login: str) -> Visitor:
        user, _ = await self.pages.read(self.pages.people.password_of, login)
        if user is None:
            raise Denied(f"the single-sign-on proxy names {login!r}, who is not a user of the recordings "
                         f"(recording-agi users add {login})")
        secret = await self._open(request, user, "sso")
        log.info("pages: session opened for %s by single sign-on from %s", user.login, self.client(request))
        return Visitor(user, secret, "sso")

    async def _open(self, request: web.Request, user: UserRef, via: str) -> str:
        secret = credentials.new_secret()
        await self.pages.read(self.pages.people.open_session, user.id, credentials.digest(secret), utcnow(),
                              timedelta(seconds=self.settings.pages_session_max_age),
                              address=self.client(request), via=via)
        request[NEW_SESSION] = secret
        return secret

    # -- signing in and out ---------------------------------------------------------------------

    async def sign_in(self, request: web.Request, login: str, password: str) -> Visitor:
        """Checks the password (after the wait the limiter asks of this address) and opens a
        session. Raises Denied with one sentence for a wrong login or password (which of the
        two is not said)."""
        address = self.client(request)
        gate = self.pages.gate
        await gate.hold_back(address, gate.passwords)
        user, stored = await self.pages.read(self.pages.people.password_of, login)
        async with self._hashing:
            right = await self.pages.read(credentials.verify_password, password, stored)
        if not right:
            gate.wrong_password(address, login)
            raise Denied("wrong login or password")
        gate.passwords.record_success(address)
        if credentials.needs_rehash(stored):
            fresh = await self.pages.read(credentials.hash_password, password)
            await self.pages.read(self.pages.people.rehash, user.id, stored, fresh)
        secret = await self._open(request, user, "password")
        log.info("pages: %s signed in from %s", user.login, address)
        return Visitor(user, secret, "password")

    async def sign_out(self, request: web.Request, visitor: Visitor) -> None:
        if visitor.session:
            await self.pages.read(self.pages.people.end_session, credentials.digest(visitor.session))
            log.info("pages: %s signed out from %s", visitor.user.login, self.client(request))

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse, secret: str | None) -> None:
        """Sets (or with None, clears) the session cookie: HttpOnly, SameSite=Lax (a link from
        another site opens the page signed in; a form of another site posts without it), Secure
        behind HTTPS, for the pages' paths only."""
        path = self.pages.prefix + "/"
        if secret is None:
            response.del_cookie(COOKIE, path=path)
            return
        response.set_cookie(COOKIE, secret, httponly=True, samesite="Lax", secure=self.https(request), path=path)
