"""A plain HTTP client (the standard library's) for tests that call the recording API the way
a CRM would, and a raw one for the requests no well-behaved client sends."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]
    content: bytes = b""  # the body as it came (a recording's audio is not text)

    @property
    def json(self):
        return json.loads(self.body)


class HTTPClient:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.base = f"http://{host}:{port}"

    def request(self, method: str, path: str, *, query: dict | None = None, form: dict | None = None,
                headers: dict | None = None) -> Answer:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return _answer(response.status, response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return _answer(error.code, error.read(), error.headers)

    def post(self, path: str, **query) -> Answer:
        return self.request("POST", path, query=query)

    def get(self, path: str, **query) -> Answer:
        return self.request("GET", path, query=query)

    def raw(self, request: bytes, timeout: float = 10) -> Answer:
        """Sends ``request`` as it is (request line, headers and body) on a new connection and
        reads the answer."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return _answer(response.status, response.read(), response.headers)


def _answer(status: int, content: bytes, headers) -> Answer:
    return Answer(status, content.decode("utf-8", "replace"), dict(headers), content)
