"""Webhooks on the wire: the Standard Webhooks signature, the body of each event, and one
guarded HTTP POST to a receiver.

Each request carries ``webhook-id`` (the event's message id, the same on every retry),
``webhook-timestamp`` (the attempt's Unix time) and ``webhook-signature`` (``v1,`` and the
base64 HMAC-SHA256, keyed with the base64-decoded part of the ``whsec_`` secret, of
``id.timestamp.body``), so a receiver verifies it with the convention's published libraries.

A receiver cannot hold on to this side: the request has one deadline for connecting and
answering (RECORDING_WEBHOOK_TIMEOUT), redirects are not followed, at most :data:`READ_CAP`
bytes of an answer are read, only http(s) URLs are sent to, and each address a name resolves
to is checked against RECORDING_WEBHOOK_DENY / RECORDING_WEBHOOK_ALLOW before connecting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.resolver import ThreadedResolver

from ..errors import Invalid
from ..storage.outbox import Event
from .destinations import Destinations

SECRET_PREFIX = "whsec_"
# The most of a receiver's answer that is read (the status is what counts; `webhooks test`
# shows the start of the body).
READ_CAP = 4096
USER_AGENT = "recording-agi-webhooks"



def new_secret() -> str:
    """A new signing secret: ``whsec_`` and 24 random bytes in base64 (the convention's form)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` of a request: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    digest = hmac.new(_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The request's headers, signed for the time ``now`` (this attempt's)."""
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def payload(event: Event) -> bytes:
    """The JSON body of an event: ``type`` (``recording.<kind>``), ``timestamp`` (when it
    happened) and ``data``, the leg's fields as retrieval names them plus those of its kind."""
    from ..doors.http import RECORDING_PATH

    data = {
        "RecordingId": event.leg_id, "UniqueId": event.unique_id, "Leg": event.leg, "Tag": event.tag,
        "Username": event.owner, "Ownership": event.ownership,
    }
    if event.kind in ("ended", "failed"):
        data |= {"State": event.state, "EndedBy": event.actor}
    elif event.kind in ("paused", "resumed"):
        data |= {"By": event.actor, "Method": event.method}
    elif event.kind == "ready":
        data |= {"FileSize": event.file_size, "FileSha256": event.file_sha256,
                 "RecordingUrl": f"{RECORDING_PATH}?recordingId={event.leg_id}"}
    elif event.kind == "held":
        data |= {"HeldBy": event.actor, "HoldReason": event.reason}
    elif event.kind == "purged":
        data |= {"PurgeReason": event.reason, "StateBeforePurge": event.state}
    body = {"type": f"recording.{event.kind}", "timestamp": event.at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host and no credentials; raises Invalid."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise Invalid("a webhook URL cannot carry a user or password (the signature is the proof)")
    return url.strip()


class GuardedResolver(ThreadedResolver):
    """The system resolver, keeping only the addresses deliveries may go to: a name that
    resolves to a refused address is refused before any connection is made."""

    def __init__(self, destinations: Destinations):
        super().__init__()
        self.destinations = destinations

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        found = await super().resolve(host, port, family)
        kept = [entry for entry in found if self.destinations.refusal(entry["host"]) is None]
        if not kept:
            reasons = "; ".join(filter(None, (self.destinations.refusal(e["host"]) for e in found)))
            raise OSError(f"{host} resolves only to refused addresses ({reasons})")
        return kept


@dataclass(frozen=True)
class Answer:
    """A receiver's answer: its status (None: none came) and what went wrong, if anything."""

    status: int | None
    error: str | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def session(resolver: GuardedResolver, *, limit: int = 64) -> aiohttp.ClientSession:
    """An HTTP client for deliveries: the guarded resolver, no proxy from the environment, no
    cookies kept between receivers."""
    # NOTE: no limit per host: the deliverer caps the tries in flight per subscription itself,
    # and two subscriptions on one host must not wait for each other's connections.
    connector = aiohttp.TCPConnector(resolver=resolver, limit=limit, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


async def post(client: aiohttp.ClientSession, destinations: Destinations, url: str, secret: str, message_id: str,
               body: bytes, timeout: float) -> Answer:
    """One signed POST; never raises for what the receiver or the network does."""
    try:
        host = urlsplit(check_url(url)).hostname
    except Invalid as exc:
        return Answer(None, str(exc))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        # NOTE: aiohttp does not ask the resolver about an address given as such.
        refused = destinations.refusal(host)
        if refused:
            return Answer(None, f"not sent: {refused}")
    limits = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)
    try:
        async with client.post(url, data=body, headers=headers(secret, message_id, body), allow_redirects=False,
                               timeout=limits) as response:
            answer = await response.content.read(READ_CAP)
            if not response.content.at_eof():
                # A receiver that sends more than this is cut off, not drained.
                response.close()
            error = None
            if 300 <= response.status < 400:
                error = f"answered {response.status} (redirect to {response.headers.get('Location', '?')}, not followed)"
            elif not 200 <= response.status < 300:
                error = f"answered {response.status}"
            return Answer(response.status, error, answer)
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g} s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:255])
