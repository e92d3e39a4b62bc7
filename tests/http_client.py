"""A plain HTTP client (the standard library's) for tests that call the recording API the way
a CRM would."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]

    @property
    def json(self):
        return json.loads(self.body)


class HTTPClient:
    def __init__(self, port: int, host: str = "127.0.0.1"):
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
                return Answer(response.status, response.read().decode(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read().decode(), dict(error.headers))

    def post(self, path: str, **query) -> Answer:
        return self.request("POST", path, query=query)

    def get(self, path: str, **query) -> Answer:
        return self.request("GET", path, query=query)
