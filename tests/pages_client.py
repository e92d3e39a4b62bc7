"""A browser without a browser, for the recordings pages: the standard library's HTTP client
with a cookie jar, redirects shown rather than followed, and the forms' hidden fields read back
from the page, so tests can sign in, post forms and look at every answer."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

from tests.http_client import Answer, _answer as _plain_answer


def _answer(status: int, content: bytes, headers) -> Answer:
    """As the HTTP client's, with every Set-Cookie header kept (one per line)."""
    answer = _plain_answer(status, content, headers)
    cookies = headers.get_all("Set-Cookie") or []
    if cookies:
        answer.headers["Set-Cookie"] = "\n".join(cookies)
    return answer


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class PagesClient:
    def __init__(self, port: int, host: str = "127.0.0.1", jar: http.cookiejar.CookieJar | None = None):
        self.base = f"http://{host}:{port}"
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, method: str, path: str, *, form: dict | None = None, headers: dict | None = None) -> Answer:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(request, timeout=15) as response:
                return _answer(response.status, response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return _answer(error.code, error.read(), error.headers)

    def get(self, path: str, **headers) -> Answer:
        return self.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def post(self, path: str, form: dict, **headers) -> Answer:
        return self.request("POST", path, form=form, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def sign_in(self, login: str, password: str, next_path: str = "/recordings/legs") -> Answer:
        """The sign-in form, filled and sent as a browser would (its nonce cookie and field)."""
        form = self.get(f"/recordings/sign-in?next={urllib.parse.quote(next_path)}")
        return self.post("/recordings/sign-in", {"login": login, "password": password, "nonce": hidden(form, "nonce"),
                                                 "next": next_path})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


def hidden(answer: Answer, name: str) -> str:
    """The value of the page's hidden field ``name``."""
    found = re.search(rf'name="{name}" value="([^"]*)"', answer.body)
    assert found, f"no hidden field {name} in the page: {answer.body[:300]!r}"
    return found.group(1)
