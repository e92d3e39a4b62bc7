"""Soak: FastAGI sessions at a steady rate while the database is stopped for a while.

Starts a PostgreSQL cluster of its own (initdb + pg_ctl in a temporary folder, on its own
port), our server on it through its CLI, then plays Asterisk (bench/loadgen.py's fake) at
``--rate`` sessions a second for ``--duration`` seconds, stopping the database from
``--outage START:END`` (seconds into the run). It then waits for the journal to be replayed and
prints: sessions, statuses, how many were deferred, the journal's peak, and the rows expected
and found (each session's tag must be in the database exactly once).

    .venv/bin/python bench/soak.py --rate 50 --duration 30 --outage 8:18

Bounded: the run, the wait for replay (--settle) and every process are capped; everything it
started is stopped and removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from loadgen import AsteriskProtocol, Channel, environment  # noqa: E402

from tests.throwaway_postgres import ThrowawayPostgres  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def journal_entries(directory: Path) -> int:
    total = 0
    for path in directory.rglob("journal-*.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except OSError:
            pass
    return total


async def one_session(port: int, key: str, seq: int, epoch: int) -> dict:
    uniqueid = f"{epoch}.{seq}"
    name = f"PJSIP/410-{seq:08x}"
    channel = Channel(uniqueid, name)
    env = environment(f"recording/start?tag=soak-{seq}&apiKey={key}", host="127.0.0.1", port=port,
                      uniqueid=uniqueid, channel=name, extension="410", threadid=140521815484096 + seq)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    try:
        async with asyncio.timeout(40):
            transport, _ = await loop.create_connection(
                lambda: AsteriskProtocol(env, channel, 0.0, done), "127.0.0.1", port)
            await done
    except (OSError, TimeoutError) as exc:
        return {"seq": seq, "status": f"failed: {type(exc).__name__}"}
    return {
        "seq": seq,
        "status": channel.variables.get("RECORDING_STATUS") or "none",
        "deferred": channel.variables.get("RECORDING_DEFERRED") == "1",
        "leg": channel.variables.get("RECORDING_ID", ""),
    }


async def drive(args, port: int, key: str, cluster: ThrowawayPostgres, journal: Path) -> tuple[list, int, list]:
    start, end = (float(x) for x in args.outage.split(":"))
    epoch = int(time.time())
    tasks, events = [], []
    peak = 0
    began = time.monotonic()
    stopped = restarted = False
    seq = 0
    loop = asyncio.get_running_loop()
    while (elapsed := time.monotonic() - began) < args.duration:
        if not stopped and elapsed >= start:
            await loop.run_in_executor(None, cluster.stop, "immediate")
            stopped = True
            events.append(f"{time.monotonic() - began:6.2f}s database stopped (immediate)")
        if stopped and not restarted and elapsed >= end:
            await loop.run_in_executor(None, cluster.start)
            restarted = True
            events.append(f"{time.monotonic() - began:6.2f}s database started")
        while seq < elapsed * args.rate:
            seq += 1
            tasks.append(asyncio.create_task(one_session(port, key, seq, epoch)))
        peak = max(peak, journal_entries(journal))
        await asyncio.sleep(0.05)
    if not restarted:
        await loop.run_in_executor(None, cluster.start)
        events.append(f"{time.monotonic() - began:6.2f}s database started (after the last session)")
    results = await asyncio.gather(*tasks)
    return results, peak, events


def count_rows(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as conn:
        rows = conn.execute("SELECT tag, count(*) FROM recording_legs WHERE tag LIKE 'soak-%' GROUP BY tag").fetchall()
    return dict(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="sessions a second (default 50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sessions (default 30)")
    parser.add_argument("--outage", default="8:18", help="database stopped from START to END seconds (default 8:18)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the replay (default 60)")
    args = parser.parse_args(argv)
    if args.duration > 600 or args.rate * args.duration > 100_000:
        parser.error("keep it bounded: at most 600 s and 100,000 sessions")

    tmp = Path(tempfile.mkdtemp(prefix="recsoak-"))
    cluster = ThrowawayPostgres()
    server = None
    cli = str(Path(sys.executable).parent / "recording-agi")
    key = "soak-" + secrets.token_urlsafe(12)
    port = free_port()
    journal = tmp / "journal"
    try:
        cluster.start()
        env = dict(os.environ, RECORDING_DATABASE_URL=cluster.url, RECORDING_JOURNAL_DIR=str(journal),
                   RECORDING_LOG_LEVEL="WARNING")
        for step in (["db", "upgrade"], ["apikey", "set", key]):
            subprocess.run([cli, *step], env=env, check=True, capture_output=True, timeout=60)
        log_path = tmp / "server.log"
        server = subprocess.Popen([cli, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=tmp,
                                  stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), start_new_session=True)
        deadline = time.monotonic() + 30
        while not listening(port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the server did not start (exit {server.poll()}):\n" + log_path.read_text())
            time.sleep(0.1)
        started = time.monotonic()
        results, peak, events = asyncio.run(drive(args, port, key, cluster, journal))
        statuses = collections.Counter(r["status"] for r in results)
        deferred = sum(1 for r in results if r.get("deferred"))
        settle_deadline = time.monotonic() + args.settle
        while journal_entries(journal) and time.monotonic() < settle_deadline:
            time.sleep(0.2)
        replay_s = time.monotonic() - started - args.duration
        rows = count_rows(cluster.url)
        expected = {f"soak-{r['seq']}" for r in results if r["status"] == "STARTED"}
        found = {tag for tag, n in rows.items()}
        twice = sorted(tag for tag, n in rows.items() if n > 1)
        missing = sorted(expected - found, key=lambda t: int(t.split("-")[1]))
        print(f"# soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: rate {args.rate:g}/s for "
              f"{args.duration:g}s, database stopped {args.outage}s, {os.cpu_count()} cpus")
        for event in events:
            print(f"  {event}")
        print(f"sessions          {len(results)}")
        print(f"statuses          {dict(statuses)}")
        print(f"deferred          {deferred} (RECORDING_DEFERRED=1: written to the journal first)")
        print(f"journal peak      {peak} entries")
        print(f"journal left      {journal_entries(journal)} entries, {replay_s:.1f}s after the last session")
        print(f"rows expected     {len(expected)}")
        print(f"rows found        {sum(rows.values())} ({len(found)} tags)")
        print(f"tags twice        {len(twice)} {twice[:5]}")
        print(f"tags missing      {len(missing)} {missing[:5]}")
        warnings = [line for line in log_path.read_text().splitlines() if re.search(r" (WARNING|ERROR) ", line)]
        print(f"server log        {len(warnings)} warning/error lines:")
        for line in warnings[:10]:
            print(f"  {line}")
        ok = statuses.get("STARTED", 0) == len(results) and not missing and not twice
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
