#!/usr/bin/env python3
"""Benchmarks the recording service's FastAGI path against references and peers, in one run.

Starts, each as its own process: the references (``bench/reference_server.py``: ``ref`` sends 2
commands, ``ref3`` the 3 of a correct start; no database), the peers (``bench/peers/``: a pyst2
server with SQLAlchemy, a panoramisk one and a pystrix one with a psycopg pool, each writing one
row to PostgreSQL), our server on SQLite (a temp file) and on PostgreSQL (a temp database, which the
peers use too), ours through the CLI exactly as deployed (``db upgrade``, ``apikey set``,
``serve --listen``). Then, for each concurrency level, ``--rounds`` times, each server in turn,
it runs ``bench/loadgen.py`` (a fake Asterisk), and prints one table of the medians over the
rounds: throughput, latency, server CPU per session, server peak RSS, errors, the load
generator's own CPU, and the ratios to the best peer and to ``ref3`` at the same concurrency;
then every round on its own line (p50, p99, p99.9, max, the load average, and how many sessions
took 10 ms or more, by bucket), then the concurrency-1 breakdown of a session of each server,
step by step. ``--probe`` runs our servers under ``bench/stallprobe.py`` and says, for each
round, what stopped their event loop.

    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --commit HEAD --concurrency 1,10,100 --sessions 5000 --rounds 3
    .venv/bin/python bench/run.py --concurrency 2000 --sessions 4000

Everything is bounded: each phase has a time cap, and every process started here is stopped
(process group SIGTERM, then SIGKILL) and the temp database dropped, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import amifollow  # noqa: E402
from browsing import Browsing  # noqa: E402
import stallprobe  # noqa: E402  (bench/ is not a package: run.py runs as a script)
from results import (  # noqa: E402
    Row, combine, format_breakdown, format_rounds, format_stalls, format_table, log_excerpt, profile_summary,
)
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
# ref: the reference's 2 commands; ref3: the 3 commands of a correct start (ratios are to it);
# the peers: recorders as users write them with other libraries; sqlite, pg: our server.
SERVER_NAMES = ("ref", "ref3", "pyst2", "panoramisk", "pystrix", "sqlite", "pg", "sqlite+hook", "pg+hook",
                "sqlite+trig", "pg+trig", "sqlite+pages", "pg+pages")
# What --servers runs by default. The others, run when named, are ours with a webhook
# subscription: +hook to a receiver in this process (every start's event written and delivered),
# +trig with a tag prefix no leg has (the triggers write each event; nothing is delivered);
# +pages with the recordings pages browsed by a Recording Manager while it is measured
# (bench/browsing.py; what it saw is in the round's note).
DEFAULT_SERVERS = SERVER_NAMES[:7]
# sqlite+ami, pg+ami: our server following the calls of an AMI stream (--ami-transfers).
AMI_NAMES = ("sqlite+ami", "pg+ami")
REFERENCES = {"ref": [], "ref3": ["--start3"]}
# each peer: its script in bench/peers/ and the modules it needs (the bench extra)
PEERS = {"pyst2": ("pyst2_server.py", ("asterisk.agi", "sqlalchemy")),
         "panoramisk": ("panoramisk_server.py", ("panoramisk", "psycopg_pool")),
         "pystrix": ("pystrix_server.py", ("pystrix", "psycopg_pool"))}
OURS = ("sqlite", "pg", "sqlite+hook", "pg+hook", "sqlite+trig", "pg+trig", "sqlite+pages", "pg+pages")
HOOKED = ("sqlite+hook", "pg+hook", "sqlite+trig", "pg+trig")
PAGED = ("sqlite+pages", "pg+pages")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


def spawn(cmd: list[str], *, stdout=None, stderr=None, env=None, cwd=None, stdin=subprocess.DEVNULL
          ) -> subprocess.Popen:
    """Starts ``cmd`` in its own process group (so it and its children can be stopped as one,
    and a Ctrl-C at the terminal reaches only this script, which then stops them)."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, stdin=stdin,
                            start_new_session=True, cwd=cwd or ROOT)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # NOTE: the group may outlive its leader (a worker process), so kill it in any case.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def stop_all() -> None:
    for proc in reversed(_started):
        stop(proc)
    _started.clear()


def run_checked(cmd: list[str], *, env=None, cwd=None, timeout: float = 120.0) -> str:
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, 1)
        raise RuntimeError(f"{' '.join(cmd)} took more than {timeout:g}s")
    finally:
        if proc.poll() is None:  # interrupted
            stop(proc, 1)
        if proc in _started:
            _started.remove(proc)
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-2000:]}")
    return text


def free_port() -> int:
    """A free port below the ephemeral range, so that no outgoing connection of the load
    generator can take it (or, with the server down, connect to itself on it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot(rev: str, into: Path) -> tuple[Path, str]:
    """The tree of commit ``rev`` extracted into ``into`` (``git archive``: the checkout and its
    index are not touched), importable in place of the working tree. Returns (dir, full sha)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=30, check=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", sha], stdout=subprocess.PIPE, cwd=ROOT)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True, timeout=120)
    archive.stdout.close()
    if archive.wait(60) != 0:
        raise RuntimeError(f"git archive {sha} failed")
    # NOTE: installed, migrations/ is the package recording.migrations; the editable install maps
    # it onto the working tree's, so point the snapshot's own at it.
    link = into / "recording" / "migrations"
    if (into / "migrations").is_dir() and not link.exists():
        link.symlink_to("../migrations")
    return into, sha


# -- /proc ---------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after its closing ')'
    return raw[raw.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ticks(root: int) -> int:
    """utime+stime of ``root`` and its live descendants, plus the reaped children's time
    (cutime+cstime) that the kernel has added to each of them."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields:  # fields[11..14] are utime stime cutime cstime (stat fields 14..17)
            total += sum(int(x) for x in fields[11:15])
    return total


def tree_hwm_kb(root: int) -> int:
    """Peak RSS (VmHWM) summed over ``root`` and its live descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def reset_hwm(root: int) -> bool:
    """Resets the peak RSS so that each level reports its own (writing 5 to clear_refs)."""
    done = True
    for pid in process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def comm_cpu_ticks(name: str) -> int:
    """CPU of every live process whose command is ``name`` (the PostgreSQL server): utime+stime,
    plus cutime+cstime, where the postmaster keeps the time of the backends it has reaped (a
    peer that connects per session ends a backend per session)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != name:
                continue
        except OSError:
            continue
        fields = _stat_fields(int(entry))
        if fields:
            total += sum(int(x) for x in fields[11:15])
    return total


def machine_busy_ticks() -> int:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return user + nice + system + irq + softirq + steal


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Waits up to ``max_wait`` seconds for a second in which the machine's busy CPU (all
    processes: others may be running tests here) stays below ``threshold`` of a core. Returns
    the busy cores of the last second measured."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0 = machine_busy_ticks()
        time.sleep(1.0)
        cores = (machine_busy_ticks() - busy0) / TICK
        if cores < threshold or time.monotonic() >= deadline:
            return cores


# -- servers -------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    port: int
    log_path: Path
    cmd: list[str]
    env: dict | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    seq: int = 1
    failed: str | None = None
    db_comm: str | None = None  # the database server's process name, for its CPU
    probe: Path | None = None  # --probe: the file bench/stallprobe.py writes
    feed: amifollow.Feed | None = None  # a +ami server's AMI stream
    pages: Browsing | None = None  # a +pages server's visitor


def start_server(server: Server, cap: float) -> None:
    handle = open(server.log_path, "ab")
    server.proc = spawn(server.cmd, stdout=handle, stderr=subprocess.STDOUT, env=server.env, cwd=server.cwd)
    handle.close()
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode} at start:\n"
                               + tail(server.log_path, 20))
        if port_listening(server.port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen on port {server.port} within {cap:g}s:\n"
                       + tail(server.log_path, 20))


def port_listening(port: int) -> bool:
    """True when a socket listens on ``port`` (read from /proc/net/tcp*, without connecting, so
    the server sees no half-made session)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_receiver():
    """A webhook receiver on 127.0.0.1 for the +hook servers, answering 200 to every POST:
    (server, its URL, counts)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    counts = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            counts["count"] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook", counts


def serve_supports_workers(cli: str, env: dict, cwd: Path) -> bool:
    try:
        out = subprocess.run([cli, "serve", "--help"], capture_output=True, text=True, timeout=60, cwd=cwd,
                             env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in out.stdout


class Postgres:
    """A temp database on the local PostgreSQL, dropped by :meth:`drop`."""

    def __init__(self, host: str, port: int, user: str):
        self.host, self.port, self.user = host, port, user
        self.name = f"recbench_{os.getpid()}_{secrets.token_hex(3)}"
        self.created = False

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def create(self) -> str:
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.name}"

    def drop(self) -> None:
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False


def commit_floor(pg_url: str | None, sqlite_path: Path | None, count: int = 300) -> list[str]:
    """What one durable commit costs from Python with nothing else running in the process: the
    floor under the database step of a concurrency-1 session. One INSERT, committed, ``count``
    times in turn: on PostgreSQL through psycopg in autocommit (one round trip, the server's
    WAL flush with its default synchronous_commit), on SQLite as our server opens it (WAL,
    synchronous=FULL). Returns report lines."""
    import sqlite3

    def commits(label: str, conn, insert: str) -> str:
        """``count`` INSERTs of one row each (``insert``, one parameter), in turn, timed."""
        times = []
        for i in range(count):
            t0 = time.perf_counter()
            conn.execute(insert, (f"probe-{i}",))
            times.append(time.perf_counter() - t0)
        times.sort()
        return (f"{label}: median {1000 * times[len(times) // 2]:.2f} ms, "
                f"p99 {1000 * times[min(len(times) - 1, int(len(times) * 0.99))]:.2f} ms ({len(times)} commits)")

    lines = []
    if pg_url:
        import psycopg

        try:
            with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True,
                                 connect_timeout=5) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY, v text)")
                lines.append(commits("PostgreSQL, one INSERT in autocommit (psycopg)", conn,
                                     "INSERT INTO bench_commit_probe (v) VALUES (%s)"))
        except Exception as exc:
            lines.append(f"PostgreSQL commit probe failed: {exc}")
    if sqlite_path:
        conn = sqlite3.connect(sqlite_path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id INTEGER PRIMARY KEY, v TEXT)")
            lines.append(commits("SQLite (WAL, synchronous=FULL), one INSERT in autocommit (sqlite3)", conn,
                                 "INSERT INTO bench_commit_probe (v) VALUES (?)"))
        finally:
            conn.close()
    return lines


# -- one measurement ------------------------------------------------------------------------------

def run_level(server: Server, concurrency: int, sessions: int, args, epoch: int, cap: float,
              profile_to: Path | None = None) -> Row:
    row = Row(server.name, concurrency)
    sessions = max(sessions, concurrency)
    cmd = [
        sys.executable, str(HERE / "loadgen.py"), "--target", f"127.0.0.1:{server.port}",
        "--sessions", str(sessions), "--concurrency", str(concurrency), "--procs", str(args.procs),
        "--api-key", args.api_key, "--delay", str(args.delay), "--timeout", str(args.timeout),
        "--connect-timeout", str(args.connect_timeout), "--epoch", str(epoch), "--seq-start", str(server.seq),
        "--json",
    ]
    if concurrency == 1:
        cmd.append("--breakdown")
    if args.duration_cap:
        cmd += ["--duration-cap", str(args.duration_cap)]
    if args.source_ips:
        cmd += ["--source-ips", str(args.source_ips)]
    server.seq += sessions + args.procs + 16
    pid = server.proc.pid
    hwm_reset = reset_hwm(pid)
    cpu0, busy0 = tree_cpu_ticks(pid), machine_busy_ticks()
    db0 = comm_cpu_ticks(server.db_comm) if server.db_comm else 0
    spy = None
    if profile_to is not None:
        # --gil: only the thread holding the GIL is sampled, so the shares are of CPU spent in
        # Python, not of threads waiting; --nonblocking: the server is not paused to sample.
        with open(str(profile_to) + ".log", "wb") as spy_log:
            spy = spawn([args.profile, "record", "--gil", "--nonblocking", "-r", os.environ.get("BENCH_PROFILE_RATE", "100"), "--format", "raw",
                         "-o", str(profile_to), "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=spy_log)
        time.sleep(0.5)
    load_start, t_start = os.getloadavg()[0], time.monotonic()
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        stop(proc, 1)
        row.note = f"load generator stopped after the phase cap of {cap:g}s"
        row.errors = sessions
        return row
    finally:
        if proc.poll() is None:  # interrupted
            stop(proc, 1)
        if proc in _started:
            _started.remove(proc)
    cpu1, busy1 = tree_cpu_ticks(pid), machine_busy_ticks()
    db1 = comm_cpu_ticks(server.db_comm) if server.db_comm else 0
    if spy is not None:
        # SIGINT makes py-spy write what it sampled and exit
        try:
            os.killpg(spy.pid, signal.SIGINT)
            spy.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        stop(spy, 1)
        if spy in _started:
            _started.remove(spy)
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        row.note = "load generator failed: " + err.decode(errors="replace").strip()[-500:]
        row.errors = sessions
        return row
    row.sessions, row.ok, row.errors = result["sessions"], result["ok"], result["errors"]
    row.wall_s, row.rate = result["wall_s"], result["sessions_per_s"]
    row.p50, row.p99, row.max = result["p50_ms"], result["p99_ms"], result["max_ms"]
    row.p999, row.tail, row.slowest = result["p999_ms"], result["tail"], result["slowest"]
    row.load_start, row.load_end = load_start, os.getloadavg()[0]
    if server.probe is not None:
        row.stalls = stallprobe.summarize(str(server.probe), t_start, time.monotonic())
    row.cpu_ms = (cpu1 - cpu0) / TICK * 1000 / max(row.sessions, 1)
    row.rss_mb = tree_hwm_kb(pid) / 1024
    row.lg_cpu_s = result["loadgen_cpu_s"]
    row.other_cpu_s = max(0.0, (busy1 - busy0) / TICK - (cpu1 - cpu0) / TICK - row.lg_cpu_s
                          - ((db1 - db0) / TICK if server.db_comm else 0.0))
    if server.db_comm:
        row.db_cpu_ms = (db1 - db0) / TICK * 1000 / max(row.sessions, 1)
    row.error_kinds, row.error_samples = result["error_kinds"], result["error_samples"]
    row.breakdown = result.get("breakdown")
    if not hwm_reset:
        row.note = "peak RSS since start (clear_refs not writable)"
    if server.proc.poll() is not None:
        server.failed = f"exited with {server.proc.returncode} during the run"
        row.note = (row.note + "; " if row.note else "") + f"server {server.failed}"
    return row


def machine_note() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cpus ({model}), {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average at start {os.getloadavg()[0]:.2f}")


def git_note(sha: str | None) -> str:
    if sha:
        return f"our server from commit {sha[:10]} (git archive, not the working tree)"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agi", "recording"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
        return f"our server from the working tree at commit {head}" + (
            " (agi/ or recording/ modified, uncommitted)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "commit ?"


# -- main ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,10,100,1000", help="levels, comma-separated (default 1,10,100,1000)")
    p.add_argument("--sessions", type=int, default=20000,
                   help="sessions per level and server, at most (default 20000; at least the concurrency)")
    p.add_argument("--duration-cap", type=float, default=8.0,
                   help="seconds after which a level starts no new session (default 8; 0: none)")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help=f"which of {','.join(SERVER_NAMES)} (default {','.join(DEFAULT_SERVERS)})")
    p.add_argument("--rounds", type=int, default=None,
                   help="runs of each server at each level; each cell is the median of its rounds (default 3; "
                        "1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 300 sessions per level (1000 at concurrency 1000), 3 s cap, 1 round")
    p.add_argument("--procs", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--delay", type=float, default=0.0, help="fake Asterisk's delay before each reply, s (default 0)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one session may take (default 60)")
    p.add_argument("--connect-timeout", type=float, default=2.0, help="seconds to connect, as Asterisk (default 2)")
    p.add_argument("--warmup", type=int, default=20,
                   help="sessions at concurrency 1 sent to each server before measuring (default 20; 0: none, "
                        "so the first level also pays the cold start: the apiKey's scrypt, caches)")
    p.add_argument("--commit", metavar="REV", default=None,
                   help="benchmark our server as of commit REV (extracted with git archive into the temp "
                        "directory) instead of the working tree, which others may be editing")
    p.add_argument("--workers", type=int, default=None,
                   help="pass 'serve --workers N' to our server (only if its CLI has that option)")
    p.add_argument("--server-log-level", default=None, help="RECORDING_LOG_LEVEL for our server (default: its own, INFO)")
    p.add_argument("--source-ips", type=int, default=0, help="passed to loadgen.py (0: kernel picks the source)")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="root")
    p.add_argument("--phase-cap", type=float, default=None,
                   help="seconds one load generator run may take before it is killed "
                        "(default: duration cap + session timeout + 30)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet between runs (default 1)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each run, wait up to this many seconds for the machine to be idle (busy CPU "
                        "below 0.3 core over 1 s), since other work on the machine skews the figures "
                        "(default 20; 0 with --quick)")
    p.add_argument("--profile", metavar="PY_SPY", nargs="?", const="py-spy", default=None,
                   help="sample our servers with py-spy (path to it, default 'py-spy' on PATH) during each "
                        "run and print their top functions; sampling costs CPU, so compare figures of "
                        "profiled runs only with each other")
    p.add_argument("--probe", action="store_true",
                   help="run our servers under bench/stallprobe.py and print, for each round, what stopped their "
                        "event loop for 10 ms or more (the garbage collector, a busy machine, another thread, our "
                        "code) and their slowest sessions with what overlapped them; it costs a little CPU "
                        "(a wake-up every 2 ms); not with --workers")
    p.add_argument("--ami-transfers", type=float, default=100.0, metavar="RATE",
                   help="the servers sqlite+ami and pg+ami (named in --servers) follow the calls of an AMI stream of "
                        "RATE captured transfers a second (bench/amistream.py), beside their FastAGI load (default 100)")
    p.add_argument("--ami-ramp", type=float, default=26.0,
                   help="seconds of stream before the idle measurement, so the calls in flight reach their steady "
                        "number (default 26: the longest scenario)")
    p.add_argument("--ami-idle", type=float, default=10.0,
                   help="seconds of the stream alone measured on each +ami server before the rounds (default 10)")
    p.add_argument("--ami-rss-cap", type=float, default=3000.0,
                   help="MB: a +ami server holding more gets no more stream for the rest of the run (default 3000)")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (server logs, SQLite file)")
    p.add_argument("--json-out", help="also write the rows as JSON to this file")
    return p


def self_test(script: str = "loadgen.py") -> str | None:
    """Runs ``loadgen.py --self-test`` (its MSet parser against the Asterisk captures), or
    ``amistream.py``'s (its stream against the transfer captures); returns its output if it
    failed."""
    try:
        out = subprocess.run([sys.executable, str(HERE / script), "--self-test"], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"{script} --self-test took more than 120 s"
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sessions, args.duration_cap = 300, 3.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 20.0
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not levels or any(c < 1 for c in levels) or any(s not in SERVER_NAMES + AMI_NAMES for s in wanted) \
            or args.rounds < 1 or args.ami_transfers <= 0:
        print(f"run.py: --concurrency takes positive integers, --servers names from "
              f"{','.join(SERVER_NAMES + AMI_NAMES)}, --rounds at least 1, --ami-transfers above 0", file=sys.stderr)
        return 2
    if args.probe and any(name in AMI_NAMES for name in wanted):
        log("--probe: the +ami servers run under bench/followprobe.py, not under bench/stallprobe.py")
    if args.profile:
        found = shutil.which(args.profile)
        if not found:
            print(f"run.py: --profile: {args.profile} not found (pip install py-spy)", file=sys.stderr)
            return 2
        args.profile = found
    failed_check = self_test()
    if not failed_check and any(name in AMI_NAMES for name in wanted):
        failed_check = self_test("amistream.py")
    if failed_check:
        print(f"run.py: a self-test failed (the load generator's or the AMI stream's), so the figures would not "
              f"be Asterisk's:\n"
              f"{failed_check}", file=sys.stderr)
        return 2
    status = 0
    for name, (_script, modules) in PEERS.items():
        missing = [m for m in modules if name in wanted and find_spec(m.split(".")[0]) is None]
        if missing:
            log(f"{name}: skipped, {', '.join(missing)} not installed (pip install -e '.[bench]')")
            wanted.remove(name)
            status = 1
    cap = args.phase_cap or (args.duration_cap or 600) + args.timeout + 30

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(levels) + 256 > soft:
        log(f"warning: RLIMIT_NOFILE is {soft}: too low for {max(levels)} connections")

    cli = str(Path(sys.executable).parent / "recording-agi")
    if not Path(cli).exists():
        cli = shutil.which("recording-agi") or cli
    tmp = Path(tempfile.mkdtemp(prefix="recbench-"))
    env = dict(os.environ)
    if args.server_log_level:
        env["RECORDING_LOG_LEVEL"] = args.server_log_level
    source, sha = ROOT, None
    if args.commit:
        try:
            source, sha = snapshot(args.commit, tmp / "src")
        except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
            log(f"cannot extract commit {args.commit}: {exc}")
            shutil.rmtree(tmp, ignore_errors=True)
            return 2
        env["PYTHONPATH"] = str(source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    workers_note = ""
    serve_extra: list[str] = []
    if args.probe and args.workers:
        log("--probe watches one process: ignored with --workers")
        args.probe = False
    if args.workers is not None:
        if serve_supports_workers(cli, env, source):
            serve_extra = ["--workers", str(args.workers)]
            workers_note = f"our server runs with --workers {args.workers}"
        else:
            workers_note = f"--workers {args.workers} ignored: 'recording-agi serve --help' has no --workers"
            log(workers_note)
    api_key = args.api_key = "bench-" + secrets.token_urlsafe(12)
    pg: Postgres | None = None
    pg_url: str | None = None
    servers: list[Server] = []
    extra_dbs: list[Postgres] = []
    receiver = None
    rounds: list[Row] = []
    cells: list[Row] = []
    profiles: list[tuple[str, int, Path]] = []
    quiet_notes: list[float] = []
    floor: list[str] = []
    feeds: list[amifollow.Feed] = []
    idle: list[dict] = []
    pg_ami: Postgres | None = None
    pg_ami_url: str | None = None
    interrupted = False
    started_at = dt.datetime.now().astimezone()
    load_at_start = os.getloadavg()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # NOTE: a shell starting this in the background may have set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if any(name.startswith("pg") or name in PEERS for name in wanted):
            pg = Postgres(args.pg_host, args.pg_port, args.pg_user)
            try:
                pg_url = pg.create()
                if "pg+ami" in wanted:  # a database of its own, as big as pg's at each level
                    pg_ami = Postgres(args.pg_host, args.pg_port, args.pg_user)
                    pg_ami.name += "_ami"
                    pg_ami_url = pg_ami.create()
            except Exception as exc:
                log(f"pg and the peers: skipped, the temp database could not be created: {exc}")
                wanted = [n for n in wanted if not n.startswith("pg") and n not in PEERS]
                pg, status = None, 1
        for name in wanted:
            port = free_port()
            base, streamed = amifollow.split_name(name)
            if streamed:
                name = f"{name}{args.ami_transfers:g}"
            log_path = tmp / f"{name}.log"
            if name in REFERENCES:
                cmd = [sys.executable, str(HERE / "reference_server.py"), "--listen", f"127.0.0.1:{port}"]
                servers.append(Server(name, port, log_path, cmd + REFERENCES[name]))
                continue
            if name in PEERS:
                dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
                cmd = [sys.executable, str(HERE / "peers" / PEERS[name][0]), "--listen", f"127.0.0.1:{port}",
                       "--dsn", dsn]
                servers.append(Server(name, port, log_path, cmd, db_comm="postgres"))
                continue
            if base.startswith("sqlite"):
                url = f"sqlite:///{tmp / (name.replace('+', '-') + '.sqlite3')}"
            elif base == "pg":
                url = pg_ami_url if streamed else pg_url
            else:  # pg+hook, pg+trig: a database of their own
                hooked_pg = Postgres(args.pg_host, args.pg_port, args.pg_user)
                extra_dbs.append(hooked_pg)
                url = hooked_pg.create()
            for step in (["db", "upgrade"], ["apikey", "set", api_key]):
                run_checked([cli, "--database-url", url, *step], env=env, cwd=source, timeout=120)
            if name in HOOKED:
                receiver = receiver or start_receiver()
                prefix = ["--tag-prefix", "no-leg-has-this"] if name.endswith("+trig") else []
                run_checked([cli, "--database-url", url, "webhooks", "add", receiver[1], *prefix], env=env, cwd=source)
            cmd = [cli, "--database-url", url, "serve", "--listen", f"127.0.0.1:{port}", *serve_extra]
            probe = feed = pages = None
            # NOTE: each server its own journal: a shared one would replay one server's
            # deferred writes into the other's database.
            server_env = dict(env, RECORDING_JOURNAL_DIR=str(tmp / f"journal-{name}"))
            if name in PAGED:
                password = secrets.token_urlsafe(16)
                run_checked([cli, "--database-url", url, "users", "add", "boss", "--group", "Recording Manager"],
                            env=env, cwd=source)
                subprocess.run([cli, "--database-url", url, "users", "passwd", "boss", "--password-stdin"],
                               input=password + "\n", text=True, env=env, cwd=source, check=True,
                               capture_output=True, timeout=120)
                pages_port = free_port()
                server_env["RECORDING_PAGES_LISTEN"] = f"127.0.0.1:{pages_port}"
                pages = Browsing(f"http://127.0.0.1:{pages_port}", "boss", password)
            if streamed:
                feed = amifollow.start_feed(spawn, name, args.ami_transfers, tmp)
                feeds.append(feed)
                server_env.update(amifollow.server_env(feed))
                cmd = amifollow.probe_command(cmd, feed)
            elif args.probe:
                probe = tmp / f"probe-{name}.jsonl"
                cmd = [sys.executable, str(HERE / "stallprobe.py"), "--out", str(probe), "--", *cmd[1:]]
            server = Server(name, port, log_path, cmd, env=server_env, cwd=source, probe=probe, feed=feed,
                            pages=pages)
            server.db_comm = "postgres" if base.startswith("pg") else None
            servers.append(server)
        for server in servers:
            start_server(server, 60)
            log(f"{server.name}: pid {server.proc.pid} listening on 127.0.0.1:{server.port}")
            if server.feed is not None:
                server.feed.server_pid = server.proc.pid

        epoch = int(time.time())
        if args.warmup:
            for server in servers:
                row = run_level(server, 1, args.warmup, argparse.Namespace(**{**vars(args), "duration_cap": 0}),
                                epoch, cap)
                if row.errors:
                    log(f"{server.name}: warm-up had {row.errors} errors: {row.error_kinds} {row.note}")
        for server in servers:
            if server.feed is None:
                continue
            twin = next((s for s in servers if s.name == amifollow.split_name(server.name.rstrip("0123456789."))[0]),
                        None)
            log(f"{server.name}: the AMI stream alone, {args.ami_ramp:g}s of ramp and {args.ami_idle:g}s measured")
            phase = amifollow.idle_phase(
                server.feed, twin.proc.pid if twin else None, args.ami_ramp, args.ami_idle, tree_cpu_ticks,
                (lambda: comm_cpu_ticks("postgres")) if server.db_comm else (lambda: None), TICK, args.ami_rss_cap)
            idle.append(phase)
            log(f"{server.name}: {phase['cores']:.2f} cores for {phase['stream']['sent']} events; follower "
                f"{phase['follow']}")
        for concurrency in levels:
            level_rounds: dict[str, list[Row]] = {}
            for round_no in range(1, args.rounds + 1):
                # each round runs every server once, so that a drift of the machine hits them alike
                for server in servers:
                    if server.failed:
                        continue
                    time.sleep(args.settle)
                    busy_before = wait_for_quiet(args.quiet_wait) if args.quiet_wait else None
                    sessions = 1000 if args.quick and concurrency >= 1000 else args.sessions
                    profile_to = None
                    if args.profile and amifollow.split_name(server.name.rstrip("0123456789."))[0] in OURS:
                        profile_to = tmp / f"profile-{server.name}-c{concurrency}-r{round_no}.txt"
                        profiles.append((server.name, concurrency, profile_to))
                    if server.feed is not None:
                        server.feed.go()
                        fed_from = time.monotonic()
                    browsed = ""
                    if server.pages is not None:
                        server.pages.sign_in()
                        server.pages.start()
                    try:
                        row = run_level(server, concurrency, sessions, args, epoch, cap, profile_to)
                    finally:
                        if server.feed is not None:
                            row_stream = server.feed.pause(args.ami_rss_cap)["interval"]
                        if server.pages is not None:
                            browsed = server.pages.stop()
                    if browsed:
                        row.note = (row.note + "; " if row.note else "") + browsed
                    if server.feed is not None:
                        row.stream = row_stream
                        row.follow = amifollow.followprobe.summarize(str(server.feed.probe), fed_from,
                                                                     time.monotonic(), server.feed.frozen_spans)
                        if server.feed.halted:
                            row.note = (row.note + "; " if row.note else "") + server.feed.halted
                    row.busy_before, row.round_no = busy_before, round_no
                    if busy_before is not None and busy_before >= 0.3:
                        quiet_notes.append(busy_before)
                    rounds.append(row)
                    level_rounds.setdefault(server.name, []).append(row)
                    follow = ""
                    if row.follow:
                        follow = (f" follower lag max {row.follow['lag_max_ms']:.0f} ms pending max "
                                  f"{row.follow['pending_max']} rss {row.follow['rss_mb']:.0f} MB")
                    log(f"{server.name:13} c={concurrency:<5} round {round_no}: {row.sessions} sessions "
                        f"{row.rate:.0f}/s p50 {row.p50:.1f} p99 {row.p99:.1f} p99.9 {row.p999:.1f} max "
                        f"{row.max:.1f} ms cpu/sess {row.cpu_ms:.2f} ms load {row.load_start:.1f} errors "
                        f"{row.errors}{follow} {row.note}")
            cells.extend(combine(level_rounds[s.name]) for s in servers if s.name in level_rounds)
            if concurrency == 1:
                floor = commit_floor(pg_url, tmp / "commit-probe.sqlite3")
                for line in floor:
                    log(line)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything")
    except Exception as exc:
        status = 1
        log(f"failed: {exc}")
    finally:
        for feed in feeds:
            feed.thaw()  # a frozen server would not stop on SIGTERM
        stop_all()
        for db in [pg, pg_ami] + extra_dbs:
            if db is None:
                continue
            try:
                db.drop()
            except Exception as exc:
                log(f"could not drop the temp database {db.name}: {exc}")
                status = 1
        if receiver is not None:
            receiver[0].shutdown()
            log(f"webhook receiver: {receiver[2]['count']} requests received")

    if rounds and not cells:  # interrupted inside a level: show what was measured
        by_cell: dict[tuple[str, int], list[Row]] = {}
        for r in rounds:
            by_cell.setdefault((r.server, r.concurrency), []).append(r)
        cells = [combine(v) for v in by_cell.values()]
    if cells:
        print(f"# {started_at:%Y-%m-%d %H:%M %Z}: {machine_note()}")
        print(f"# {git_note(sha)}; levels {levels}; up to {args.sessions} sessions per level and round "
              f"(duration cap {args.duration_cap:g}s), {args.rounds} round(s), each cell the median of its rounds; "
              f"loadgen procs {args.procs}, reply delay {args.delay:g}s, warm-up {args.warmup}")
        if args.quiet_wait:
            busy = (f"; in the second before them, median {statistics.median(quiet_notes):.1f} and at least "
                    f"{min(quiet_notes):.1f} of the {os.cpu_count()} cores busy" if quiet_notes else "")
            print(f"# quiet wait: {len(quiet_notes)} of {len(rounds)} runs started without an idle second "
                  f"(under 0.3 of a core) within {args.quiet_wait:g}s{busy}")
        else:
            print("# quiet wait: off (the runs did not wait for an idle machine)")
        if workers_note:
            print(f"# {workers_note}")
        print(f"# load average (1, 5, 15 min) at the start {' '.join(f'{x:.2f}' for x in load_at_start)}, at the "
              f"end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; ended {dt.datetime.now().astimezone():%H:%M %Z}")
        print(format_table(cells))
        for r in cells:
            if r.note:
                print(f"note: {r.server} c={r.concurrency}: {r.note}")
        print()
        print(format_rounds(rounds))
        if args.probe:
            print()
            print(format_stalls(rounds, {s.name: s.probe for s in servers if s.probe is not None}))
        breakdown = format_breakdown(cells)
        if breakdown:
            print()
            print(breakdown)
        if feeds:
            print()
            print(amifollow.format_header(feeds, args.ami_transfers))
            if idle:
                print()
                print(amifollow.format_idle(idle))
            print()
            print(amifollow.format_ratios(cells, args.ami_transfers))
            print()
            print(amifollow.format_rounds(rounds))
        if floor:
            print("\nOne durable commit from Python alone, right after the c=1 rounds (the floor under a "
                  "c=1 session's database step):")
            for line in floor:
                print(f"    {line}")
    total_errors = sum(r.errors for r in cells)
    if total_errors:
        status = 1
        print("\nerrors seen by the load generator (kind: count, then examples):")
        for r in cells:
            for kind, count in r.error_kinds.items():
                print(f"  {r.server} c={r.concurrency}: {kind}: {count}")
                for sample in r.error_samples.get(kind, [])[:3]:
                    print(f"      {sample}")
    for server in servers:
        excerpt = log_excerpt(server.log_path)
        if excerpt:
            print(f"\n{server.name} server log ({server.log_path.name}), warnings and errors grouped by shape:")
            print("\n".join(excerpt))
    for name, concurrency, path in profiles:
        print(f"\nprofile of {name} at concurrency {concurrency} ({path.name}, py-spy --gil):")
        print("\n".join(profile_summary(path)))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"cells": [r.__dict__ for r in cells],
                                                   "rounds": [r.__dict__ for r in rounds], "ami_idle": idle},
                                                  indent=1))
    if args.keep:
        print(f"\nserver logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
