"""The recordings pages over real HTTP on a loopback port: signing in and out, sessions that
live in the database (two processes share them), who sees what, the list's filters and keyset
pages, a leg's page, its audio and waveform, the hold with its CSRF token, the audit, and what
is safe by default (escaping, the Content-Security-Policy, off unless configured)."""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recording.storage.audit import Audit
from tests.fake_asterisk import FakeAsterisk
from tests.http_client import HTTPClient
from tests.pages_client import PagesClient, hidden
from tests.recording.pages_support import PASSWORDS, give_passwords, stored_leg
from tests.recording.test_recording_download import recorded_call
from tests.service_runner import RunningService

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def pages_settings(files_settings):
    return files_settings.with_(pages_listen="127.0.0.1:0")


@pytest.fixture
def pages_service(store, people, pages_settings):
    give_passwords(store)
    with RunningService(pages_settings) as running:
        yield running


@pytest.fixture
def pbx(pages_service) -> FakeAsterisk:
    return FakeAsterisk(pages_service.port, filesystem=Path("/"))


def client(service, login: str | None = None) -> PagesClient:
    browser = PagesClient(service.app.pages_port)
    if login:
        answer = browser.sign_in(login, PASSWORDS[login])
        assert answer.status == 303 and answer.headers["Location"] == "/recordings/legs", answer.body
    return browser


def ids_in(answer) -> list[str]:
    return [leg["id"] for leg in answer.json["legs"]]


def test_the_pages_are_off_unless_configured(store, files_settings):
    with RunningService(files_settings.with_(http_listen="127.0.0.1:0")) as running:
        assert running.app.pages_port is None
        answer = HTTPClient(running.app.http_port).get("/recordings/legs")
    assert answer.status == 404 and "nothing is served at this path" in answer.body


def test_a_page_without_a_session_leads_to_the_sign_in_and_back(pages_service):
    browser = client(pages_service)

    answer = browser.get("/recordings/legs?tag=A")
    signed = browser.sign_in("fred", PASSWORDS["fred"], next_path="/recordings/legs?tag=A")
    json = browser.get("/recordings/legs.json")

    assert answer.status == 303
    where = urllib.parse.urlsplit(answer.headers["Location"])
    assert where.path == "/recordings/sign-in"
    assert urllib.parse.parse_qs(where.query) == {"next": ["/recordings/legs?tag=A"]}
    assert signed.status == 303 and signed.headers["Location"] == "/recordings/legs?tag=A"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/recordings/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback, no proxy saying HTTPS
    assert json.status == 200 and json.json == {"legs": [], "next": None, "nextUrl": None}
    assert client(pages_service).get("/recordings/legs.json").status == 401


def test_each_person_sees_only_what_the_api_would_show_them(pages_service, store):
    fred, ann = store.find_user("fred"), store.find_user("ann")
    freds = stored_leg(store, agent=fred, started=T0)
    anns = stored_leg(store, agent=ann, started=T0 + timedelta(minutes=1))
    nobodys = stored_leg(store, agent=None, started=T0 + timedelta(minutes=2))

    seen = {login: ids_in(client(pages_service, login).get("/recordings/legs.json"))
            for login in ("fred", "ann", "boss")}

    assert seen == {"fred": [freds], "ann": [anns], "boss": [nobodys, anns, freds]}
    as_fred = client(pages_service, "fred")
    for other in (anns, nobodys):
        for path in (f"/recordings/legs/{other}", f"/recordings/legs/{other}.json", f"/recordings/legs/{other}/audio",
                     f"/recordings/legs/{other}/waveform.svg"):
            answer = as_fred.get(path)
            assert answer.status == 404, (path, answer.status)
            assert f"no recording leg {other} that you may see" in answer.body
    # The same answer as a leg nobody has: nothing tells the two apart.
    nobody = "0" * 32
    assert as_fred.get(f"/recordings/legs/{nobody}").body.replace(nobody, other) == \
        as_fred.get(f"/recordings/legs/{other}").body


def test_a_wrong_password_is_refused_slowed_and_logged_without_the_password(store, people, pages_settings, caplog):
    caplog.set_level(logging.INFO)
    give_passwords(store)
    limits = {"apikey_failure_threshold": 2, "apikey_failure_max_delay": 0.3}
    with RunningService(pages_settings.with_(**limits)) as running:
        browser = client(running)
        answers = [browser.sign_in("fred", "not-the-password-" + str(n)) for n in range(3)]
        unknown = browser.sign_in("ghost", "whatever-it-is")
        slowed = running.app.gate.passwords.delay("127.0.0.1")
        started = time.monotonic()
        right = browser.sign_in("fred", PASSWORDS["fred"])
        waited = time.monotonic() - started
        after = running.app.gate.passwords.delay("127.0.0.1")

    assert [a.status for a in answers] == [403, 403, 403] and unknown.status == 403
    assert all("wrong login or password" in a.body for a in answers + [unknown])
    assert browser.cookie("recording_session") is not None and right.status == 303
    assert slowed > 0 and waited >= slowed and after == 0
    lines = [r.getMessage() for r in caplog.records]
    assert sum("wrong password for 'fred' from 127.0.0.1" in line for line in lines) == 3
    assert sum("2 wrong passwords from 127.0.0.1" in line for line in lines) == 1
    assert not [line for line in lines if "not-the-password" in line or PASSWORDS["fred"] in line]


def test_the_sign_in_form_must_come_from_the_page_and_leads_only_to_the_pages(pages_service):
    browser = client(pages_service)
    forged = browser.post("/recordings/sign-in", {"login": "fred", "password": PASSWORDS["fred"], "nonce": "x"})
    away = browser.sign_in("fred", PASSWORDS["fred"], next_path="https://elsewhere.example/recordings/legs")

    assert forged.status == 403 and "came from another site" in forged.body
    assert away.status == 303 and away.headers["Location"] == "/recordings/legs"


def test_a_session_opened_on_one_process_is_good_on_another_until_signed_out_anywhere(store, people, pages_settings,
                                                                                      tmp_path):
    give_passwords(store)
    freds = stored_leg(store, agent=store.find_user("fred"))
    apart = [pages_settings.with_(journal_dir=str(tmp_path / f"journal-{n}")) for n in (1, 2)]
    with RunningService(apart[0]) as one, RunningService(apart[1]) as two:
        first = client(one, "fred")
        session = _cookie(first, "recording_session")
        second = PagesClient(two.app.pages_port, jar=first.jar)  # the same browser, the other process
        seen_on_two = second.get("/recordings/legs.json")
        page_on_two = second.get(f"/recordings/legs/{freds}")
        out = second.post("/recordings/sign-out", {"csrf": hidden(page_on_two, "csrf")})
        replayed = PagesClient(one.app.pages_port)
        replayed.jar.set_cookie(session)
        after = replayed.get("/recordings/legs.json")

    assert ids_in(seen_on_two) == [freds]
    assert out.status == 303 and out.headers["Location"] == "/recordings/sign-in"
    assert "recording_session=\"\"" in out.headers["Set-Cookie"] or "Max-Age=0" in out.headers["Set-Cookie"]
    # The old cookie, sent again to the first process after signing out on the second: refused.
    assert after.status == 401


def _cookie(browser: PagesClient, name: str):
    return next(c for c in browser.jar if c.name == name)


def test_a_session_ends_when_idle_and_when_the_password_changes(store, people, pages_settings, cli):
    give_passwords(store)
    with RunningService(pages_settings.with_(pages_idle_timeout=1.0)) as running:
        idle = client(running, "fred")
        kept = [idle.get("/recordings/legs.json").status for _ in range(3) if time.sleep(0.4) is None]
        time.sleep(1.2)
        ended = idle.get("/recordings/legs.json")
        changed = client(running, "ann")
        before = changed.get("/recordings/legs.json")
        code, out, _ = _passwd(cli, "ann", "a-new-password-2")
        after = changed.get("/recordings/legs.json")
        again = client(running)
        with_new = again.sign_in("ann", "a-new-password-2")

    assert kept == [200, 200, 200] and ended.status == 401
    assert before.status == 200 and code == 0 and "1 session ended" in out
    assert after.status == 401 and with_new.status == 303


def _passwd(cli, login: str, password: str):
    import io
    import sys

    stdin, sys.stdin = sys.stdin, io.StringIO(password + "\n")
    try:
        return cli("users", "passwd", login, "--password-stdin")
    finally:
        sys.stdin = stdin


def test_the_list_filters_by_the_url_newest_first_a_keyset_page_at_a_time(pages_service, store):
    fred, ann = store.find_user("fred"), store.find_user("ann")
    legs = {}
    for n in range(7):
        legs[n] = stored_leg(store, agent=fred if n % 2 else ann, tag="CRM-7" if n < 4 else f"other-{n}",
                             extension="410" if n < 5 else "411", started=T0 + timedelta(hours=n))
    held = legs[3]
    store.set_hold(held, held=True, by="boss", at=T0, reason="case 7")
    boss = client(pages_service, "boss")

    def listed(query: str) -> list[str]:
        answer = boss.get(f"/recordings/legs.json?{query}")
        assert answer.status == 200, answer.body
        return ids_in(answer)

    newest_first = [legs[n] for n in range(6, -1, -1)]
    assert listed("") == newest_first
    assert listed("tag=CRM-7") == [legs[3], legs[2], legs[1], legs[0]]
    assert listed("extension=411") == [legs[6], legs[5]]
    assert listed("owner=fred") == [legs[5], legs[3], legs[1]]
    assert listed("held=yes") == [held] and held not in listed("held=no")
    assert listed("since=2026-11-28T11:00&until=2026-11-28T13:00") == [legs[3], legs[2]]
    assert listed("until=2026-11-28") == newest_first and listed("since=2026-11-29") == []
    assert listed("state=ended&owner=ann&tag=CRM-7") == [legs[2], legs[0]]
    # Pages of 3: every leg once, in order; the next token is opaque and kept with the filters.
    walked, url = [], "/recordings/legs.json?size=3"
    while url:
        answer = boss.get(url).json
        walked += [leg["id"] for leg in answer["legs"]]
        url = answer["nextUrl"]
    assert walked == newest_first
    first = boss.get("/recordings/legs.json?size=2&tag=CRM-7").json
    assert "tag=CRM-7" in first["nextUrl"] and "2026" not in first["next"]
    # The HTML list: the same rows, the filters kept in the form and the Older link.
    page = boss.get("/recordings/legs?size=2&tag=CRM-7")
    assert page.status == 200 and page.body.count('class="open"') == 2
    assert 'name="tag" id="tag" value="CRM-7"' in page.body and "rel=\"next\"" in page.body


@pytest.mark.parametrize("query, sentence", [
    ("color=red", "the list has no filter 'color'"),
    ("state=happy", "state must be one of"),
    ("since=yesterday", "since 'yesterday' is not a date"),
    ("next=bm90IGEgdG9rZW4", "the next token is not one this list gave"),
    ("held=maybe", "held must be yes or no"),
    ("size=1000", "size must be a whole number from 1 to 200"),
    ("tag=a&tag=b", "tag is given twice with different values"),
])
def test_a_filter_the_list_cannot_read_is_one_sentence(pages_service, query, sentence):
    boss = client(pages_service, "boss")
    page, twin = boss.get(f"/recordings/legs?{query}"), boss.get(f"/recordings/legs.json?{query}")
    assert page.status == 400 and sentence in html.unescape(page.body) and "text/html" in page.headers["Content-Type"]
    assert twin.status == 400 and sentence in twin.json["error"]


def test_an_agent_cannot_filter_by_owner(pages_service):
    answer = client(pages_service, "fred").get("/recordings/legs.json?owner=ann")
    assert answer.status == 400 and "only a Recording Manager filters by owner" in answer.json["error"]


def test_a_leg_page_plays_seeks_and_downloads_and_each_is_audited_once(pages_service, pbx, store):
    call, leg = recorded_call(pbx, store, seconds=2.0, tag="CRM-9")
    content = Path(call.variables["RECORDING_FILE"]).read_bytes()
    fred = client(pages_service, "fred")

    page = fred.get(f"/recordings/legs/{leg.id}")
    start = fred.get(f"/recordings/legs/{leg.id}/audio", Range="bytes=0-")
    seek = fred.get(f"/recordings/legs/{leg.id}/audio", Range="bytes=16000-")
    replay = fred.get(f"/recordings/legs/{leg.id}/audio", Range="bytes=0-")
    saved = fred.get(f"/recordings/legs/{leg.id}/audio?download=1")
    picture = fred.get(f"/recordings/legs/{leg.id}/waveform.svg")

    assert page.status == 200 and f'src="/recordings/legs/{leg.id}/audio"' in page.body
    assert f'href="/recordings/legs/{leg.id}/audio?download=1"' in page.body
    assert 'id="hold-form"' not in page.body and 'id="audit"' not in page.body  # an agent's page
    assert (start.status, start.content) == (206, content)
    assert (seek.status, seek.content) == (206, content[16000:])
    assert (replay.status, replay.content) == (206, content)
    assert seek.headers["Content-Range"] == f"bytes 16000-{len(content) - 1}/{len(content)}"
    assert saved.status == 200 and saved.headers["Content-Disposition"].startswith("attachment;")
    assert picture.status == 200 and picture.headers["Content-Type"].startswith("image/svg+xml")
    assert picture.body.startswith("<svg") and "<path d=\"M" in picture.body and "0:00:02" in picture.body
    events = Audit(store).events(leg_id=leg.id)
    # One play (the seek and the replay within minutes belong to it) and one download.
    assert [(e.action, e.login, e.door, e.address) for e in events] == [
        ("play", "fred", "pages", "127.0.0.1"), ("download", "fred", "pages", "127.0.0.1")]


def test_a_manager_holds_and_releases_with_a_reason_and_the_csrf_token(pages_service, pbx, store):
    _, leg = recorded_call(pbx, store, tag="CRM-10")
    boss, fred = client(pages_service, "boss"), client(pages_service, "fred")
    page = boss.get(f"/recordings/legs/{leg.id}")
    csrf = hidden(page, "csrf")

    forged = boss.post(f"/recordings/legs/{leg.id}/hold", {"action": "hold", "reason": "no token"})
    wrong = boss.post(f"/recordings/legs/{leg.id}/hold", {"action": "hold", "csrf": csrf[::-1]})
    by_agent = fred.post(f"/recordings/legs/{leg.id}/hold",
                         {"action": "hold", "csrf": hidden(fred.get(f"/recordings/legs/{leg.id}"), "csrf")})
    still_free = store.leg(leg.id).held
    held = boss.post(f"/recordings/legs/{leg.id}/hold", {"action": "hold", "reason": "case <b>12</b>", "csrf": csrf})
    after_hold = store.leg(leg.id)
    released = boss.post(f"/recordings/legs/{leg.id}/hold", {"action": "release", "reason": "closed", "csrf": csrf})
    shown = boss.get(f"/recordings/legs/{leg.id}")

    assert forged.status == 403 and "CSRF token is missing or wrong" in forged.body
    assert wrong.status == 403 and by_agent.status == 403 and "only a Recording Manager may" in by_agent.body
    assert still_free is False
    assert held.status == 303 and held.headers["Location"] == f"/recordings/legs/{leg.id}"
    assert (after_hold.held, after_hold.held_by, after_hold.hold_reason) == (True, "boss", "case <b>12</b>")
    assert released.status == 303 and not store.leg(leg.id).held
    assert "case &lt;b&gt;12&lt;/b&gt;" in shown.body and "<b>12</b>" not in shown.body  # the audit, escaped
    events = [(e.action, e.login, e.door, e.detail) for e in Audit(store).events(leg_id=leg.id)]
    assert events == [("hold", "boss", "pages", "case <b>12</b>"), ("release", "boss", "pages", "closed")]
    assert shown.body.count('<tr><td>') >= 2 and 'id="audit"' in shown.body
    assert [e["action"] for e in boss.get(f"/recordings/legs/{leg.id}.json").json["audit"]] == ["hold", "release"]
    assert "audit" not in fred.get(f"/recordings/legs/{leg.id}.json").json


def test_values_from_a_call_are_escaped_and_no_script_runs_inline(pages_service, store):
    leg = stored_leg(store, agent=store.find_user("fred"), tag="<script>alert(1)</script>\"'&")
    fred = client(pages_service, "fred")

    listed, page = fred.get("/recordings/legs"), fred.get(f"/recordings/legs/{leg}")
    script = fred.get("/recordings/static/player.js")

    for answer in (listed, page):
        assert "<script>alert(1)</script>" not in answer.body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;" in answer.body
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        # Every script and style the page uses is the service's own, and none is inline.
        assert "<script>" not in answer.body and " style=" not in answer.body and "<style" not in answer.body
        assert "http://" not in answer.body and "https://" not in answer.body
    assert '<script src="/recordings/static/player.js" defer></script>' in page.body
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert fred.get("/recordings/static/player.js", If_None_Match=script.headers["ETag"]).status == 304


def test_single_sign_on_only_from_a_trusted_proxy(store, people, pages_settings):
    sso = {"pages_sso_header": "X-Remote-User"}
    with RunningService(pages_settings.with_(pages_trusted_proxies="127.0.0.1", **sso)) as trusted:
        browser = PagesClient(trusted.app.pages_port)
        as_fred = browser.get("/recordings/legs.json", X_Remote_User="fred")
        again = browser.get("/recordings/legs.json", X_Remote_User="fred")
        page = browser.get("/recordings/legs", X_Remote_User="fred")
        stranger = PagesClient(trusted.app.pages_port).get("/recordings/legs.json", X_Remote_User="mallory")
    with RunningService(pages_settings.with_(pages_trusted_proxies="10.9.9.9", **sso)) as untrusted:
        ignored = PagesClient(untrusted.app.pages_port).get("/recordings/legs.json", X_Remote_User="boss")

    assert as_fred.status == 200 and "recording_session=" in as_fred.headers["Set-Cookie"]
    assert again.status == 200 and "Set-Cookie" not in again.headers  # the session opened is used
    assert 'id="who">fred<' in page.body
    assert stranger.status == 403 and "names 'mallory', who is not a user" in stranger.json["error"]
    assert ignored.status == 401


def test_cookies_are_secure_behind_https(store, people, pages_settings):
    give_passwords(store)
    with RunningService(pages_settings.with_(pages_trusted_proxies="127.0.0.1")) as proxied:
        browser = PagesClient(proxied.app.pages_port)
        form = browser.get("/recordings/sign-in", X_Forwarded_Proto="https", X_Forwarded_For="192.0.2.7")
        nonce = hidden(form, "nonce")
        # NOTE: the jar keeps a Secure cookie for HTTPS; the proxy's side of it is sent by hand.
        signed = browser.post("/recordings/sign-in", {"login": "fred", "password": PASSWORDS["fred"], "nonce": nonce},
                              X_Forwarded_Proto="https", X_Forwarded_For="192.0.2.7",
                              Cookie=f"recording_signin={nonce}")
    with RunningService(pages_settings.with_(pages_https=True)) as configured:
        direct = client(configured)
        direct_form = direct.get("/recordings/sign-in")

    assert "Secure" in form.headers["Set-Cookie"] and signed.status == 303
    assert "Secure" in signed.headers["Set-Cookie"] and "HttpOnly" in signed.headers["Set-Cookie"]
    assert "Secure" in direct_form.headers["Set-Cookie"]
    with store.engine.connect() as conn:
        sessions = conn.exec_driver_sql("SELECT address FROM page_sessions").scalars().all()
    assert sessions == ["192.0.2.7"]  # the client's address, as the trusted proxy said


def test_the_pages_on_the_http_api_listener_and_their_own_allow_list(store, people, files_settings, caplog):
    caplog.set_level(logging.INFO)
    give_passwords(store)
    with RunningService(files_settings.with_(http_listen="127.0.0.1:0", pages_listen="http")) as running:
        browser = client(type("S", (), {"app": type("A", (), {"pages_port": running.app.http_port})})(), "fred")
        listed = browser.get("/recordings/legs.json")
        missing = browser.get("/recordings/nowhere")
        api = HTTPClient(running.app.http_port).get("/openapi.json")
    with RunningService(files_settings.with_(pages_listen="127.0.0.1:0", pages_allow="10.0.0.0/8")) as fenced:
        refused = PagesClient(fenced.app.pages_port).get("/recordings/sign-in")

    assert listed.status == 200 and api.status == 200
    assert missing.status == 404 and "text/html" in missing.headers["Content-Type"]
    lines = [r.getMessage() for r in caplog.records if "/recordings/legs.json" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("pages GET /recordings/legs.json from 127.0.0.1 user=fred status=200")
    assert refused.status == 403 and "not on the list of addresses that may use the recordings pages" in refused.body


@pytest.mark.parametrize("changes, sentence", [
    ({"pages_listen": "http"}, "RECORDING_PAGES_LISTEN=http serves the pages on the HTTP API's listener"),
    ({"pages_listen": "localhost"}, "RECORDING_PAGES_LISTEN 'localhost' is not HOST:PORT"),
    ({"pages_sso_header": "X-Remote-User"}, "honoured only from the proxies that RECORDING_PAGES_TRUSTED_PROXIES"),
    ({"pages_sso_header": "X Remote", "pages_trusted_proxies": "10.0.0.1"}, "is not a header name"),
    ({"pages_trusted_proxies": "10.0.0.300"}, "RECORDING_PAGES_TRUSTED_PROXIES: '10.0.0.300' is not an IP"),
    ({"trust_crm_login_name": "maybe"}, "RECORDING_TRUST_CRM_LOGIN_NAME 'maybe': true, false, or empty"),
])
def test_settings_the_pages_cannot_work_with_are_refused(changes, sentence):
    from recording.errors import ConfigError
    from recording.ops.config import Settings

    with pytest.raises(ConfigError, match=sentence.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Settings(**changes)
