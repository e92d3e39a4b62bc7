"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread of its own, which
checks each request's signature with the Standard Webhooks reference library and keeps what it
was sent. It can be taken down and brought back on the same port, and made hostile by path:
``/hang`` never answers, ``/500`` fails, ``/redirect`` redirects, ``/huge`` sends an endless body.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

# How long a hostile handler may hold on before it gives up by itself.
HOSTILE_FOR = 20.0


@dataclass(frozen=True)
class Received:
    id: str
    timestamp: str
    body: dict
    verified: bool
    path: str
    at: float

    @property
    def kind(self) -> str:
        return self.body["type"].removeprefix("recording.")

    @property
    def leg(self) -> str | None:
        return self.body.get("data", {}).get("RecordingId")


class Receiver:
    def __init__(self, secret: str | None = None):
        self.secret = secret
        self.received: list[Received] = []
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.hits[self.path] = receiver.hits.get(self.path, 0) + 1
                if self.path == "/hang":
                    receiver._release.wait(HOSTILE_FOR)
                    return
                if self.path == "/500":
                    return self._answer(500, b"no")
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.url("/hook"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/huge":
                    return self._endless()
                receiver._keep(self, body)
                self._answer(200, b"ok")

            def _answer(self, status: int, text: bytes):
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def _endless(self):
                self.send_response(200)
                self.send_header("Content-Length", str(10 ** 10))
                self.end_headers()
                chunk = b"x" * 65536
                ends = time.monotonic() + HOSTILE_FOR
                try:
                    while time.monotonic() < ends and not receiver._release.is_set():
                        self.wfile.write(chunk)
                except OSError:
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def _keep(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            verified = self.secret is not None and Webhook(self.secret).verify(body, headers) is not None
        except WebhookVerificationError:
            verified = False
        with self._lock:
            self.received.append(Received(headers["webhook-id"], headers["webhook-timestamp"], json.loads(body),
                                          verified, handler.path, time.monotonic()))

    def stop(self) -> None:
        """Takes the receiver down (connections are refused) until :meth:`start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self._release.set()
        self.stop()

    def events(self, leg: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if leg is None or r.leg == leg]

    def kinds(self, leg: str) -> list[str]:
        return [r.kind for r in self.events(leg)]
