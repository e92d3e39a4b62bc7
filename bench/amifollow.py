"""bench/run.py's side of following calls (``--ami-transfers RATE``): the servers ``sqlite+ami``
and ``pg+ami`` are our server with ``RECORDING_AMI_URL`` set to an AMI stream of captured
transfers (bench/amistream.py, a process of its own per server) and run under
bench/followprobe.py, which says how far their call follower is behind the stream.

Each such server has its stream only while it is measured: the stream is paused, and the server
frozen (SIGSTOP to its process group), while the other servers run, and both go on together
before its next run (SIGCONT, then ``go``). From the server's side the stream and its load were
one continuous run: whatever the follower had not handled when it was frozen is still waiting
when it goes on, and no work of its own falls into another server's figures.

Before the rounds, :func:`idle_phase` measures what the events alone cost: the stream runs for
the ramp (the longest scenario, so the calls in flight reach their steady number), then for
``seconds`` with the server's CPU (and PostgreSQL's) measured, no FastAGI load.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
import followprobe  # noqa: E402  (bench/ is not a package)

BASES = ("sqlite", "pg")
SUFFIX = "+ami"


def split_name(name: str) -> tuple[str, bool]:
    """``sqlite+ami`` gives (``sqlite``, True); ``pg`` gives (``pg``, False)."""
    if name.endswith(SUFFIX):
        return name[: -len(SUFFIX)], True
    return name, False


@dataclass
class Feed:
    """One server's AMI stream: the producer process and how to drive it."""

    server: str  # the server's name in the tables (sqlite+ami100)
    proc: subprocess.Popen
    port: int
    secret: str
    probe: Path
    about: dict = field(default_factory=dict)
    server_pid: int | None = None
    frozen: bool = False
    halted: str | None = None  # why the stream no longer runs for this server (a cap reached)
    frozen_spans: list = field(default_factory=list)  # [from, to] of time.time(): the server frozen

    @property
    def url(self) -> str:
        return f"ami://bench:{self.secret}@127.0.0.1:{self.port}"

    def command(self, text: str, timeout: float = 15.0) -> dict:
        """Sends one control line and returns the producer's JSON answer."""
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        return read_line(self.proc, timeout)

    def freeze(self) -> None:
        if self.server_pid and not self.frozen:
            os.killpg(self.server_pid, signal.SIGSTOP)
            self.frozen = True
            self.frozen_spans.append([time.time(), None])

    def thaw(self) -> None:
        if self.server_pid and self.frozen:
            try:
                os.killpg(self.server_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.frozen = False
            self.frozen_spans[-1][1] = time.time()

    def go(self) -> None:
        """The server goes on, then its stream (a frozen server would not read it)."""
        self.thaw()
        if not self.halted:
            self.command("go")

    def pause(self, rss_cap_mb: float) -> dict:
        """Pauses the stream, then freezes the server; returns the stream's figures since the
        last go. Past ``rss_cap_mb`` of server memory the stream stays paused from now on."""
        figures = self.command("pause")
        last = next((x for x in reversed(followprobe.load(str(self.probe))) if "rss_mb" in x), None)
        if last and last["rss_mb"] > rss_cap_mb and not self.halted:
            self.halted = (f"stream stopped for the rest of the run: the server held {last['rss_mb']:.0f} MB "
                           f"(--ami-rss-cap {rss_cap_mb:g})")
        self.freeze()
        return figures


def read_line(proc: subprocess.Popen, timeout: float, log: Path | None = None) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        said = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
        raise RuntimeError(f"the AMI stream (pid {proc.pid}) did not answer within {timeout:g}s "
                           f"(exit status {proc.poll()}){': ' + said if said else ''}")
    return json.loads(line)


def start_feed(spawn, server: str, rate: float, tmp: Path) -> Feed:
    """Starts the producer on a port the kernel picks (held for the whole run; ``spawn`` is
    run.py's, so it is stopped with the rest)."""
    secret = secrets.token_urlsafe(12)
    log_path = tmp / f"amistream-{server}.log"
    with open(log_path, "ab") as log:
        proc = spawn([sys.executable, str(HERE / "amistream.py"), "--listen", "127.0.0.1:0", "--rate",
                      f"{rate:g}", "--username", "bench", "--secret", secret],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    first = read_line(proc, 60, log_path)
    return Feed(server, proc, first["listening"], secret, tmp / f"follow-{server}.jsonl", first["scenarios"])


def server_env(feed: Feed) -> dict:
    """What a ``+ami`` server gets beside the plain one's environment. NOTE: the sweeper would
    list the stream's channels, find none of the load's (the load never hangs up, and its
    channels are not the stream's) and close every leg of the run as lost; it runs once at the
    start (no leg yet) and then hourly."""
    return {"RECORDING_AMI_URL": feed.url, "RECORDING_SWEEP_INTERVAL": "3600"}


def probe_command(cmd: list[str], feed: Feed) -> list[str]:
    """``cmd`` (``recording-agi ...``) run under bench/followprobe.py."""
    return [sys.executable, str(HERE / "followprobe.py"), "--out", str(feed.probe), "--", *cmd[1:]]


# -- the idle phase -------------------------------------------------------------------------------

def idle_phase(feed: Feed, twin_pid: int | None, ramp: float, seconds: float, cpu_ticks, db_ticks, tick: int,
               rss_cap_mb: float) -> dict:
    """The stream alone: ``ramp`` seconds to reach its steady state, then ``seconds`` measured:
    the server's CPU (``cpu_ticks(pid)``), PostgreSQL's (``db_ticks()``, None for SQLite), the
    stream's own figures and the follower's (followprobe.summarize). ``twin_pid``: the same
    server without AMI, measured idle over the same seconds before, for comparison."""
    out: dict = {"server": feed.server, "ramp_s": ramp, "seconds": seconds, "load_start": os.getloadavg()[0]}
    if twin_pid:
        c0 = cpu_ticks(twin_pid)
        time.sleep(seconds)
        out["twin_cores"] = (cpu_ticks(twin_pid) - c0) / tick / seconds
    feed.go()
    time.sleep(ramp)
    feed.command("stats")
    c0, d0, t0 = cpu_ticks(feed.server_pid), db_ticks(), time.monotonic()
    time.sleep(seconds)
    c1, d1, t1 = cpu_ticks(feed.server_pid), db_ticks(), time.monotonic()
    figures = feed.pause(rss_cap_mb)
    span = t1 - t0
    out.update(cores=(c1 - c0) / tick / span, stream=figures["interval"], follow=followprobe.summarize(
        str(feed.probe), t0, t1, feed.frozen_spans), load_end=os.getloadavg()[0])
    if d0 is not None:
        out["db_cores"] = (d1 - d0) / tick / span
    sent = figures["interval"]["sent"]
    out["us_per_event"] = 1e6 * (c1 - c0) / tick / sent if sent else None
    return out


# -- what is printed ------------------------------------------------------------------------------

def _f(value, digits=1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def format_header(feeds: list[Feed], rate: float) -> str:
    if not feeds:
        return ""
    about = feeds[0].about
    events = statistics.mean(a["events"] for a in about.values())
    size = sum(a["bytes"] for a in about.values()) / sum(a["events"] for a in about.values())
    seconds = statistics.mean(a["seconds"] for a in about.values())
    return (f"Following calls: an AMI stream of {rate:g} transfers a second (bench/amistream.py: captures "
            f"{', '.join(about)} in turn, each copy's ids rewritten; {events:.0f} events and {seconds:.1f} s a call "
            f"on average, {size:.0f} bytes an event: {rate * events:.0f} events and "
            f"{rate * events * size / 1e6:.1f} MB a second, about {rate * seconds:.0f} calls in flight), beside "
            f"the FastAGI load of the +ami servers only, each frozen while the others run. None of the streamed "
            f"calls is recorded.")


def format_idle(phases: list[dict]) -> str:
    lines = ["The stream alone (no FastAGI load), after a ramp to its steady state: the server's CPU in cores, per "
             "event, PostgreSQL's CPU, the events the stream wrote a second (and dropped: the server over 1 MiB "
             "behind the kernel's buffers), how far behind the follower was (ms from an event's write to its "
             "handling, over the samples), events it handled a second, part changes a second (each a "
             "Store.take_over transaction) and their mean wait / time in the database, the loop thread's share of "
             "a CPU and of waiting for one, memory:"]
    columns = [("server", 13), ("load", 9), ("cores", 5), ("idle twin", 9), ("us/event", 8), ("db cores", 8),
               ("sent/s", 7), ("dropped", 7), ("lag p50", 8), ("lag p99", 8), ("lag max", 8), ("pending", 8),
               ("handled/s", 9), ("changes/s", 9), ("change ms", 9), ("db ms", 6), ("loop cpu", 8),
               ("loop wait", 9), ("calls", 6), ("rss MB", 6)]
    lines.append("  ".join(name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(columns)))
    lines.append("  ".join("-" * width for _, width in columns))
    for p in phases:
        s, f = p["stream"], p.get("follow") or {}
        span = p["seconds"]
        lines.append(
            f"{p['server']:13}  {_f(p['load_start']) + '>' + _f(p['load_end']):>9}  {_f(p['cores'], 2):>5}  "
            f"{_f(p.get('twin_cores'), 3):>9}  {_f(p['us_per_event']):>8}  {_f(p.get('db_cores'), 2):>8}  "
            f"{s['sent'] / span:7.0f}  {s['dropped']:7d}  {_f(f.get('lag_p50_ms'), 0):>8}  "
            f"{_f(f.get('lag_p99_ms'), 0):>8}  {_f(f.get('lag_max_ms'), 0):>8}  {f.get('pending_max', '-'):>8}  "
            f"{_f(f.get('handled', 0) / span, 0):>9}  {_f(f.get('changes', 0) / span, 0):>9}  "
            f"{_f(f.get('change_ms_mean'), 2):>9}  {_f(f.get('db_ms_mean'), 2):>6}  {_f(f.get('loop_cpu'), 2):>8}  "
            f"{_f(f.get('loop_waited'), 2):>9}  {f.get('calls', '-'):>6}  {_f(f.get('rss_mb'), 0):>6}")
    return "\n".join(lines)


def format_ratios(cells: list, rate: float) -> str:
    """Each ``+ami`` cell over its plain twin's at the same concurrency, figure by figure (the
    medians of the rounds): sess/s (below 1: fewer with the stream), p50, p99, max, CPU per
    session (above 1: more)."""
    by = {(r.server, r.concurrency): r for r in cells}
    lines = [f"With the stream over without it (the +ami server's cell over its plain twin's, same concurrency, "
             f"same run; medians of the rounds). cpu/sess includes the CPU spent on the events during the round:",
             f"{'server':13}  {'conc':>5}  {'thr':>6}  {'p50':>6}  {'p99':>6}  {'max':>6}  {'cpu/sess':>8}",
             f"{'-' * 13}  {'-' * 5}  {'-' * 6}  {'-' * 6}  {'-' * 6}  {'-' * 6}  {'-' * 8}"]
    for r in cells:
        base, streamed = split_name(r.server.removesuffix(f"{rate:g}"))
        twin = by.get((base, r.concurrency))
        if not streamed or twin is None:
            continue

        def ratio(a, b):
            return f"{a / b:.2f}" if a and b and a == a and b == b else "-"

        lines.append(f"{r.server:13}  {r.concurrency:5d}  {ratio(r.rate, twin.rate):>6}  {ratio(r.p50, twin.p50):>6}  "
                     f"{ratio(r.p99, twin.p99):>6}  {ratio(r.max, twin.max):>6}  {ratio(r.cpu_ms, twin.cpu_ms):>8}")
    return "\n".join(lines)


def format_rounds(rounds: list) -> str:
    lines = ["Each round of the +ami servers: the stream (events written, dropped, the latest batch in ms, kept = "
             "nothing dropped and no batch 100 ms late, the producer's own CPU) and the follower over the round "
             "(lag ms p50/p99/max, most events pending, events handled, part changes and their mean ms, calls "
             "tracked at the end, full collections and the longest, the loop thread's CPU share and wait, memory):"]
    for r in rounds:
        s, f = getattr(r, "stream", None), getattr(r, "follow", None)
        if s is None:
            continue
        text = (f"{r.server} c={r.concurrency} round {r.round_no}: stream {s['sent']} sent, {s['dropped']} dropped, "
                f"late max {s['late_max_ms']:.0f} ms, kept {'yes' if s['kept'] else 'NO'}, cpu {s['cpu_s']:.2f} s")
        if f:
            text += (f"; follower lag {_f(f['lag_p50_ms'], 0)}/{_f(f['lag_p99_ms'], 0)}/{_f(f['lag_max_ms'], 0)} ms, "
                     f"pending max {f['pending_max']}, handled {f['handled']}, changes {f['changes']} "
                     f"({_f(f['change_ms_mean'], 1)} ms, db {_f(f['db_ms_mean'], 2)} ms), calls {f['calls']}, "
                     f"gc2 {f['gc2']} ({_f(f['gc2_ms_max'], 0)} ms), loop cpu {_f(f['loop_cpu'], 2)} wait "
                     f"{_f(f['loop_waited'], 2)}, rss {_f(f['rss_mb'], 0)} MB")
        lines.append(text)
    return "\n".join(lines)
