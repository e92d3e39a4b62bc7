"""The HTTP front door: the vendor's recording API on its own paths (so existing CRM
integrations work unchanged), reaching Asterisk over AMI, on the same service as FastAGI.

Errors come back as the right status with one plain-text sentence; every request is logged on
one line, without its query string (it carries the apiKey).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..domain import StartRequest
from ..errors import (
    AmbiguousChannel,
    AsteriskFailure,
    AsteriskUnavailable,
    Conflict,
    Denied,
    Invalid,
    MonitorUnavailable,
    NoSuchChannel,
    NotFound,
    RecordingFailure,
    StorageRefused,
    StorageUnavailable,
    WrongKey,
)
from ..ops.gate import Gate
from ..asterisk.manager import Manager
from ..ops.metrics import ServiceMetrics
from .arguments import FORM, MULTIPART, HTTPFailure, form_pairs, multipart_pairs, resolve, urlencoded_pairs
from .openapi import KEY, MAX_BODY, OPERATIONS, Operation, spec
from ..service import LegRequest, RecordingService
from ..storage import audit as audit_table
from ..storage.audio import MonitorDirectory
from ..storage.people import People
from ..storage.retention import audit_hold
from ..storage.store import Store
from .asker import Asker
from .files import AudioFile, audio_response, continues, leg_file

log = logging.getLogger("recording.http")

STATUS = [
    (Denied, 403), (NoSuchChannel, 404), (NotFound, 404), (AmbiguousChannel, 409), (Conflict, 409), (Invalid, 400),
    (AsteriskUnavailable, 503), (AsteriskFailure, 502), (StorageUnavailable, 503), (StorageRefused, 500),
    (MonitorUnavailable, 503),
]
RECORDING_PATH = next(op.path for op in OPERATIONS if op.handler == "recording")


def request_key(name: str, kind: type):
    """A key of a request's own storage (aiohttp's typed RequestKey where it has one)."""
    return web.RequestKey(name, kind) if hasattr(web, "RequestKey") else name


# Set on a request by a part mounted on the API's listener that logs its requests itself.
OWN_LOG = request_key("recording.own_log", bool)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(failure: RecordingFailure) -> int:
    return next((code for kind, code in STATUS if isinstance(failure, kind)), 500)


async def arguments(request: web.Request, operation: Operation) -> dict[str, str]:
    """The operation's arguments from the query string and (where it takes one) a form body;
    see arguments.resolve for what is refused."""
    pairs = urlencoded_pairs(request.rel_url.raw_query_string, "the query string")
    if operation.form:
        pairs += await body_pairs(request)
    return resolve(operation, pairs)


async def body_pairs(request: web.Request) -> list[tuple[str, str]]:
    """The fields of a form body of at most MAX_BODY bytes; no body, no fields."""
    too_large = HTTPFailure(413, f"the body is larger than {MAX_BODY} bytes (the arguments fit in far less)",
                            close=True)
    if (request.content_length or 0) > MAX_BODY:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except web.RequestPayloadError as exc:
        # NOTE: aiohttp undoes a Content-Encoding (gzip, deflate, br) while it reads; a body
        # that does not decode, or a chunk that breaks off, fails here.
        raise HTTPFailure(400, f"the body could not be read: {reason_of(exc)}", close=True) from None
    if not raw:
        return []
    if request.content_type == FORM:
        return form_pairs(raw, request.charset)
    if request.content_type == MULTIPART:
        return multipart_pairs(raw, request.headers.get("Content-Type", ""))
    raise HTTPFailure(415, f"a body must be {FORM} or {MULTIPART}, not {request.content_type[:60]!r}")


def reason_of(exc: BaseException) -> str:
    """The first clause of aiohttp's message for a request it could not read, without the
    bytes it quotes (they may hold the apiKey)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = str(getattr(cause, "message", "") or cause) or type(cause).__name__
    return message.split(":", 1)[0].strip()[:80] or type(cause).__name__


class ServerLog(logging.LoggerAdapter):
    """aiohttp's own log ("aiohttp.server"), given to it for the API's listeners. A request it
    could not parse (a line over 8190 bytes, a malformed chunk, bytes that are not HTTP) is the
    client's error, answered 400 by aiohttp before it reaches the API: one line at INFO without
    the traceback. A body that broke off or did not decode has had its answer and its line from
    the API; aiohttp meets the same error again while it drains the connection, and says so at
    DEBUG only. Anything else is logged as aiohttp logs it."""

    def __init__(self):
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def log(self, level, msg, *args, exc_info=None, **kwargs):
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("HTTP request from %s refused with %d before it was read: %s",
                             args[0] if args else "?", exc_info.code, reason_of(exc_info))
        elif isinstance(exc_info, web.RequestPayloadError):
            self.logger.debug("the rest of a body that could not be read was dropped: %s", reason_of(exc_info))
        else:
            self.logger.log(level, msg, *args, exc_info=exc_info, **kwargs)


def answer(outcome, channel) -> web.Response:
    """200 with a service outcome (StartOutcome or LegOutcome) as JSON: the channel is the one
    the leg records (``channel``, the one the request named, unless the outcome says another:
    a followed call's leg runs on its caller's channel)."""
    return web.json_response({
        "status": outcome.status, "recordingId": outcome.leg_id,
        "uniqueId": outcome.unique_id or channel.unique_id, "channel": outcome.channel or channel.name,
        "leg": outcome.leg, "file": outcome.file, "deferred": outcome.deferred,
    })


def plain(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)


class RecordingAPI:
    def __init__(
        self, service: RecordingService, store: Store, manager: Manager | None, *,
        gate: Gate | None = None, metrics: ServiceMetrics | None = None, health=None,
    ):
        self.service = service
        self.store = store
        self.manager = manager
        self.gate = gate
        self.metrics = metrics
        self.health = health
        self.people = People(store)
        self.asker = Asker(service, self.people, gate)

    # Served beside the described operations: the description itself and the probes.
    SERVICE_ROUTES = (
        ("GET", "/openapi.json", "openapi"),
        ("GET", "/metrics", "scrape"),
        ("GET", "/healthz", "healthz"),
    )
    # Every route, as (method, path, handler name).
    ROUTES = tuple((op.method, op.path, op.handler) for op in OPERATIONS) + SERVICE_ROUTES

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [(op.method, op.path, self._described(op)) for op in OPERATIONS] + [
            (method, path, getattr(self, name)) for method, path, name in self.SERVICE_ROUTES
        ]

    def _described(self, operation: Operation) -> Handler:
        """The route of an operation: its arguments read as declared, then its handler."""
        handler = getattr(self, operation.handler)

        async def serve(request: web.Request) -> web.StreamResponse:
            return await handler(request, await arguments(request, operation))

        return serve

    def application(self) -> web.Application:
        # NOTE: client_max_size bounds a body read in chunks (no Content-Length) as well.
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        app.on_response_prepare.append(self._file_prepared)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Every answer but a success is one sentence, and every request one log line (with the
        sentence); only a failure of the service itself is logged with its traceback."""
        started = time.monotonic()
        sentence = ""
        try:
            if self.gate is not None and not self.gate.admits(self.gate.http, request.remote, "HTTP"):
                raise HTTPFailure(403, f"{request.remote} is not on this service's list of allowed clients")
            response = await handler(request)
            if request.get(OWN_LOG):
                return response  # the recordings pages, mounted here, log their own requests
        except HTTPFailure as exc:
            sentence = str(exc)
            response = plain(exc.status, sentence)
            if exc.close:
                response.force_close()
        except RecordingFailure as exc:
            if isinstance(exc, WrongKey) and self.gate is not None:
                await self.gate.wrong_key(request.remote, "HTTP")
            sentence = str(exc)
            response = plain(status_of(exc), sentence)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            sentence = f"{request.method} is not allowed here; use {allowed}"
            response = plain(405, sentence, Allow=allowed)
        except web.HTTPNotFound:
            sentence = "nothing is served at this path (the API is described at /openapi.json)"
            response = plain(404, sentence)
        except web.HTTPException as exc:
            sentence = exc.reason
            response = plain(exc.status, sentence)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = plain(500, "internal error in the recording service (see its log)")
        if isinstance(response, AudioFile):
            # NOTE: a file's status (200, 206, 304, 412) is settled when aiohttp prepares it,
            # after this middleware: it is logged then (see _file_prepared).
            response.started = started
            return response
        self._log(request, response.status, started, sentence)
        return response

    async def _file_prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, AudioFile) and response.started is not None:
            started, response.started = response.started, None
            self._log(request, response.status, started, "")

    def _log(self, request: web.Request, status: int, started: float, sentence: str) -> None:
        if self.metrics is not None:
            self.metrics.record_http(request.path, status)
        log.info(
            "HTTP %s %s from %s status=%d %.1fms%s", request.method, request.path, request.remote,
            status, (time.monotonic() - started) * 1000, f": {sentence}" if sentence else "",
        )

    # -- calls ----------------------------------------------------------------------------

    async def _authorize(self, request: web.Request, key: str | None) -> None:
        await self.asker.authorize(request, key)

    async def _target(self, request: web.Request, args: dict[str, str]):
        await self._authorize(request, args.get(KEY))
        target = args.get("extenOrUniqueId")
        if not target:
            raise HTTPFailure(400, "extenOrUniqueId is required: an extension (410) or a unique call id")
        if self.manager is None:
            raise AsteriskUnavailable("the HTTP API needs Asterisk's manager interface: set RECORDING_AMI_URL")
        return await self.manager.find(target)

    async def start(self, request: web.Request, args: dict[str, str]) -> web.Response:
        channel = await self._target(request, args)
        outcome = await self.service.start(
            StartRequest(channel.unique_id, channel.name, args.get("agentLoginName"), args.get("tag"), "http"),
            channel,
        )
        return answer(outcome, channel)

    async def _change(self, request: web.Request, args: dict[str, str], operation) -> web.Response:
        channel = await self._target(request, args)
        actor = args.get("agentLoginName") or None
        leg_request = LegRequest(channel.unique_id, channel.name, actor, actor or "http")
        outcome = await operation(leg_request, channel)
        if outcome.status == "NOT_RECORDING":
            return plain(409, f"this service is not recording {channel.name} ({channel.unique_id})")
        return answer(outcome, channel)

    async def stop(self, request: web.Request, args: dict[str, str]) -> web.Response:
        return await self._change(request, args, self.service.stop)

    async def pause(self, request: web.Request, args: dict[str, str]) -> web.Response:
        return await self._change(request, args, self.service.pause)

    async def resume(self, request: web.Request, args: dict[str, str]) -> web.Response:
        return await self._change(request, args, self.service.resume)

    # -- retrieval ------------------------------------------------------------------------

    async def _retrieve(self, request: web.Request, args: dict[str, str], key: str) -> web.Response:
        user = await self.asker.user(request, args)
        value = args.get(key)
        if not value:
            raise HTTPFailure(400, f"{key} is required")
        legs = await self.service.read(
            lambda: self.store.find_legs(**{"tag" if key == "tag" else "unique_id": value})
        )
        now = datetime.now(timezone.utc)
        return web.json_response([vendor_fields(leg, now) for leg in legs if leg.visible_to(user)])

    async def by_tag(self, request: web.Request, args: dict[str, str]) -> web.Response:
        return await self._retrieve(request, args, "tag")

    async def by_unique_id(self, request: web.Request, args: dict[str, str]) -> web.Response:
        return await self._retrieve(request, args, "uniqueId")

    # -- after the call -------------------------------------------------------------------

    async def _leg_for(self, request: web.Request, args: dict[str, str]):
        """The user who asks (by token, or the apiKey's loginName) and the leg named by recordingId."""
        user = await self.asker.user(request, args)
        leg_id = args.get("recordingId")
        if not leg_id:
            raise HTTPFailure(400, "recordingId is required: a leg's RecordingId, as retrieveMetaData gives it")
        # Leg ids are 32 characters; a longer one is nobody's, and is not looked up.
        leg = await self.service.read(self.store.leg, leg_id) if len(leg_id) <= 32 else None
        if leg is None:
            raise NotFound(f"no recording leg has the id {leg_id[:40]!r}")
        return user, leg

    async def recording(self, request: web.Request, args: dict[str, str]) -> web.StreamResponse:
        """The leg's file, sent by aiohttp from the disk (sendfile; Range gives 206)."""
        user, leg = await self._leg_for(request, args)
        if not leg.visible_to(user):
            raise Denied(f"{user.login} may not play leg {leg.id}: only its owner or a Recording Manager may")
        look = await leg_file(leg, MonitorDirectory.of(self.service.settings), self.service.read)
        # A request without a Range, or from the start, is a download or a play beginning; the
        # rest (a seek, a resumed download) belongs to it and is not written again.
        if not continues(request):
            event = audit_table.Event.of("play" if "Range" in request.headers else "download", leg, user.login,
                                         "http", request.remote)
            audit = audit_table.Audit(self.store)
            await self.service.read(audit.record_play if event.action == "play" else audit.record, event)
        return audio_response(request, leg, look)

    async def hold(self, request: web.Request, args: dict[str, str]) -> web.Response:
        """Places or releases (release=true) a legal hold on a leg: a Recording Manager's act."""
        user, leg = await self._leg_for(request, args)
        if not user.is_manager:
            raise Denied(f"{user.login} may not hold recordings: only a Recording Manager may")
        release = args.get("release", "false")
        if release not in ("true", "false"):
            raise HTTPFailure(400, "release must be true or false")
        held = release == "false"
        reason = args.get("reason") or None

        def audited(conn, view, changed) -> None:
            audit_table.write(conn, [audit_table.hold_event(view, held, changed, user.login, "http", request.remote,
                                                            reason)])

        leg, changed = await self.service.read(lambda: self.store.set_hold(
            leg.id, held=held, by=user.login, at=datetime.now(timezone.utc), reason=reason, then=audited))
        audit_hold(leg, held, changed, user.login)
        status = ("HELD" if changed else "ALREADY_HELD") if held else ("RELEASED" if changed else "NOT_HELD")
        return web.json_response({"status": status, **vendor_fields(leg, datetime.now(timezone.utc))})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(spec(), indent=2), content_type="application/json")

    async def scrape(self, request: web.Request) -> web.Response:
        return await metrics_response(self.metrics, request)

    async def healthz(self, request: web.Request) -> web.Response:
        return health_response(self.health)


async def metrics_response(metrics: ServiceMetrics | None, request: web.Request) -> web.Response:
    """The scrape, in the format the ``Accept`` header asks for (OpenMetrics or the text
    format 0.0.4, the default); under ``serve --workers``, the service's totals."""
    if metrics is None:
        return plain(404, "metrics are not kept by this process")
    try:
        body, content_type = await metrics.scrape(request.headers.get("Accept", ""))
    except ValueError as exc:
        return plain(406, str(exc))
    return web.Response(body=body, headers={"Content-Type": content_type})


def health_response(health) -> web.Response:
    """200 with what the service can do now, or 503 when it cannot start a recording (under
    ``serve --workers``: when no worker can)."""
    report = health() if health is not None else {"ok": True}
    return web.json_response(report, status=200 if report["ok"] else 503)


def probe_application(metrics: ServiceMetrics | None, health) -> web.Application:
    """/metrics and /healthz alone, for RECORDING_METRICS_LISTEN."""

    async def scrape(request: web.Request) -> web.Response:
        return await metrics_response(metrics, request)

    async def healthz(request: web.Request) -> web.Response:
        return health_response(health)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app


def vendor_fields(leg, now: datetime) -> dict:
    """A leg in the vendor's retrieval fields, plus ours (File, Ownership, End, State,
    Recorded: the duration less paused spans; what became of the file after the call)."""
    return {
        "UniqueId": leg.unique_id,
        "Leg": leg.leg,
        "Start": leg.start.isoformat(),
        "Duration": round(leg.duration(now), 3),
        "Tag": leg.tag or leg.external_reference,
        "Username": leg.owner,
        "CallRecordId": leg.call_record_id,
        "File": leg.file,
        "Ownership": leg.ownership,
        "End": leg.end.isoformat() if leg.end else None,
        "State": leg.state,
        "Recorded": round(leg.recorded(now), 3),
        "RecordingId": leg.id,
        # Where to fetch the audio: add this service's address, apiKey and loginName.
        "RecordingUrl": f"{RECORDING_PATH}?recordingId={leg.id}" if leg.has_audio else None,
        "FileSize": leg.file_size,
        "FileSha256": leg.file_sha256,
        "HashedAt": leg.hashed_at.isoformat() if leg.hashed_at else None,
        "Held": leg.held,
        "HeldAt": leg.held_at.isoformat() if leg.held_at else None,
        "HeldBy": leg.held_by,
        "HoldReason": leg.hold_reason,
        "PurgedAt": leg.purged_at.isoformat() if leg.purged_at else None,
        "PurgeReason": leg.purge_reason,
    }


async def start_site(
    app: web.Application, host: str, port: int, reuse_port: bool = False, sock: socket.socket | None = None
) -> tuple[web.AppRunner, int]:
    """Serves ``app`` on host:port (0 picks one), or on the listening socket ``sock`` when
    given; returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=ServerLog())
    await runner.setup()
    if sock is not None:
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    return runner, runner.addresses[0][1]
