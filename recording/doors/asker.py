"""Who asks, at the HTTP API's retrieval, play and hold (and the pages' JSON by token): proven by
the user's own token (``Authorization: Bearer``, from ``recording-agi users token LOGIN``), or,
where the site trusts its CRM with every user's rights, by the apiKey and the ``loginName`` the
CRM names (the vendor's form).

NOTE: the apiKey is the dialplan's, readable over AMI and the Asterisk CLI: without the trust
setting it proves only that the caller may start and stop recordings, not who it is.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..credentials import TOKEN_PREFIX, digest
from ..domain import UserRef, utcnow
from ..errors import Denied, StorageUnavailable, WrongKey
from ..ops.gate import Gate
from ..storage.people import People
from .arguments import HTTPFailure
from .openapi import KEY

log = logging.getLogger("recording.http")
LOGIN = "loginName"
WITHOUT_TRUST = ("the apiKey does not prove who asks: send the user's own token (recording-agi users token LOGIN) "
                 "as Authorization: Bearer, or set RECORDING_TRUST_CRM_LOGIN_NAME=true to take the CRM's loginName "
                 "for it (the CRM is then trusted with every user's rights)")


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without one. Raises HTTPFailure
    400 for another scheme."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPFailure(400, "Authorization must be 'Bearer TOKEN' with a user's token (recording-agi users token)")
    return token.strip()


class Asker:
    """Tells who asks, by the service's settings now (SIGHUP may change the trust);
    ``read(function, *args)`` runs a blocking store call in a worker thread."""

    def __init__(self, service, people: People, gate: Gate | None, read=None):
        self.service = service
        self.people = people
        self.gate = gate
        # Where blocking reads run: the service's worker threads unless told otherwise.
        self.read = read or service.read
        self._trusted: tuple[float, bool] | None = None
        self._warned = False

    async def user(self, request: web.Request, args: dict[str, str]) -> UserRef:
        """The user a token names, or the apiKey's loginName where the CRM is trusted. Raises
        WrongKey (a wrong token or key: counted by the limiter), Denied, HTTPFailure 400."""
        token = bearer(request)
        if token is not None:
            user = await self.token_user(request, token)
            named = args.get(LOGIN)
            if named and named.casefold() != user.login.casefold():
                raise Denied(f"the token is {user.login}'s, and loginName names {named[:128]!r}: leave loginName out")
            return user
        await self.authorize(request, args.get(KEY))
        if not await self.trusted():
            raise Denied(WITHOUT_TRUST)
        login = args.get(LOGIN)
        if not login:
            raise HTTPFailure(400, "loginName is required with the apiKey: legs are shown to their owner or a "
                                   "Recording Manager")
        user = await self.service.directory.user(login)
        if user is None:
            raise Denied(f"unknown user {login!r}")
        return user

    async def authorize(self, request: web.Request, key: str | None) -> None:
        """The apiKey check, after the wait the limiter asks of the address."""
        if self.gate is not None:
            await self.gate.hold_back(request.remote)
        await self.service.authorize(key)
        if self.gate is not None:
            self.gate.right_key(request.remote)

    async def token_user(self, request: web.Request, token: str, address: str | None = None) -> UserRef:
        """The user ``token`` names; raises WrongKey for one nobody has, or revoked."""
        address = address or request.remote
        if self.gate is not None:
            await self.gate.hold_back(address)
        user = None
        if token.startswith(TOKEN_PREFIX) and len(token) <= 128:
            user = await self.read(self.people.token_user, digest(token), utcnow())
        if user is None:
            raise WrongKey("the token is not valid (unknown or revoked; recording-agi users token LOGIN makes one)")
        if self.gate is not None:
            self.gate.right_key(address)
        return user

    async def trusted(self) -> bool:
        """Whether the apiKey's word for who asks is taken: RECORDING_TRUST_CRM_LOGIN_NAME, else
        what the database says (read again every RECORDING_DIRECTORY_REFRESH)."""
        settings = self.service.settings
        said = settings.crm_trust
        if said is None:
            now = time.monotonic()
            if self._trusted is None or now - self._trusted[0] > settings.directory_refresh:
                try:
                    self._trusted = (now, await self.read(self.people.crm_trusted))
                except StorageUnavailable:
                    if self._trusted is None:
                        raise
            said = self._trusted[1]
        if said and not self._warned:
            self._warned = True
            log.warning("the HTTP API takes the apiKey and loginName as proof of who asks "
                        "(RECORDING_TRUST_CRM_LOGIN_NAME, or a database in use before 0006): whoever holds the "
                        "apiKey may act as any user; give each CRM user a token and set it to false")
        return said
