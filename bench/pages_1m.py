"""The recordings pages' list at a million legs on PostgreSQL: fills a database of its own fast
(INSERT ... SELECT over generate_series), then measures the list's answer time over real HTTP
(the HTML list and its JSON twin, signed in as a Recording Manager and as an agent), first page
and 100th page (reached by following the keyset `next` links), and prints the query plans.

    .venv/bin/python bench/pages_1m.py                  # 1,000,000 legs, then measure
    .venv/bin/python bench/pages_1m.py --reuse          # measure again on the database left by a run
    .venv/bin/python bench/pages_1m.py --legs 100000 --drop

The data: 50 agents and a Recording Manager; one leg per call, a call every 30 s for about a
year; 80% of legs owned by an agent (AGENT), 10% by an extension's user (EXTENSION), 10%
nobody's (DEFAULT); each leg's tag is one of 50 campaigns (20,000 legs each) and each call's
External Reference its own; 10% of legs with a pause, 90% hashed, 1 in 1,000 held.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recording import credentials  # noqa: E402
from recording.domain import utcnow  # noqa: E402
from recording.ops.config import Settings  # noqa: E402
from recording.storage.browse import Browse, Filters  # noqa: E402
from recording.storage.people import People  # noqa: E402
from recording.storage.store import Store  # noqa: E402
from tests.pages_client import PagesClient  # noqa: E402
from tests.service_runner import RunningService  # noqa: E402

ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
NAME = "recording_bench_pages"
AGENTS = 50
PASSWORD = "bench-password-1"

FILL = [
    # Users: agent01..agent50 and boss, a Recording Manager.
    """INSERT INTO users (id, login, created_at)
       SELECT g, 'agent' || lpad(g::text, 2, '0'), now() FROM generate_series(1, {agents}) g""",
    "INSERT INTO users (id, login, created_at) VALUES ({agents} + 1, 'boss', now())",
    "INSERT INTO groups (id, name) VALUES (1, 'Recording Manager')",
    "INSERT INTO user_groups (user_id, group_id) VALUES ({agents} + 1, 1)",
    "SELECT setval(pg_get_serial_sequence('users', 'id'), {agents} + 1)",
    # One call per leg, a call every 30 s from 2025-01-01.
    """INSERT INTO call_records (id, unique_id, external_reference, created_at, updated_at)
       SELECT g, '1735689600.' || g, 'REF-' || g, t, t
       FROM (SELECT g, timestamptz '2025-01-01 00:00:00+00' + g * interval '30 seconds' AS t
             FROM generate_series(1, {legs}) g) s""",
    "SELECT setval(pg_get_serial_sequence('call_records', 'id'), {legs})",
    """INSERT INTO recording_legs (id, call_record_id, leg, unique_id, channel, extension, file, tag, owner_id,
                                  ownership, source, state, started_at, ended_at, ended_by, file_size, file_sha256,
                                  hashed_at, held_at, held_by, hold_reason)
       SELECT md5(g::text), g, 1, '1735689600.' || g, 'PJSIP/' || (400 + g % {agents}) || '-0000001a',
              (400 + g % {agents})::text, '/var/spool/asterisk/monitor/1735689600.' || g || '-1.wav',
              'CAMPAIGN-' || (g % 50),
              CASE WHEN g % 10 = 9 THEN NULL ELSE 1 + g % {agents} END,
              CASE WHEN g % 10 = 9 THEN 'DEFAULT' WHEN g % 10 = 8 THEN 'EXTENSION' ELSE 'AGENT' END,
              'agi', (ARRAY['ended', 'ended', 'ended', 'stopped', 'lost'])[1 + g % 5], t,
              t + (60 + g % 600) * interval '1 second', 'hangup',
              CASE WHEN g % 10 = 3 THEN NULL ELSE 44 + (60 + g % 600) * 16000 END,
              CASE WHEN g % 10 = 3 THEN NULL ELSE md5(g::text) || md5((g + 1)::text) END,
              CASE WHEN g % 10 = 3 THEN NULL ELSE t + interval '20 minutes' END,
              CASE WHEN g % 1000 = 7 THEN t + interval '1 day' END,
              CASE WHEN g % 1000 = 7 THEN 'boss' END,
              CASE WHEN g % 1000 = 7 THEN 'case ' || g END
       FROM (SELECT g, timestamptz '2025-01-01 00:00:00+00' + g * interval '30 seconds' AS t
             FROM generate_series(1, {legs}) g) s""",
    """INSERT INTO recording_pauses (leg_id, paused_at, resumed_at, method, paused_by, resumed_by)
       SELECT md5(g::text), t + interval '20 seconds', t + interval '45 seconds', 'mute', 'dialplan', 'dialplan'
       FROM (SELECT g, timestamptz '2025-01-01 00:00:00+00' + g * interval '30 seconds' AS t
             FROM generate_series(1, {legs}) g WHERE g % 10 = 5) s""",
    "ANALYZE",
]


def database_url() -> str:
    return f"postgresql+psycopg://root@127.0.0.1:5432/{NAME}"


def fill(legs: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{NAME}"')
    store = Store(database_url())
    store.upgrade()
    store.close()
    with psycopg.connect(database_url().replace("+psycopg", ""), autocommit=True) as conn:
        for statement in FILL:
            started = time.monotonic()
            conn.execute(statement.format(legs=legs, agents=AGENTS))
            print(f"  {time.monotonic() - started:6.1f}s  {' '.join(statement.split())[:90]}", flush=True)


def scenarios(browse: Browse, store: Store) -> list[tuple[str, str, str, Filters]]:
    """(name, login, query string, filters) of what is measured."""
    since, until = "2025-02-01", "2025-11-30"
    return [
        ("unfiltered (Recording Manager)", "boss", "", Filters()),
        ("by tag, a campaign of 20,000 legs", "boss", "tag=CAMPAIGN-7", Filters(tag="CAMPAIGN-7")),
        ("by tag, one call's External Reference", "boss", "tag=REF-424242", Filters(tag="REF-424242")),
        ("by owner and date (Recording Manager)", "boss", f"owner=agent07&since={since}&until={until}",
         Filters(owner="agent07", since=_day(since), until=_day(until, end=True))),
        ("an agent's own legs, by date", "agent07", f"since={since}&until={until}",
         Filters(since=_day(since), until=_day(until, end=True))),
        ("held", "boss", "held=yes", Filters(held=True)),
        ("by state and extension", "boss", "state=lost&extension=409", Filters(state="lost", extension="409")),
    ]


def _day(text: str, end: bool = False) -> datetime:
    from datetime import timedelta

    day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return day + timedelta(days=1) if end else day


def measure(args) -> None:
    store = Store(database_url())
    people = People(store)
    hashed = credentials.hash_password(PASSWORD)
    for login in ("boss", "agent07"):
        people.set_password(login, hashed, utcnow())
    browse = Browse(store)
    legs = store.engine.connect().exec_driver_sql("SELECT count(*) FROM recording_legs").scalar()
    print(f"\n{legs:,} legs in {NAME}; PostgreSQL "
          f"{store.engine.connect().exec_driver_sql('SHOW server_version').scalar()}\n")
    settings = Settings(database_url=database_url(), agi_listen="127.0.0.1:0", pages_listen="127.0.0.1:0",
                        journal_dir=str(Path(args.journal)), event_loop="uvloop")
    results = []
    with RunningService(settings) as running:
        clients = {}
        for login in ("boss", "agent07"):
            clients[login] = PagesClient(running.app.pages_port)
            assert clients[login].sign_in(login, PASSWORD).status == 303
        for name, login, query, filters in scenarios(browse, store):
            results.append((name, *walk(clients[login], query, args.pages, args.repeat)))
            explain(store, browse, login, filters, name, args)
    print("\nanswer time of the HTML list over HTTP, median of "
          f"{args.repeat} (JSON twin in brackets), size 50:\n")
    print(f"{'':48} {'first page':>22} {'page ' + str(args.pages):>22}  legs shown")
    for name, first, first_json, last, last_json, reached, shown in results:
        later = f"{last:7.1f} ms ({last_json:6.1f})" if reached == args.pages else f"only {reached} pages"
        print(f"{name:48} {first:7.1f} ms ({first_json:6.1f})   {later:>22}  {shown}")
    store.close()


def walk(client: PagesClient, query: str, pages: int, repeat: int):
    """Times the first page, follows the Older links to page ``pages``, times that one."""
    html = f"/recordings/legs?{query}" if query else "/recordings/legs"

    def timed(path: str) -> float:
        started = time.perf_counter()
        answer = client.get(path)
        assert answer.status == 200, answer.body[:300]
        return (time.perf_counter() - started) * 1000

    first = statistics.median(timed(html) for _ in range(repeat))
    json_path = html.replace("/recordings/legs", "/recordings/legs.json", 1)
    first_json = statistics.median(timed(json_path) for _ in range(repeat))
    url, reached, shown = json_path, 1, 0
    while reached < pages:
        page = client.get(url).json
        shown += len(page["legs"])
        if not page["nextUrl"]:
            return first, first_json, 0.0, 0.0, reached, shown
        url, reached = page["nextUrl"], reached + 1
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["next"][0]
    last_html = html + ("&" if query else "?") + urllib.parse.urlencode({"next": token})
    last = statistics.median(timed(last_html) for _ in range(repeat))
    last_json = statistics.median(timed(url) for _ in range(repeat))
    return first, first_json, last, last_json, reached, shown + len(client.get(url).json["legs"])


def explain(store: Store, browse: Browse, login: str, filters: Filters, name: str, args) -> None:
    if not args.plans:
        return
    user = store.find_user(login)
    with store.engine.connect() as conn:
        statement = browse.statement(conn, user, filters, None, 51)
        if statement is None:
            return
        compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + str(compiled),
                                    compiled.params).scalars().all()
    print(f"-- {name}:")
    for line in plan:
        print("   ", line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="measure the database a previous run filled")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--pages", type=int, default=100, help="the page whose answer time is measured (100)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-plans", dest="plans", action="store_false", help="do not print the query plans")
    parser.add_argument("--journal", default="/tmp/recording-bench-pages-journal")
    args = parser.parse_args()
    if not args.reuse:
        started = time.monotonic()
        print(f"filling {NAME} with {args.legs:,} legs:", flush=True)
        fill(args.legs)
        print(f"filled in {time.monotonic() - started:.0f}s", flush=True)
    measure(args)
    if args.drop:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
