#!/usr/bin/env python3
"""Runs ``recording-agi`` with probes that say what stops its event loop, and why.

    python bench/stallprobe.py --out FILE [--beat MS] [--over MS] -- --database-url URL serve --listen ...
    python bench/stallprobe.py --report FILE [--over MS] [--sessions LOADGEN_JSON ...]

Everything after ``--`` goes to ``recording-agi`` as it is (one process: under ``serve
--workers`` only the supervisor would be probed). The probes, all in the server's process, each
write one JSON line per event to FILE, flushed at once (a SIGKILL loses nothing written). Times
are CLOCK_MONOTONIC, which on Linux is one clock for the whole host: the load generator's
session start times (``loadgen.py``'s ``slowest``) can be matched with them.

- ``beat``: a task on the event loop that sleeps ``--beat`` ms (default 2) in a loop. A wake-up
  more than ``--over`` ms (default 5) late is a stall of the loop; ``cpu_ms`` is the main
  thread's CPU time over it (near the stall's length: code of ours ran; near 0: the thread
  waited, for a CPU, the GIL or a system call).
- ``threads``: a thread that looks at the beat every millisecond. When the loop is late, it
  reads /proc/self/task/*/schedstat at once and again when the loop runs again: each thread's
  time on a CPU and time waiting for one (runnable, but the machine's CPUs were taken) over the
  stall. The main thread waiting for a CPU is the machine being busy; another thread on a CPU
  while the main thread does not run is that thread holding the GIL.
- ``sample``: the same thread takes the main thread's Python stack while the loop is late (at
  most 20 a stall): the code that holds the loop, when it is Python code.
- ``gc``: each garbage collection of generation 2 (and any over 2 ms), with its duration.
- ``task``: the service's periodic work (the directory refresh and its snapshot, the sweeper,
  the after-call hashing and purge, the metrics and health publishing, a scrape), start and end.
- ``started``/``census``: a second after the start, and on SIGUSR2, the objects the collector
  tracks by type, what a full collection then takes, and the collections so far by generation.

``bench/run.py --probe`` runs our servers under this and prints :func:`summarize` per round.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter

_out = None
_lock = threading.Lock()
GC_TOTALS = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}  # generation: [count, seconds, longest]


def emit(kind: str, **fields) -> None:
    line = json.dumps({"kind": kind, **fields}, default=str)
    with _lock:
        _out.write(line + "\n")
        _out.flush()


# -- in the server's process ----------------------------------------------------------------------

def sched_snapshot() -> dict[int, tuple[int, int]]:
    """Each thread of this process: (ns on a CPU, ns runnable but waiting for one)."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ran, waited, _ = f.read().split()
            found[int(tid)] = (int(ran), int(waited))
        except (OSError, ValueError):
            pass
    return found


def sched_delta(before: dict, after: dict) -> dict[str, list[float]]:
    """[ms on a CPU, ms waiting for one] of each thread (by its Python name) that did either."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid, (ran, waited) in after.items():
        ran0, waited0 = before.get(tid, (ran, waited))
        delta = [round((ran - ran0) / 1e6, 2), round((waited - waited0) / 1e6, 2)]
        if delta[0] >= 0.5 or delta[1] >= 0.5:
            out[names.get(tid, str(tid))] = delta
    return out


class Beat:
    def __init__(self, period: float, over: float):
        self.period, self.over = period, over
        self.last = time.monotonic()  # when the loop last woke
        self.main = threading.main_thread().ident

    async def run(self) -> None:
        cpu = time.thread_time()
        while True:
            before = time.monotonic()
            self.last = before
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.last = now
            late = now - before - self.period
            cpu_now = time.thread_time()
            if late > self.over:
                emit("beat", start=before + self.period, end=now, late_ms=round(late * 1000, 2),
                     cpu_ms=round((cpu_now - cpu) * 1000, 2))
            cpu = cpu_now

    def watch(self) -> None:
        stall, samples, before = None, 0, None
        while True:
            time.sleep(0.001)
            now = time.monotonic()
            if now - self.last - self.period <= self.over:
                if before is not None:
                    emit("threads", start=stall, since=before[0], at=now,
                         threads=sched_delta(before[1], sched_snapshot()))
                stall, samples, before = None, 0, None
                continue
            if stall is None:
                stall, before = self.last, (now, sched_snapshot())
            if samples < 20:
                samples += 1
                frame = sys._current_frames().get(self.main)
                stack = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                         for f in traceback.extract_stack(frame)[-12:]] if frame else []
                emit("sample", at=now, stack=stack)


def gc_probe() -> None:
    started = {}

    def callback(phase, info):
        if phase == "start":
            started["t"] = time.monotonic()
            return
        t0 = started.pop("t", None)
        if t0 is None:
            return
        took = time.monotonic() - t0
        total = GC_TOTALS[info["generation"]]
        total[0] += 1
        total[1] += took
        total[2] = max(total[2], took)
        if info["generation"] == 2 or took > 0.002:
            emit("gc", start=t0, end=t0 + took, gen=info["generation"], ms=round(took * 1000, 2),
                 collected=info["collected"])

    gc.callbacks.append(callback)


def census(label: str) -> None:
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    t0 = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - t0
    emit("census", label=label, at=time.monotonic(), tracked=sum(counts.values()), frozen=gc.get_freeze_count(),
         thresholds=gc.get_threshold(), full_collection_ms=round(took * 1000, 2), top=counts.most_common(8),
         collections={gen: f"{n}, {1000 * t:.1f} ms in all, longest {1000 * m:.2f} ms"
                      for gen, (n, t, m) in GC_TOTALS.items()})


def timed(owner, name: str, label: str) -> None:
    """Wraps ``owner.name`` (a function or a coroutine function) to emit a ``task`` event; a
    name this version of the service does not have is left alone."""
    original = getattr(owner, name, None)
    if original is None:
        return

    def done(t0: float) -> None:
        emit("task", name=label, start=t0, end=time.monotonic(), thread=threading.current_thread().name)

    if asyncio.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                done(t0)
    else:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                done(t0)
    setattr(owner, name, wrapper)


def install(period: float, over: float) -> None:
    import signal

    from recording import app
    from recording.doors import sweeper
    from recording.ops import aftercall, health, metrics
    from recording.storage import directory, snapshot

    for owner, name, label in (
        (directory.Directory, "load", "directory.load"), (snapshot, "save", "snapshot.save"),
        (sweeper.Sweeper, "sweep", "sweeper.sweep"), (aftercall.AfterCall, "_hash", "aftercall.hash"),
        (aftercall.AfterCall, "_daily_purge", "aftercall.purge"), (metrics.ServiceMetrics, "refresh", "metrics.refresh"),
        (metrics.ServiceMetrics, "exposition", "metrics.exposition"), (health.Board, "publish", "health.publish"),
        (health.Board, "combine", "health.combine"),
    ):
        timed(owner, name, label)
    beat = Beat(period, over)
    start = app.Application.start

    async def start_and_probe(self):
        await start(self)
        loop = asyncio.get_running_loop()
        self._stallprobe = loop.create_task(beat.run(), name="stallprobe-beat")
        threading.Thread(target=beat.watch, name="stallprobe-watch", daemon=True).start()
        # a second later: after what the service does once started (serve freezes its heap)
        loop.call_later(1.0, started)

    def started():
        gc_probe()
        census("started")
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, census, "SIGUSR2")

    app.Application.start = start_and_probe


# -- reading a probe file -------------------------------------------------------------------------

def load(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def cause(stall: dict, events: list[dict]) -> str:
    """What made one ``beat`` stall, from what overlapped it."""
    late = stall["late_ms"]
    for e in events:
        if e["kind"] == "gc" and e["start"] <= stall["end"] and e["end"] >= stall["start"] - 0.001 \
                and e["ms"] >= late / 2:
            return f"garbage collection, generation {e['gen']}"
    threads = next((e for e in events if e["kind"] == "threads" and e["start"] is not None
                    and stall["start"] - 0.003 <= e["start"] <= stall["end"] and e["at"] >= stall["start"]), None)
    if threads is not None:
        window = 1000 * (threads["at"] - threads["since"])
        main = threads["threads"].get("MainThread", [0.0, 0.0])
        others = {name: ms[0] for name, ms in threads["threads"].items()
                  if name not in ("MainThread", "stallprobe-watch")}
        if main[1] >= window / 2:
            return "waiting for a CPU (the machine was busy)"
        if others and max(others.values()) >= window / 2:
            return f"thread {max(others, key=others.get)} ran (the GIL)"
    if stall["cpu_ms"] >= late / 2:
        return "code on the event loop"
    return "the loop's thread waited (a system call, the GIL, or a CPU)"


def summarize(path: str, start: float, end: float, over_ms: float = 10.0) -> dict:
    """The stalls of ``over_ms`` or more between ``start`` and ``end`` (CLOCK_MONOTONIC):
    ``count``, ``longest_ms``, ``by_cause`` {cause: [count, ms in all, longest]}, ``full_gc``
    [count, longest ms], ``tasks`` {periodic task: [count, longest ms]}."""
    events = [e for e in load(path) if start <= e.get("end", e.get("at", 0)) and e.get("start", e.get("at", 0)) <= end]
    stalls = [e for e in events if e["kind"] == "beat" and e["late_ms"] >= over_ms]
    by_cause: dict[str, list] = {}
    for stall in stalls:
        entry = by_cause.setdefault(cause(stall, events), [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] = round(entry[1] + stall["late_ms"], 1)
        entry[2] = max(entry[2], stall["late_ms"])
    full = [e["ms"] for e in events if e["kind"] == "gc" and e["gen"] == 2]
    tasks: dict[str, list] = {}
    for e in events:
        if e["kind"] == "task":
            entry = tasks.setdefault(e["name"], [0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], round(1000 * (e["end"] - e["start"]), 1))
    return {"count": len(stalls), "longest_ms": max((s["late_ms"] for s in stalls), default=0.0),
            "by_cause": by_cause, "full_gc": [len(full), max(full, default=0.0)], "tasks": tasks}


def overlapping(events: list[dict], start: float, end: float, limit: int | None = None) -> list[str]:
    """What overlapped [start, end]: collections, loop stalls (with their cause) and periodic
    work, the longest first; past ``limit`` items, one more saying how many were left out."""
    found = []
    for e in events:
        if e["kind"] in ("gc", "task", "beat") and e["start"] <= end and e["end"] >= start - 0.001:
            if e["kind"] == "gc":
                found.append((e["ms"], f"gc generation {e['gen']} {e['ms']} ms"))
            elif e["kind"] == "beat":
                found.append((e["late_ms"], f"loop stall {e['late_ms']} ms: {cause(e, events)}"))
            else:
                ms = 1000 * (e["end"] - e["start"])
                found.append((ms, f"{e['name']} {ms:.1f} ms on {e['thread']}"))
    found.sort(key=lambda item: -item[0])
    shown = [text for _, text in found[:limit]]
    if limit is not None and len(found) > limit:
        shown.append(f"{len(found) - limit} more, shorter")
    return shown


def report(path: str, over_ms: float, sessions: list[str]) -> None:
    events = load(path)
    for name in sessions:
        for line in open(name):
            if line.startswith("{"):
                run = json.loads(line)
                print(f"run: p50 {run['p50_ms']:.2f} p99 {run['p99_ms']:.2f} p99.9 {run['p999_ms']:.2f} "
                      f"max {run['max_ms']:.2f} ms, 10 ms or more: {run['tail']}")
                for ms, at, seq in run["slowest"]:
                    print(f"  session {seq} at {at:.3f}: {ms} ms; " + "; ".join(overlapping(events, at, at + ms / 1000)))
    for e in events:
        if e["kind"] == "census":
            print(f"census ({e['label']}) at {e['at']:.1f}: {e['tracked']} objects tracked, {e['frozen']} frozen, "
                  f"thresholds {e['thresholds']}, a full collection took {e['full_collection_ms']} ms; "
                  f"collections so far by generation: {e['collections']}; commonest: {e['top']}")
    if events:
        summary = summarize(path, 0.0, float("inf"), over_ms)
        print(f"stalls of {over_ms:g} ms or more: {summary['count']}, the longest {summary['longest_ms']} ms; by cause "
              f"[count, ms in all, longest]: {summary['by_cause']}; full collections [count, longest ms]: "
              f"{summary['full_gc']}; periodic work [count, longest ms]: {summary['tasks']}")
    samples = [e for e in events if e["kind"] == "sample"]
    for stall in (e for e in events if e["kind"] == "beat" and e["late_ms"] >= over_ms):
        print(f"  {stall['end']:.3f}: late {stall['late_ms']} ms, main thread cpu {stall['cpu_ms']} ms: "
              f"{cause(stall, events)}")
        for what in overlapping(events, stall["start"], stall["end"]):
            if not what.startswith("loop stall"):
                print(f"      overlaps {what}")
        seen = set()
        for s in samples:
            if stall["start"] - 0.001 <= s["at"] <= stall["end"] + 0.002 and tuple(s["stack"][-4:]) not in seen:
                seen.add(tuple(s["stack"][-4:]))
                print(f"      stack at +{1000 * (s['at'] - stall['start']):.1f} ms: " + " < ".join(reversed(s["stack"][-6:])))


def split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """A probe's own arguments, and the command it runs (what follows ``--``; empty if none)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def main() -> int:
    argv, rest = split_at_dashes(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="the probe file to write (append)")
    p.add_argument("--beat", type=float, default=2.0, help="ms the beat sleeps (default 2)")
    p.add_argument("--over", type=float, default=5.0, help="ms late that is a stall (default 5; --report: 10)")
    p.add_argument("--report", metavar="FILE", help="read a probe file and print every stall and its cause")
    p.add_argument("--sessions", nargs="*", default=[], help="loadgen.py --json outputs to match with --report")
    args = p.parse_args(argv)
    if args.report:
        report(args.report, args.over if "--over" in argv else 10.0, args.sessions)
        return 0
    if not args.out or not rest:
        p.error("--out FILE -- <recording-agi arguments>, or --report FILE")
    global _out
    _out = open(args.out, "a", buffering=1)
    install(args.beat / 1000, args.over / 1000)
    from recording.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main())
