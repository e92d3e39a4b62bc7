"""The recordings pages as a part of an aiohttp application: their routes under /recordings,
each wrapped so that every answer carries the pages' security headers, every failure is a page
(or for the JSON twins a JSON object) with one sentence, and every request one log line.

Served on a listener of their own (RECORDING_PAGES_LISTEN=HOST:PORT) or mounted on the HTTP
API's (RECORDING_PAGES_LISTEN=http); off unless configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from importlib import resources

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from ...errors import RecordingFailure, WrongKey
from ...ops.access import AddressAllowList
from ...storage.audit import Audit
from ...storage.browse import Browse
from ...storage.people import People
from ...storage.waveform import PeaksCache
from ..arguments import HTTPFailure
from ..asker import Asker
from ..files import AudioFile
from ..http import OWN_LOG, request_key, status_of
from .auth import NEW_SESSION, Auth
from .svg import clock

log = logging.getLogger("recording.pages")
PREFIX = "/recordings"
# NOTE: no inline script or style anywhere, and nothing from another host (the PBX may have no
# internet): every asset is served from /recordings/static/ by this service.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png"}
# The pages' worker threads: database reads, waveforms, password checks (at most two of those).
THREADS = 3
_STARTED = request_key("recording.pages.started", float)
_USER = request_key("recording.pages.user", str)


@lru_cache(maxsize=8)
def _allow_list(text: str) -> AddressAllowList:
    return AddressAllowList(text, "RECORDING_PAGES_ALLOW")


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("recording.doors.pages", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S") if value else "—"
    env.filters["clock"] = clock
    return env


def _static() -> dict[str, tuple[bytes, str, str]]:
    """The pages' own assets, read once: name -> (bytes, type, ETag)."""
    found = {}
    for item in resources.files("recording.doors.pages").joinpath("static").iterdir():
        kind = STATIC_TYPES.get("." + item.name.rpartition(".")[2])
        if kind:
            body = item.read_bytes()
            found[item.name] = (body, kind, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return found


class Pages:
    """The recordings pages of one process: ``service`` (settings, directory, reads), ``store``,
    ``gate`` (allow lists' logging, the wrong-password limiter), ``metrics`` (may be None)."""

    prefix = PREFIX

    def __init__(self, service, store, gate, metrics=None):
        self.service = service
        self.store = store
        self.gate = gate
        self.metrics = metrics
        # NOTE: threads of their own: a waveform (a second for an hour of audio) or a password
        # check (64 MiB, a tenth of a second) must never keep the calls' database work waiting.
        self.executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="recording-pages")
        self.people = People(store)
        self.audit = Audit(store)
        self.browse = Browse(store)
        self.asker = Asker(service, self.people, gate, read=self.read)
        self.auth = Auth(self)
        self.peaks = PeaksCache()
        self.templates = _templates()
        self.static = _static()
        from .routes import Views

        self.views = Views(self)

    async def read(self, function, *args, **kwargs):
        """Runs a blocking call (the database, a file, a hash) in the pages' worker threads."""
        call = (lambda: function(*args, **kwargs)) if kwargs else partial(function, *args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- the application --------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        """Adds the pages' routes (and their file-answer logging) to ``app``."""
        for method, path, handler in self.views.routes():
            app.router.add_route(method, PREFIX + path, self._page(handler, json=path.endswith(".json")))
        app.router.add_route("*", PREFIX + "/{tail:.*}", self._page(self.views.missing))
        app.on_response_prepare.append(self._prepared)

    def application(self) -> web.Application:
        """The pages alone, for a listener of their own ('/' leads to the list)."""
        app = web.Application(client_max_size=64 * 1024)

        async def home(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(PREFIX + "/legs")

        app.router.add_get("/", self._page(home))
        app.router.add_get(PREFIX, self._page(home))
        self.mount(app)
        app.router.add_route("*", "/{tail:.*}", self._page(self.views.missing))
        return app

    def _page(self, handler, json: bool = False):
        """The route of a handler: the allow list, the security headers, errors as pages (or
        JSON) with one sentence, the new session cookie, one log line."""

        async def serve(request: web.Request) -> web.StreamResponse:
            request[OWN_LOG] = True
            request[_STARTED] = time.monotonic()
            sentence = ""
            try:
                if not _allow_list(self.service.settings.pages_allow).allows(request.remote):
                    self.gate.admits(_allow_list(self.service.settings.pages_allow), request.remote, "pages")
                    raise HTTPFailure(403, f"{request.remote} is not on the list of addresses that may use the "
                                           "recordings pages")
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status >= 400:
                    sentence = exc.reason
                    response = self.failure(request, exc.status, sentence, json)
                else:
                    response = web.Response(status=exc.status, headers=exc.headers)
            except HTTPFailure as exc:
                sentence = str(exc)
                response = self.failure(request, exc.status, sentence, json)
            except RecordingFailure as exc:
                if isinstance(exc, WrongKey):
                    await self.gate.wrong_key(self.auth.client(request), "pages")
                sentence = str(exc)
                response = self.failure(request, status_of(exc), sentence, json)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pages %s %s failed", request.method, request.path)
                sentence = "internal error in the recording service (see its log)"
                response = self.failure(request, 500, sentence, json)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if request.get(NEW_SESSION):
                self.auth.set_session_cookie(request, response, request[NEW_SESSION])
            if not isinstance(response, AudioFile):
                self._log(request, response.status, sentence)
            return response

        return serve

    def failure(self, request: web.Request, status: int, sentence: str, json: bool) -> web.Response:
        """The answer to a request that failed: a page with the sentence, or for a JSON twin
        {"error": sentence}; media (audio, a waveform) get the sentence as plain text."""
        if json:
            return web.json_response({"error": sentence}, status=status, headers={"Cache-Control": "no-store"})
        if request.path.endswith(("/audio", ".svg")):
            return web.Response(status=status, text=sentence + "\n", content_type="text/plain")
        return self.render("error.html", request, None, status=status, sentence=sentence, code=status)

    def render(self, template: str, request: web.Request, visitor, *, status: int = 200, **values) -> web.Response:
        """A page from ``template``: escaped (autoescape), with the visitor and the paths."""
        body = self.templates.get_template(template).render(
            visitor=visitor, prefix=PREFIX, static=PREFIX + "/static", **values)
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    def json(self, value, status: int = 200) -> web.Response:
        return web.json_response(value, status=status, headers={"Cache-Control": "no-store"})

    def remember_user(self, request: web.Request, login: str) -> None:
        """Who the request was for, in its log line."""
        request[_USER] = login

    async def _prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        # NOTE: a file's status (200, 206, 304, 416) is settled when aiohttp prepares it.
        if isinstance(response, AudioFile) and request.get(_STARTED) is not None and request.get(OWN_LOG):
            self._log(request, response.status, "")

    def _log(self, request: web.Request, status: int, sentence: str) -> None:
        if self.metrics is not None:
            self.metrics.record_http(request.path, status)
        started = request.get(_STARTED) or time.monotonic()
        ranged = request.headers.get("Range")
        ranged = "".join(c if " " <= c <= "~" else "?" for c in ranged[:40]) if ranged else None
        # NOTE: the path as it came, percent-escapes and all: a decoded %0a would start a new log line.
        log.info("pages %s %s from %s%s status=%d%s %.1fms%s", request.method, request.rel_url.raw_path,
                 self.auth.client(request), f" user={request[_USER]}" if request.get(_USER) else "", status,
                 f" range={ranged}" if ranged else "", (time.monotonic() - started) * 1000,
                 f": {sentence}" if sentence else "")
