"""A person browsing the recordings pages while the FastAGI load runs (run.py's ``+pages``
servers, issue 24: "the recordings pages being browsed during the load").

One thread, as a Recording Manager in a browser would: signs in through the form (its nonce
cookie and field, then the session cookie), then over and over opens the list (newest first, the
page every visit starts on), the list filtered by a tag no leg has (an index scan that finds
nothing), and the page of the newest leg in the list; with ``think`` seconds between two pages
(0: as fast as one browser tab can go). Counts pages and their times; an answer that is not 200
counts as an error with its status.
"""

from __future__ import annotations

import http.cookiejar
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PREFIX = "/recordings"
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')
_LEG = re.compile(r'href="/recordings/legs/([0-9a-f]{32})"')


class Browsing:
    def __init__(self, base: str, login: str, password: str, think: float = 0.0):
        self.base, self.login, self.password, self.think = base.rstrip("/"), login, password, think
        self.times: list[float] = []
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def _get(self, path: str, data: dict | None = None) -> str:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        with self._opener.open(self.base + path, data=body, timeout=30) as answer:
            return answer.read().decode("utf-8", "replace")

    def sign_in(self) -> None:
        form = self._get(f"{PREFIX}/sign-in")
        if 'id="who"' in form:  # signed in already (an earlier round): the form sends to the list
            return
        nonce = _NONCE.search(form)
        if nonce is None:
            raise RuntimeError("the sign-in form has no nonce")
        page = self._get(f"{PREFIX}/sign-in", {"login": self.login, "password": self.password,
                                               "nonce": nonce.group(1), "next": f"{PREFIX}/legs"})
        if 'id="who"' not in page:
            raise RuntimeError("signing in did not open the list")

    def _visit(self, path: str) -> str:
        began = time.perf_counter()
        try:
            page = self._get(path)
        except urllib.error.HTTPError as exc:
            self.errors[str(exc.code)] = self.errors.get(str(exc.code), 0) + 1
            return ""
        except OSError as exc:
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            return ""
        self.times.append(time.perf_counter() - began)
        return page

    def _run(self) -> None:
        while not self._stop.is_set():
            listing = self._visit(f"{PREFIX}/legs")
            self._stop.wait(self.think)
            self._visit(f"{PREFIX}/legs?tag=no-leg-has-this")
            self._stop.wait(self.think)
            leg = _LEG.search(listing)
            if leg is not None:
                self._visit(f"{PREFIX}/legs/{leg.group(1)}")
                self._stop.wait(self.think)

    def start(self) -> "Browsing":
        self.times.clear()
        self.errors.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="browsing", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> str:
        """Stops browsing; a line of what it saw (pages, their p50 and max, errors)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(35)
        times = sorted(self.times)
        if not times:
            return f"pages: none answered, errors {self.errors}"
        p50 = times[len(times) // 2] * 1000
        errors = f", errors {self.errors}" if self.errors else ""
        return f"pages: {len(times)} answered, p50 {p50:.1f} ms, max {times[-1] * 1000:.1f} ms{errors}"
