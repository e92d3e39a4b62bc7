"""What bench/run.py measured and how it prints it: one :class:`Row` per server, concurrency and
round (and one per cell, the median of its rounds), the table of cells, the table of every
round (so that a stall in one round cannot hide in a median), the tail's histogram, the c=1
breakdown, the server logs' warnings and the profiles' top functions."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# the peers, whose best figure at each concurrency the ratios are to (bench/peers/)
PEER_NAMES = ("pyst2", "panoramisk", "pystrix")
# the tail histogram's buckets (loadgen.py's TAIL_BUCKETS, in ms)
TAIL_NAMES = ("10-20", "20-50", "50-100", "100-200", "200-500", "500-1000", "1000+")


@dataclass
class Row:
    server: str
    concurrency: int
    sessions: int = 0
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    rate: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    p999: float = float("nan")
    max: float = float("nan")
    cpu_ms: float = float("nan")
    rss_mb: float = float("nan")
    lg_cpu_s: float = float("nan")
    other_cpu_s: float = float("nan")
    db_cpu_ms: float | None = None
    error_kinds: dict = field(default_factory=dict)
    error_samples: dict = field(default_factory=dict)
    note: str = ""
    rounds: int = 1
    breakdown: dict | None = None  # loadgen.py --breakdown (concurrency 1 only)
    busy_before: float | None = None  # busy cores in the second before the run (--quiet-wait)
    # sessions of 10 ms or more by bucket (TAIL_NAMES; a cell's: summed over its rounds)
    tail: dict = field(default_factory=dict)
    # the slowest sessions: [ms, start on CLOCK_MONOTONIC, seq] (loadgen.py), a cell's of all rounds
    slowest: list = field(default_factory=list)
    # the machine's load average (1 min) when the round started and ended
    load_start: float = float("nan")
    load_end: float = float("nan")
    round_no: int = 0
    # --probe: what stopped our server's event loop during the round (stalls.summarize)
    stalls: dict | None = None
    # a +ami server's round: the AMI stream's figures (bench/amistream.py) and its follower's
    # (bench/followprobe.py summarize)
    stream: dict | None = None
    follow: dict | None = None


def _median(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def combine(rounds: list[Row]) -> Row:
    """One cell of the table from the rounds of one server at one concurrency: the median of
    each figure (each on its own), errors and sessions summed, the peak RSS the highest, the
    error kinds and notes of every round."""
    cell = Row(rounds[0].server, rounds[0].concurrency, rounds=len(rounds))
    cell.sessions = sum(r.sessions for r in rounds)
    cell.ok = sum(r.ok for r in rounds)
    cell.errors = sum(r.errors for r in rounds)
    for name in ("wall_s", "rate", "p50", "p99", "p999", "max", "cpu_ms", "lg_cpu_s", "other_cpu_s", "load_start",
                 "load_end"):
        setattr(cell, name, _median(getattr(r, name) for r in rounds))
    cell.rss_mb = max((r.rss_mb for r in rounds if r.rss_mb == r.rss_mb), default=float("nan"))
    if any(r.db_cpu_ms is not None for r in rounds):
        cell.db_cpu_ms = _median(r.db_cpu_ms for r in rounds)
    for r in rounds:
        for kind, count in r.error_kinds.items():
            cell.error_kinds[kind] = cell.error_kinds.get(kind, 0) + count
            cell.error_samples.setdefault(kind, []).extend(r.error_samples.get(kind, []))
    cell.note = "; ".join(dict.fromkeys(r.note for r in rounds if r.note))
    busy = [r.busy_before for r in rounds if r.busy_before is not None and r.busy_before >= 0.3]
    if busy:
        cell.note = (cell.note + "; " if cell.note else "") + (
            f"machine not idle before {len(busy)} of {len(rounds)} rounds (up to {max(busy):.1f} cores busy)")
    cell.breakdown = combine_breakdowns([r.breakdown for r in rounds if r.breakdown])
    cell.tail = {name: sum(r.tail.get(name, 0) for r in rounds) for name in TAIL_NAMES}
    cell.slowest = sorted((s for r in rounds for s in r.slowest), reverse=True)[:10]
    return cell


def combine_breakdowns(parts: list[dict]) -> dict | None:
    """The rounds' breakdowns as one, over the rounds whose sessions had the most common number
    of commands: each step's median the median of the rounds' medians, its mean the mean over
    all their sessions (so the means still add up to the mean total)."""
    if not parts:
        return None
    shape = Counter(len(b["commands"]) for b in parts).most_common(1)[0][0]
    parts = [b for b in parts if len(b["commands"]) == shape]
    weight = sum(b["sessions"] for b in parts)

    def both(key: str, pick) -> dict:
        return {f"{key}_ms": _median(pick(b)[f"{key}_ms"] for b in parts),
                f"{key}_mean_ms": sum(pick(b)[f"{key}_mean_ms"] * b["sessions"] for b in parts) / weight}

    return {
        "rounds": len(parts), "sessions": weight,
        "other_shapes": {k: v for b in parts for k, v in b["other_shapes"].items()},
        **both("connect", lambda b: b), **both("close", lambda b: b), **both("total", lambda b: b),
        "commands": [{"label": parts[0]["commands"][i]["label"],
                      **both("think", lambda b: b["commands"][i]), **both("answer", lambda b: b["commands"][i])}
                     for i in range(shape)],
    }


# -- output --------------------------------------------------------------------------------------

COLUMNS = [
    # header, width
    ("server", 13), ("conc", 5), ("sessions", 8), ("wall s", 6), ("sess/s", 7), ("p50 ms", 8), ("p99 ms", 8),
    ("p99.9 ms", 8), ("max ms", 8), ("cpu/sess ms", 11), ("rss MB", 6), ("errors", 6), ("lg cpu s", 8),
    ("other cpu s", 11), ("db cpu/sess ms", 14), ("thr/peer", 8), ("p50/peer", 8), ("p99/peer", 8),
    ("max/peer", 8), ("cpu/peer", 8), ("thr/ref3", 8), ("cpu/ref3", 8),
]


def _f(value, digits=1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def best_peers(rows: list[Row]) -> dict[int, dict[str, float]]:
    """For each concurrency, the best of the peers' figures, each on its own: the highest sess/s,
    the lowest p50, p99, p99.9, max and CPU per session (peers with no ok session left out)."""
    best: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.server not in PEER_NAMES or not r.ok:
            continue
        b = best.setdefault(r.concurrency, {})
        for name, better in (("rate", max), ("p50", min), ("p99", min), ("p999", min), ("max", min),
                             ("cpu_ms", min)):
            value = getattr(r, name)
            if value == value:
                b[name] = better(b[name], value) if name in b else value
    return best


def format_table(rows: list[Row]) -> str:
    refs = {r.concurrency: r for r in rows if r.server == "ref3"}
    peers = best_peers(rows)
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(COLUMNS))]
    lines.append("  ".join("-" * w for _, w in COLUMNS))
    for r in rows:
        ref = refs.get(r.concurrency)
        peer = peers.get(r.concurrency, {})

        def ratio(a, b, digits=2):
            if not a or not b or a != a or b != b:
                return "-"
            return f"{a / b:.{digits}f}"

        cells = [
            r.server, str(r.concurrency), str(r.sessions), _f(r.wall_s, 1), _f(r.rate, 0), _f(r.p50), _f(r.p99),
            _f(r.p999), _f(r.max), _f(r.cpu_ms, 2), _f(r.rss_mb, 0), str(r.errors), _f(r.lg_cpu_s, 2),
            _f(r.other_cpu_s, 2), _f(r.db_cpu_ms, 2),
            ratio(r.rate, peer.get("rate")), ratio(r.p50, peer.get("p50")), ratio(r.p99, peer.get("p99")),
            ratio(r.max, peer.get("max")), ratio(r.cpu_ms, peer.get("cpu_ms")),
            ratio(r.rate, ref.rate) if ref and r is not ref else "-",
            ratio(r.cpu_ms, ref.cpu_ms) if ref and r is not ref else "-",
        ]
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    return "\n".join(lines)


ROUND_COLUMNS = [("server", 13), ("conc", 5), ("rnd", 3), ("load", 9), ("sessions", 8), ("sess/s", 7),
                 ("p50", 7), ("p99", 7), ("p99.9", 7), ("max", 7), ("cpu/sess", 8)] + [(n, 8) for n in TAIL_NAMES]


def format_rounds(rounds: list[Row]) -> str:
    """Every round on its own line, in the order they ran: the figures the cells take the median
    of, the machine's load average when the round started and ended, and the histogram of the
    sessions of 10 ms or more (so one slow round, or a few slow sessions in it, is seen)."""
    lines = ["Each round (ms; load = the machine's 1-minute load average at the round's start>end; the last "
             "columns count the sessions of 10 ms or more, by bucket of ms):",
             "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(ROUND_COLUMNS)),
             "  ".join("-" * w for _, w in ROUND_COLUMNS)]
    for r in rounds:
        cells = [r.server, str(r.concurrency), str(r.round_no), f"{_f(r.load_start)}>{_f(r.load_end)}",
                 str(r.sessions), _f(r.rate, 0), _f(r.p50, 2), _f(r.p99, 2), _f(r.p999, 2), _f(r.max, 2),
                 _f(r.cpu_ms, 2)] + [str(r.tail.get(n, 0)) for n in TAIL_NAMES]
        line = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, ROUND_COLUMNS)))
        lines.append(line + (f"  ({r.errors} errors)" if r.errors else ""))
    return "\n".join(lines)


def format_stalls(rounds: list[Row], probes: dict) -> str:
    """--probe: for each round of our servers, the stalls of their event loop (10 ms or more)
    by cause, the full garbage collections, the periodic work that ran, and the round's three
    slowest sessions with what overlapped them (bench/stallprobe.py)."""
    import stallprobe

    lines = ["What stopped our servers' event loop for 10 ms or more, round by round (bench/stallprobe.py; causes as "
             "[count, ms in all, longest ms]):"]
    for r in rounds:
        if r.stalls is None:
            continue
        s = r.stalls
        causes = "; ".join(f"{cause} {figures}" for cause, figures in s["by_cause"].items()) or "none"
        tasks = ", ".join(f"{name} x{n} (longest {ms} ms)" for name, (n, ms) in s["tasks"].items()) or "none"
        lines.append(f"{r.server} c={r.concurrency} round {r.round_no}: {s['count']} stalls, longest "
                     f"{s['longest_ms']} ms: {causes}; full collections {s['full_gc'][0]} (longest "
                     f"{s['full_gc'][1]} ms); periodic work: {tasks}")
        events = stallprobe.load(str(probes[r.server])) if r.server in probes else []
        for ms, at, seq in r.slowest[:3]:
            found = stallprobe.overlapping(events, at, at + ms / 1000, limit=3)
            lines.append(f"    slow session {seq}: {ms} ms; {'; '.join(found) or 'no stall or collection overlapped it'}")
    return "\n".join(lines)


def format_breakdown(rows: list[Row]) -> str:
    """The concurrency-1 sessions of each server, step by step: a summary line per server (the
    means, which add up), then each server's commands one by one (median and mean)."""
    cells = [r for r in rows if r.concurrency == 1 and r.breakdown]
    if not cells:
        return ""
    out = ["c=1 breakdown, ms, seen from the fake Asterisk: 'server' = from the last byte Asterisk wrote (the "
           "environment, or the reply before) to the server's next line read (both loopback crossings and all the "
           "server did); 'asterisk' = the fake Asterisk's own turn (command read to reply written).",
           "Means per session (they add up to the mean total; a busy machine delays a different step in each "
           "session, so the medians of the steps add up to less than the median total):",
           "",
           f"{'server':13}  {'cmds':>4}  {'connect':>7}  {'env->1st cmd':>12}  {'later cmds':>10}  "
           f"{'asterisk':>8}  {'->half-close':>12}  {'mean total':>10}  {'median total':>12}",
           f"{'-' * 13}  {'-' * 4}  {'-' * 7}  {'-' * 12}  {'-' * 10}  {'-' * 8}  {'-' * 12}  {'-' * 10}  {'-' * 12}"]
    for r in cells:
        b = r.breakdown
        cmds = b["commands"]
        first = cmds[0]["think_mean_ms"] if cmds else float("nan")
        later = sum(c["think_mean_ms"] for c in cmds[1:])
        answers = sum(c["answer_mean_ms"] for c in cmds)
        out.append(f"{r.server:13}  {len(cmds):>4}  {b['connect_mean_ms']:7.2f}  {first:12.2f}  {later:10.2f}  "
                   f"{answers:8.2f}  {b['close_mean_ms']:12.2f}  {b['total_mean_ms']:10.2f}  {b['total_ms']:12.2f}")
    for r in cells:
        b = r.breakdown
        shapes = (f"; sessions with another number of commands left out: {b['other_shapes']}"
                  if b["other_shapes"] else "")
        out.append("")
        out.append(f"{r.server}: {len(b['commands'])} commands, {b['sessions']} sessions over {b['rounds']} "
                   f"round(s){shapes}; median / mean")
        width = max([len(c["label"]) for c in b["commands"]] + [20]) + 4

        def pair(d: dict, key: str) -> str:
            return f"{d[key + '_ms']:6.2f} / {d[key + '_mean_ms']:6.2f}"

        out.append(f"    {'   connect':{width + 3}}  {pair(b, 'connect')}")
        for i, c in enumerate(b["commands"], 1):
            out.append(f"    {i:>2} {c['label']:{width}}  server {pair(c, 'think')}   asterisk {pair(c, 'answer')}")
        out.append(f"    {'   half-close':{width + 3}}  server {pair(b, 'close')}")
        out.append(f"    {'   total':{width + 3}}         {pair(b, 'total')}")
    return "\n".join(out)


_NOISE = re.compile(r"\b\d{10}\.\d+\b|\b[0-9a-f]{32}\b|\b0x[0-9a-f]+\b|\b\d+(\.\d+)?(ms|s)?\b|127\.0\.0\.1:\d+")


def log_excerpt(path: Path, limit: int = 8) -> list[str]:
    """The server log's WARNING/ERROR lines and tracebacks, grouped by their shape (numbers and
    ids blanked): a count and the first example of each."""
    groups: Counter[str] = Counter()
    first: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
            if line.startswith("Traceback"):
                body = [l for l in lines[i:i + 40] if l and not l.startswith(" ")]
                line = "Traceback ... " + (body[1] if len(body) > 1 else "")
            shape = _NOISE.sub("#", line.split(" ", 2)[-1])
            groups[shape] += 1
            first.setdefault(shape, line)
    return [f"{count:6d} x  {first[shape]}" for shape, count in groups.most_common(limit)]


def profile_summary(path: Path, limit: int = 15) -> list[str]:
    """Top functions of a py-spy raw profile: by self time, and by inclusive time for the
    frames of this project and the libraries it calls (stdlib plumbing left out)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        log = Path(str(path) + ".log")
        return [f"(no profile: {log.read_text(errors='replace').strip()[-300:] if log.exists() else ''})"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((?:/[^)]*?/(?:site-packages/|lib/python3\.\d+/|src/|main/))?", " (", f)
                  for f in stack.split(";")]
        frames = [f for f in frames if f.strip()] or ["(native)"]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples while holding the GIL; self:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(limit)]
    out.append("inclusive (project and library frames):")
    shown = [(f, c) for f, c in inclusive.most_common()
             if any(k in f for k in ("(recording/", "(agi/", "(sqlalchemy/", "(psycopg/", "(logging/"))]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in shown[:limit]]
    return out
