"""The HTTP front door: the vendor's recording API on its own paths (so existing CRM
integrations work unchanged), reaching Asterisk over AMI, on the same service as FastAGI.

Errors come back as the right status with one plain-text sentence; every request is logged on
one line, without its query string (it carries the apiKey).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

from aiohttp import web

from ..domain import StartRequest
from ..errors import (
    AmbiguousChannel,
    AsteriskFailure,
    AsteriskUnavailable,
    Denied,
    Invalid,
    NoSuchChannel,
    RecordingFailure,
    StorageRefused,
    StorageUnavailable,
    WrongKey,
)
from ..ops.gate import Gate
from ..asterisk.manager import Manager
from ..ops.metrics import ServiceMetrics
from .openapi import spec
from ..service import LegRequest, RecordingService, check_text
from ..storage.store import Store

log = logging.getLogger("recording.http")

CALLS = "/servicemanager/rest/CallManagementAPI"
RETRIEVAL = "/njadmin/rest/RecordingAPI"
# The 1.0 authentication's fields: old integrations still send them; the apiKey replaced them.
LEGACY = {"timestamp", "hash"}
STATUS = [
    (Denied, 403), (NoSuchChannel, 404), (AmbiguousChannel, 409), (Invalid, 400),
    (AsteriskUnavailable, 503), (AsteriskFailure, 502), (StorageUnavailable, 503), (StorageRefused, 500),
]


class HTTPFailure(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def status_of(failure: RecordingFailure) -> int:
    return next((code for kind, code in STATUS if isinstance(failure, kind)), 500)


async def arguments(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named arguments from the query string and a form body, by name without regard to
    case; an unknown name is a 400 (a typo must not silently change who owns a recording)."""
    wanted = {name.lower(): name for name in names}
    pairs = list(request.query.items())
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded", "multipart/form-data"
    ):
        pairs += [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    found: dict[str, str] = {}
    for key, value in pairs:
        name = wanted.get(key.lower())
        if name is None:
            if key.lower() in LEGACY:
                continue
            raise HTTPFailure(400, f"unknown argument {key[:40]!r} (expected {', '.join(names)})")
        if name in found and found[name] != value:
            raise HTTPFailure(400, f"{name} is given twice with different values")
        found[name] = value
    return found


def answer(outcome, channel) -> web.Response:
    """200 with a service outcome (StartOutcome or LegOutcome) on ``channel``, as JSON."""
    return web.json_response({
        "status": outcome.status, "recordingId": outcome.leg_id, "uniqueId": channel.unique_id,
        "channel": channel.name, "leg": outcome.leg, "file": outcome.file, "deferred": outcome.deferred,
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

    ROUTES = (
        ("POST", f"{CALLS}/start", "start"),
        ("POST", f"{CALLS}/stop", "stop"),
        ("POST", f"{CALLS}/pause", "pause"),
        ("POST", f"{CALLS}/resume", "resume"),
        ("GET", f"{RETRIEVAL}/retrieveMetaData", "by_tag"),
        ("GET", f"{RETRIEVAL}/retrieveMetaDataByUniqueId", "by_unique_id"),
        ("GET", "/openapi.json", "openapi"),
        ("GET", "/metrics", "scrape"),
        ("GET", "/healthz", "healthz"),
    )

    def routes(self) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
        return [(method, path, getattr(self, name)) for method, path, name in self.ROUTES]

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        started = time.monotonic()
        try:
            if self.gate is not None and not self.gate.admits(self.gate.http, request.remote, "HTTP"):
                raise HTTPFailure(403, f"{request.remote} is not on this service's list of allowed clients")
            response = await handler(request)
        except HTTPFailure as exc:
            response = plain(exc.status, str(exc))
        except WrongKey as exc:
            if self.gate is not None:
                await self.gate.wrong_key(request.remote, "HTTP")
            response = plain(status_of(exc), str(exc))
        except RecordingFailure as exc:
            response = plain(status_of(exc), str(exc))
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = plain(405, f"{request.method} is not allowed here; use {allowed}", Allow=allowed)
        except web.HTTPException as exc:
            response = plain(exc.status, exc.reason)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = plain(500, "internal error in the recording service (see its log)")
        if self.metrics is not None:
            self.metrics.record_http(request.path, response.status)
        log.info(
            "HTTP %s %s from %s status=%d %.1fms", request.method, request.path, request.remote,
            response.status, (time.monotonic() - started) * 1000,
        )
        return response

    # -- calls ----------------------------------------------------------------------------

    async def _authorize(self, request: web.Request, key: str | None) -> None:
        await self.service.authorize(key)
        if self.gate is not None:
            self.gate.right_key(request.remote)

    async def _target(self, request: web.Request, names: tuple[str, ...]):
        args = await arguments(request, names)
        await self._authorize(request, args.get("apiKey"))
        target = check_text("extenOrUniqueId", args.get("extenOrUniqueId"), 150)
        if not target:
            raise HTTPFailure(400, "extenOrUniqueId is required: an extension (410) or a unique call id")
        if self.manager is None:
            raise AsteriskUnavailable("the HTTP API needs Asterisk's manager interface: set RECORDING_AMI_URL")
        return args, await self.manager.find(target)

    async def start(self, request: web.Request) -> web.Response:
        args, channel = await self._target(request, ("extenOrUniqueId", "agentLoginName", "tag", "apiKey"))
        outcome = await self.service.start(
            StartRequest(channel.unique_id, channel.name, args.get("agentLoginName"), args.get("tag"), "http"),
            channel,
        )
        return answer(outcome, channel)

    async def _change(self, request: web.Request, operation) -> web.Response:
        args, channel = await self._target(request, ("extenOrUniqueId", "agentLoginName", "apiKey"))
        actor = args.get("agentLoginName") or None
        leg_request = LegRequest(channel.unique_id, channel.name, actor, actor or "http")
        outcome = await operation(leg_request, channel)
        if outcome.status == "NOT_RECORDING":
            return plain(409, f"this service is not recording {channel.name} ({channel.unique_id})")
        return answer(outcome, channel)

    async def stop(self, request: web.Request) -> web.Response:
        return await self._change(request, self.service.stop)

    async def pause(self, request: web.Request) -> web.Response:
        return await self._change(request, self.service.pause)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._change(request, self.service.resume)

    # -- retrieval ------------------------------------------------------------------------

    async def _retrieve(self, request: web.Request, key: str) -> web.Response:
        args = await arguments(request, (key, "apiKey", "loginName"))
        await self._authorize(request, args.get("apiKey"))
        value, login = args.get(key), args.get("loginName")
        if not value:
            raise HTTPFailure(400, f"{key} is required")
        if not login:
            raise HTTPFailure(400, "loginName is required: legs are shown to their owner or a Recording Manager")
        user = await self.service.directory.user(login)
        if user is None:
            raise Denied(f"unknown user {login!r}")
        legs = await self.service.read(
            lambda: self.store.find_legs(**{"tag" if key == "tag" else "unique_id": value})
        )
        now = datetime.now(timezone.utc)
        return web.json_response([vendor_fields(leg, now) for leg in legs if leg.visible_to(user)])

    async def by_tag(self, request: web.Request) -> web.Response:
        return await self._retrieve(request, "tag")

    async def by_unique_id(self, request: web.Request) -> web.Response:
        return await self._retrieve(request, "uniqueId")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(spec(), indent=2), content_type="application/json")

    async def scrape(self, request: web.Request) -> web.Response:
        return metrics_response(self.metrics, request)

    async def healthz(self, request: web.Request) -> web.Response:
        return health_response(self.health)


def metrics_response(metrics: ServiceMetrics | None, request: web.Request) -> web.Response:
    """The scrape, in the format the ``Accept`` header asks for (OpenMetrics or the text
    format 0.0.4, the default); under ``serve --workers``, the service's totals."""
    if metrics is None:
        return plain(404, "metrics are not kept by this process")
    try:
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
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
        return metrics_response(metrics, request)

    async def healthz(request: web.Request) -> web.Response:
        return health_response(health)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app


def vendor_fields(leg, now: datetime) -> dict:
    """A leg in the vendor's retrieval fields, plus ours (File, Ownership, End, State,
    Recorded: the duration less paused spans)."""
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
    }


async def start_site(
    app: web.Application, host: str, port: int, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Serves ``app`` on host:port (0 picks one); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    return runner, runner.addresses[0][1]
