"""Soak: FastAGI sessions at a steady rate while the database is stopped for a while.

Starts a PostgreSQL cluster of its own (initdb + pg_ctl in a temporary folder, on its own
port), our server on it through its CLI, then plays Asterisk (bench/loadgen.py's fake) at
``--rate`` sessions a second for ``--duration`` seconds, stopping the database from
``--outage START:END`` (seconds into the run). It then waits for the journal to be replayed and
prints: sessions, statuses, how many were deferred, the journal's peak, and the rows expected
and found (each session's tag must be in the database exactly once).

``--restart-at S`` also SIGKILLs the server S seconds into the run and starts it again at once
(a crash or a deploy; inside the outage, the new process starts without the database, from the
directory snapshot the first one wrote). It then prints how many sessions the kill cut and the
restart refused, the seconds from the restart to the first STARTED, and checks that the legs
in the database are exactly the sessions told STARTED (plus those of sessions the kill cut
after their leg was journaled, counted apart).

``--socket-unit`` holds the FastAGI port the way systemd's ``recording-agi.socket`` does and
hands it to each server process as descriptor 3 (socket activation), so that a session begun
while no process runs waits in the socket's backlog instead of being refused.

    .venv/bin/python bench/soak.py --rate 50 --duration 30 --outage 8:18
    .venv/bin/python bench/soak.py --rate 50 --duration 40 --outage 8:33 --restart-at 15
    .venv/bin/python bench/soak.py --rate 50 --duration 40 --outage 8:33 --restart-at 15 --socket-unit

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


# What systemd does between fork and exec for a socket-activated service: the socket to
# descriptor 3, LISTEN_PID naming this very process, then the service's command.
LAUNCH = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


def served(port: int, timeout: float) -> bool:
    """True once a ``health`` session on ``port`` gets its answer within ``timeout`` seconds."""
    import socket

    env = environment("health", host="127.0.0.1", port=port, uniqueid="0.0", channel="PJSIP/0-00000000",
                      extension="0", threadid=1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(env)
            if not sock.recv(4096):
                return False
            sock.sendall(b"200 result=0\n")
            return True
    except OSError:
        return False


class ServerProcess:
    """`recording-agi serve` on ``port``, in a process group of its own, its log appended to
    ``log_path`` (across restarts); with ``sock``, each process gets that listening socket
    as systemd would hand it over."""

    def __init__(self, cli: str, port: int, env: dict, cwd: Path, log_path: Path, sock=None):
        self.command = [cli, "serve", "--listen", f"127.0.0.1:{port}"]
        if sock is not None:
            self.command = [sys.executable, "-c", LAUNCH, str(sock.fileno()), *self.command]
        self.port, self.env, self.cwd, self.log_path, self.sock = port, env, cwd, log_path, sock
        self.process: subprocess.Popen | None = None

    def launch(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True, pass_fds=[self.sock.fileno()] if self.sock is not None else (),
            )

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        # NOTE: a held socket always accepts a connection; only an answered session says the
        # server is there.
        while not (served(self.port, 5) if self.sock is not None else listening(self.port)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the server did not start (exit {self.process.poll()}):\n" +
                                   self.log_path.read_text())
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


async def one_session(port: int, key: str, seq: int, epoch: int) -> dict:
    began = time.monotonic()
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
        return {"seq": seq, "status": f"failed: {type(exc).__name__}", "began": began, "ended": time.monotonic()}
    return {
        "seq": seq,
        "status": channel.variables.get("RECORDING_STATUS") or "none",
        "deferred": channel.variables.get("RECORDING_DEFERRED") == "1",
        "leg": channel.variables.get("RECORDING_ID", ""),
        "began": began,
        "ended": time.monotonic(),
    }


async def drive(args, server: ServerProcess, key: str, cluster: ThrowawayPostgres,
                journal: Path) -> tuple[list, int, list, tuple[float, float] | None]:
    """The sessions' results, the journal's peak, what happened when, and the moments
    (monotonic) the server was killed and started again (None without --restart-at)."""
    port = server.port
    start, end = (float(x) for x in args.outage.split(":"))
    epoch = int(time.time())
    tasks, events = [], []
    peak = 0
    began = time.monotonic()
    stopped = restarted = False
    restart: tuple[float, float] | None = None
    seq = 0
    loop = asyncio.get_running_loop()
    while (elapsed := time.monotonic() - began) < args.duration:
        if args.restart_at is not None and restart is None and elapsed >= args.restart_at:
            killed = time.monotonic()
            server.kill()
            events.append(f"{killed - began:6.2f}s server killed (SIGKILL)")
            server.launch()
            restart = (killed, time.monotonic())
            events.append(f"{restart[1] - began:6.2f}s server started again")
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
    return results, peak, events, restart


def leg_rows(url: str) -> list[tuple[str, str]]:
    """(leg id, tag) of every leg the soak made."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as conn:
        return conn.execute("SELECT id, tag FROM recording_legs WHERE tag LIKE 'soak-%'").fetchall()


def restart_figures(results: list[dict], relaunched: float, killed_sessions: set[int]) -> list[str]:
    """What the restart did to the sessions: cut, refused, and the wait for the first STARTED."""
    after = [r for r in results if r["began"] >= relaunched]
    first = min((r["ended"] for r in after if r["status"] == "STARTED"), default=None)
    refused = sum(1 for r in results if r["status"].startswith("failed: ConnectionRefused"))
    return [
        f"cut by the kill    {len(killed_sessions)} sessions in flight got no status",
        f"refused            {refused} sessions (connection refused while the new process started)",
        "first STARTED      " + (f"{first - relaunched:.2f}s after the restart" if first else "never"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="sessions a second (default 50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sessions (default 30)")
    parser.add_argument("--outage", default="8:18", help="database stopped from START to END seconds (default 8:18)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the replay (default 60)")
    parser.add_argument("--restart-at", type=float, metavar="S",
                        help="SIGKILL the server S seconds into the run and start it again at once")
    parser.add_argument("--socket-unit", action="store_true",
                        help="hold the FastAGI port as systemd's recording-agi.socket does and hand it to "
                        "each server process (socket activation)")
    args = parser.parse_args(argv)
    if args.duration > 600 or args.rate * args.duration > 100_000:
        parser.error("keep it bounded: at most 600 s and 100,000 sessions")
    if args.restart_at is not None and not 0 < args.restart_at < args.duration:
        parser.error("--restart-at must fall within the run (0 < S < --duration)")

    tmp = Path(tempfile.mkdtemp(prefix="recsoak-"))
    cluster = ThrowawayPostgres()
    server = None
    cli = str(Path(sys.executable).parent / "recording-agi")
    key = "soak-" + secrets.token_urlsafe(12)
    unit = None
    if args.socket_unit:
        import socket

        unit = socket.socket()
        unit.bind(("127.0.0.1", 0))
        unit.listen(4096)
    port = unit.getsockname()[1] if unit is not None else free_port()
    journal = tmp / "journal"
    try:
        cluster.start()
        env = dict(os.environ, RECORDING_DATABASE_URL=cluster.url, RECORDING_JOURNAL_DIR=str(journal),
                   RECORDING_LOG_LEVEL="WARNING")
        for step in (["db", "upgrade"], ["apikey", "set", key]):
            subprocess.run([cli, *step], env=env, check=True, capture_output=True, timeout=60)
        log_path = tmp / "server.log"
        server = ServerProcess(cli, port, env, tmp, log_path, sock=unit)
        server.launch()
        server.wait_listening()
        started = time.monotonic()
        results, peak, events, restart = asyncio.run(drive(args, server, key, cluster, journal))
        statuses = collections.Counter(r["status"] for r in results)
        deferred = sum(1 for r in results if r.get("deferred"))
        settle_deadline = time.monotonic() + args.settle
        while journal_entries(journal) and time.monotonic() < settle_deadline:
            time.sleep(0.2)
        replay_s = time.monotonic() - started - args.duration
        legs = leg_rows(cluster.url)
        rows = collections.Counter(tag for _, tag in legs)
        told = {r["leg"]: f"soak-{r['seq']}" for r in results if r["status"] == "STARTED"}
        expected = set(told.values())
        found = set(rows)
        twice = sorted(tag for tag, n in rows.items() if n > 1)
        missing = sorted(expected - found, key=lambda t: int(t.split("-")[1]))
        wrong_id = sorted(told.keys() - {leg_id for leg_id, _ in legs})
        # Sessions in flight when the server was killed: no status, though their leg may have
        # been journaled (then fsynced, and so replayed) before the kill.
        killed = set()
        if restart is not None:
            killed = {r["seq"] for r in results
                      if r["began"] < restart[0] <= r["ended"] and r["status"] != "STARTED"}
        untold = sorted(found - expected, key=lambda t: int(t.split("-")[1]))
        unexplained = [tag for tag in untold if int(tag.split("-")[1]) not in killed]
        print(f"# soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: rate {args.rate:g}/s for "
              f"{args.duration:g}s, database stopped {args.outage}s"
              f"{f', server SIGKILLed and restarted at {args.restart_at:g}s' if restart else ''}"
              f"{' (the port held by a socket unit)' if unit is not None else ''}, "
              f"{os.cpu_count()} cpus")
        for event in events:
            print(f"  {event}")
        print(f"sessions          {len(results)}")
        print(f"statuses          {dict(statuses)}")
        print(f"deferred          {deferred} (RECORDING_DEFERRED=1: written to the journal first)")
        print(f"journal peak      {peak} entries")
        print(f"journal left      {journal_entries(journal)} entries, {replay_s:.1f}s after the last session")
        print(f"rows expected     {len(expected)} (sessions told STARTED)")
        print(f"rows found        {sum(rows.values())} ({len(found)} tags)")
        print(f"tags twice        {len(twice)} {twice[:5]}")
        print(f"tags missing      {len(missing)} {missing[:5]}")
        print(f"ids not found     {len(wrong_id)} (a STARTED session's RECORDING_ID that is no leg)")
        if restart is not None:
            for line in restart_figures(results, restart[1], killed):
                print(line)
            print(f"legs not told     {len(untold)} (sessions cut by the kill after their leg was journaled: "
                  f"{len(untold) - len(unexplained)}; others: {len(unexplained)} {unexplained[:5]})")
        warnings = [line for line in log_path.read_text().splitlines() if re.search(r" (WARNING|ERROR) ", line)]
        print(f"server log        {len(warnings)} warning/error lines:")
        for line in warnings[:10]:
            print(f"  {line}")
        lost = [r for r in results if r["status"] != "STARTED"]
        if restart is not None:
            # Only the restart may cost sessions: those it cut, and those refused meanwhile.
            lost = [r for r in lost if r["seq"] not in killed and not r["status"].startswith("failed: ConnectionRefused")]
        ok = not lost and not missing and not twice and not wrong_id and not unexplained
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        if unit is not None:
            unit.close()
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
