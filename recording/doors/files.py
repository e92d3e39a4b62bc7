"""A leg's audio, sent to whoever was allowed to have it: the HTTP API's retrieveRecording and
the recordings pages' player and download both answer with this (aiohttp sends the file from
the disk: sendfile, no file read into memory; a Range gets 206, so a player can seek)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from aiohttp import web

from ..domain import ACTIVE_STATES, LegView
from ..errors import Conflict, MonitorUnavailable, NotFound
from ..storage.audio import Look, MonitorDirectory, content_type


class AudioFile(web.FileResponse):
    """A recording, sent by aiohttp from the disk; ``started`` is when its request came in."""

    started: float | None = None


async def leg_file(leg: LegView, monitor: MonitorDirectory, read) -> Look:
    """The leg's file as this host sees it, present. Raises Conflict (still recording),
    NotFound (nothing recorded, purged or being purged, the file gone) or MonitorUnavailable,
    each with its sentence. ``read(function, *args)`` runs a blocking look in a worker thread."""
    if leg.state in ACTIVE_STATES:
        raise Conflict(f"leg {leg.id} is still recording ({leg.state}); its file can be fetched once it has ended")
    if leg.state == "failed":
        raise NotFound(f"leg {leg.id} recorded nothing: its MixMonitor did not start")
    if leg.state == "purged":
        raise NotFound(f"the audio of leg {leg.id} was purged at {leg.purged_at.isoformat(timespec='seconds')} "
                       f"({leg.purge_reason}); it was {leg.file}")
    if leg.purge_started_at is not None:
        raise NotFound(f"the audio of leg {leg.id} is being purged (since "
                       f"{leg.purge_started_at.isoformat(timespec='seconds')}: {leg.purge_reason})")
    problem = await read(monitor.problem)
    if problem is not None:
        raise MonitorUnavailable(f"the file of leg {leg.id} cannot be read here: {problem}")
    look = await read(monitor.look, leg.file)
    if look.status == "gone":
        raise NotFound(f"the file of leg {leg.id} is gone: {look.why}")
    if look.status != "present":
        raise NotFound(f"the file of leg {leg.id} is not served: {look.why}")
    return look


def audio_response(request: web.Request, leg: LegView, look: Look, *, attachment: bool = False
                   ) -> web.StreamResponse:
    """The file itself (200, or 206 for a Range), or a 416 sentence for a Range it cannot
    serve. ``attachment``: the browser saves it instead of playing it."""
    unsatisfiable = _unsatisfiable(request, look.size)
    if unsatisfiable:
        return web.Response(status=416, text=unsatisfiable + "\n", content_type="text/plain",
                            headers={"Content-Range": f"bytes */{look.size}"})
    headers = {
        "Content-Type": content_type(look.path),
        "Content-Disposition": disposition(look.path.name, attachment),
        "Cache-Control": "private, no-store",
    }
    if leg.file_sha256:
        # RFC 9530: the digest of the whole file, whatever range this answer carries.
        headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(leg.file_sha256)).decode()}:"
    return AudioFile(look.path, headers=headers)


def continues(request: web.Request) -> bool:
    """Whether the request asks for a part of the file after its start (a seek, or the rest of
    a download): the same listening or download as the request that began it."""
    try:
        wanted = request.http_range
    except ValueError:
        return False
    return "Range" in request.headers and bool(wanted.start)


def _unsatisfiable(request: web.Request, size: int) -> str | None:
    """Why the request's Range cannot be served from a file of ``size`` bytes (416), or None.
    Told here in a sentence, as every error is; aiohttp's file sending would answer 416 too,
    without one. (With If-Range, aiohttp decides whether the Range applies at all.)"""
    if "Range" not in request.headers or request.if_range is not None:
        return None
    try:
        wanted = request.http_range
    except ValueError:
        return (f"the Range {request.headers['Range'][:60]!r} cannot be served: one range, bytes=START-END, "
                f"bytes=START- or bytes=-LENGTH, within the file's {size} bytes")
    if wanted.start is not None and wanted.start >= 0 and wanted.start >= size:
        return f"the Range starts at byte {wanted.start}, past the end of the file ({size} bytes)"
    return None


def disposition(name: str, attachment: bool = False) -> str:
    """A Content-Disposition that names the file for a browser's "save as"."""
    plain_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    kind = "attachment" if attachment else "inline"
    return f"{kind}; filename=\"{plain_name}\"; filename*=UTF-8''{quote(name)}"
