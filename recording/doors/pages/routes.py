"""The pages themselves: sign in and out, the list of legs (and its JSON twin), a leg's page
(and its JSON twin), its audio, its waveform, and a Recording Manager's hold and release.

Who sees what is the HTTP API's rule: owners their own legs, a Recording Manager every leg. A
leg the visitor may not see is answered exactly as a leg nobody has: 404.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import urlencode

from aiohttp import web

from ... import credentials
from ...domain import LEG_STATES, LegView
from ...errors import Denied, NotFound
from ...storage import audit as audit_table
from ...storage.audio import MonitorDirectory
from ...storage.waveform import NoWaveform
from ..arguments import HTTPFailure
from ..files import audio_response, continues, leg_file
from . import keyset, listing, svg
from .auth import SIGNIN_COOKIE, Visitor

LEG = "{leg:[0-9a-f]{32}}"
_LOCAL_PATH = re.compile(r"^/recordings/[A-Za-z0-9/._-]*(\?[^\s]*)?$")
MAX_FORM = 16 * 1024


class Views:
    def __init__(self, pages):
        self.pages = pages

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path under /recordings, handler) of every page."""
        return [
            ("GET", "/static/{name}", self.static),
            ("GET", "/sign-in", self.sign_in_form),
            ("POST", "/sign-in", self.sign_in),
            ("POST", "/sign-out", self.sign_out),
            ("GET", "/", self.home),
            ("GET", "/legs", self.legs),
            ("GET", "/legs.json", self.legs_json),
            ("GET", f"/legs/{LEG}.json", self.leg_json),
            ("GET", f"/legs/{LEG}", self.leg),
            ("GET", f"/legs/{LEG}/audio", self.audio),
            ("GET", f"/legs/{LEG}/waveform.svg", self.waveform),
            ("POST", f"/legs/{LEG}/hold", self.hold),
        ]

    # -- who -----------------------------------------------------------------------------------

    async def _visitor(self, request: web.Request, *, page: bool = True) -> Visitor:
        """The signed-in visitor; for a page, nobody signed in is sent to the sign-in form (and
        back here after it), for anything else it is a 401."""
        visitor = await self.pages.auth.visitor(request)
        if visitor is None:
            if page and request.method == "GET":
                raise web.HTTPSeeOther(f"{self.pages.prefix}/sign-in?{urlencode({'next': request.path_qs})}")
            raise HTTPFailure(401, "sign in first (the session ended, or was never opened)")
        self.pages.remember_user(request, visitor.user.login)
        return visitor

    async def _form(self, request: web.Request, visitor: Visitor | None) -> dict[str, str]:
        """A posted form's fields; refused unless it carries the session's CSRF token (a token
        visitor, whose header no other site can send, needs none)."""
        if (request.content_length or 0) > MAX_FORM:
            raise HTTPFailure(413, f"the form is larger than {MAX_FORM} bytes")
        form = await request.post()
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        if visitor is not None and visitor.via != "token" and not credentials.same(fields.get("csrf"), visitor.csrf):
            raise HTTPFailure(403, "the form's CSRF token is missing or wrong: reload the page and send it again")
        return fields

    async def _leg(self, request: web.Request, visitor: Visitor) -> LegView:
        """The leg of the URL if the visitor may see it; 404 alike for one they may not."""
        leg_id = request.match_info["leg"]
        leg = await self.pages.read(self.pages.store.leg, leg_id)
        if leg is None or not leg.visible_to(visitor.user):
            raise NotFound(f"no recording leg {leg_id} that you may see")
        return leg

    # -- signing in and out ----------------------------------------------------------------------

    async def sign_in_form(self, request: web.Request, *, status: int = 200, sentence: str = "",
                           login: str = "") -> web.Response:
        target = _local(request.query.get("next", ""), self.pages.prefix)
        if status == 200 and await self.pages.auth.visitor(request) is not None:
            raise web.HTTPSeeOther(target)
        nonce = credentials.new_secret()
        response = self.pages.render("sign_in.html", request, None, status=status, sentence=sentence, login=login,
                                     nonce=nonce, next=target)
        response.set_cookie(SIGNIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=self.pages.auth.https(request),
                            path=self.pages.prefix + "/sign-in", max_age=3600)
        return response

    async def sign_in(self, request: web.Request) -> web.Response:
        fields = await self._form(request, None)
        login, password = fields.get("login", "").strip(), fields.get("password", "")
        target = _local(fields.get("next", ""), self.pages.prefix)
        if not credentials.same(fields.get("nonce"), request.cookies.get(SIGNIN_COOKIE)):
            raise HTTPFailure(403, "the sign-in form is stale or came from another site: open the sign-in page again")
        if not login or not password or len(login) > 128 or len(password) > credentials.MAX_PASSWORD:
            return await self.sign_in_form(request, status=400, sentence="give your login and password", login=login)
        try:
            visitor = await self.pages.auth.sign_in(request, login, password)
        except Denied as exc:
            return await self.sign_in_form(request, status=403, sentence=str(exc), login=login)
        self.pages.remember_user(request, visitor.user.login)
        response = _redirect(target)
        response.del_cookie(SIGNIN_COOKIE, path=self.pages.prefix + "/sign-in")
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request, page=False)
        await self._form(request, visitor)
        await self.pages.auth.sign_out(request, visitor)
        response = _redirect(f"{self.pages.prefix}/sign-in")
        self.pages.auth.set_session_cookie(request, response, None)
        return response

    # -- the list ----------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{self.pages.prefix}/legs")

    async def _page_of_legs(self, request: web.Request, visitor: Visitor):
        filters, after, size, given = listing.read_query(request.rel_url.raw_query_string, visitor.user)
        legs, following = await self.pages.read(self.pages.browse.page, visitor.user, filters, after, size)
        checks = await self.pages.read(self.pages.browse.checks, [leg.id for leg in legs])
        token = keyset.encode(*following) if following else None
        return legs, checks, given, token

    async def legs(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request)
        legs, checks, given, token = await self._page_of_legs(request, visitor)
        path = f"{self.pages.prefix}/legs"
        now = datetime.now(timezone.utc)
        return self.pages.render(
            "legs.html", request, visitor, rows=[_row(leg, checks.get(leg.id), now) for leg in legs], given=given,
            states=LEG_STATES, first=listing.link(path, given, next=None) if "next" in given else None,
            following=listing.link(path, given, next=token) if token else None,
            json_link=listing.link(path + ".json", given),
        )

    async def legs_json(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request, page=False)
        legs, checks, given, token = await self._page_of_legs(request, visitor)
        now = datetime.now(timezone.utc)
        path = f"{self.pages.prefix}/legs.json"
        return self.pages.json({
            "legs": [_leg_json(leg, checks.get(leg.id), now) for leg in legs],
            "next": token, "nextUrl": listing.link(path, given, next=token) if token else None,
        })

    # -- a leg ---------------------------------------------------------------------------------------

    async def _leg_details(self, request: web.Request, visitor: Visitor):
        leg = await self._leg(request, visitor)
        call = await self.pages.read(self.pages.browse.call_legs, visitor.user, leg.unique_id)
        check = (await self.pages.read(self.pages.browse.checks, [leg.id])).get(leg.id)
        events = []
        if visitor.user.is_manager:
            events = await self.pages.read(self.pages.audit.events, leg_id=leg.id)
        return leg, call, check, events

    async def leg(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request)
        leg, call, check, events = await self._leg_details(request, visitor)
        now = datetime.now(timezone.utc)
        base = f"{self.pages.prefix}/legs/{leg.id}"
        return self.pages.render(
            "leg.html", request, visitor, leg=_row(leg, check, now), view=leg, check=check,
            call=[_row(other, None, now) for other in call if other.id != leg.id], events=events, base=base,
            pauses=[(p, svg.clock((p.paused_at - leg.start).total_seconds()),
                     svg.clock(((p.resumed_at or leg.end or now) - p.paused_at).total_seconds())) for p in leg.pauses],
        )

    async def leg_json(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request, page=False)
        leg, call, check, events = await self._leg_details(request, visitor)
        now = datetime.now(timezone.utc)
        value = _leg_json(leg, check, now)
        value["callLegs"] = [other.id for other in call if other.id != leg.id]
        if visitor.user.is_manager:
            value["audit"] = [event.as_json() for event in events]
        return self.pages.json(value)

    async def audio(self, request: web.Request) -> web.StreamResponse:
        """The leg's file for the player (Range: seeking) or, with ?download=1, to save."""
        visitor = await self._visitor(request, page=False)
        leg = await self._leg(request, visitor)
        download = request.query.get("download") == "1"
        look = await leg_file(leg, MonitorDirectory.of(self.pages.service.settings), self.pages.read)
        if not continues(request):
            event = audit_table.Event.of("download" if download else "play", leg, visitor.user.login, "pages",
                                         self.pages.auth.client(request))
            await self.pages.read(self.pages.audit.record if download else self.pages.audit.record_play, event)
        return audio_response(request, leg, look, attachment=download)

    async def waveform(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request, page=False)
        leg = await self._leg(request, visitor)
        picture, note = None, ""
        try:
            look = await leg_file(leg, MonitorDirectory.of(self.pages.service.settings), self.pages.read)
            picture = await self.pages.read(self.pages.peaks.get, look.path, look.size, look.mtime_ns, svg.WIDTH)
        except NoWaveform as exc:
            note = str(exc)
        except (NotFound, OSError) as exc:
            note = str(exc) if isinstance(exc, NotFound) else f"the file cannot be read: {exc.strerror or exc}"
        return web.Response(text=svg.picture(picture, leg, note), content_type="image/svg+xml",
                            headers={"Cache-Control": "private, no-store"})

    async def hold(self, request: web.Request) -> web.Response:
        """A Recording Manager places or releases the leg's legal hold, with a reason."""
        visitor = await self._visitor(request, page=False)
        fields = await self._form(request, visitor)
        leg = await self._leg(request, visitor)
        if not visitor.user.is_manager:
            raise Denied(f"{visitor.user.login} may not hold recordings: only a Recording Manager may")
        action = fields.get("action")
        if action not in ("hold", "release"):
            raise HTTPFailure(400, "action must be hold or release")
        reason = (fields.get("reason") or "").strip()[:255] or None
        held = action == "hold"
        login, address = visitor.user.login, self.pages.auth.client(request)

        def audited(conn, view, changed) -> None:
            audit_table.write(conn, [audit_table.hold_event(view, held, changed, login, "pages", address, reason)])

        await self.pages.read(self.pages.store.set_hold, leg.id, held=held, by=login,
                              at=datetime.now(timezone.utc), reason=reason, then=audited)
        return _redirect(f"{self.pages.prefix}/legs/{leg.id}")

    # -- the rest ------------------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.Response:
        found = self.pages.static.get(request.match_info["name"])
        if found is None:
            raise NotFound("no such file among the pages' assets")
        body, kind, etag = found
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=kind, headers={"ETag": etag, "Cache-Control": "no-cache"})

    async def missing(self, request: web.Request) -> web.Response:
        raise HTTPFailure(404, "nothing is served at this path (the recordings are at /recordings/legs)")


def _redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser asks for ``location`` with GET."""
    return web.Response(status=303, headers={"Location": location})


def _local(target: str, prefix: str) -> str:
    """Where to go after signing in: a path of the pages only (never another site)."""
    return target if _LOCAL_PATH.match(target or "") and target.startswith(prefix + "/") else f"{prefix}/legs"


def _row(leg: LegView, check, now: datetime) -> dict:
    """What the list and the leg's page show of a leg."""
    return {
        "id": leg.id, "start": leg.start, "end": leg.end, "duration": leg.duration(now), "recorded": leg.recorded(now),
        "owner": leg.owner, "ownership": leg.ownership, "pauses": len(leg.pauses), "state": leg.state,
        "tag": leg.tag or leg.external_reference, "unique_id": leg.unique_id, "leg": leg.leg,
        "extension": leg.extension, "held": leg.held, "verified": _verified(leg, check), "has_audio": leg.has_audio,
    }


def _verified(leg: LegView, check) -> str:
    """yes (hashed, and unchanged when last verified), changed/vanished/unreadable (what the
    last verification found), or no (not hashed yet)."""
    if leg.file_sha256 is None:
        return "no"
    return check.outcome if check is not None and check.outcome != "unchanged" else "yes"


def _leg_json(leg: LegView, check, now: datetime) -> dict:
    value = leg.as_json(now)
    value["verified"] = _verified(leg, check)
    value["lastVerified"] = (check.at if check else leg.hashed_at).isoformat() if (check or leg.hashed_at) else None
    value["pausesCount"] = len(leg.pauses)
    return value
