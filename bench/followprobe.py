#!/usr/bin/env python3
"""Runs ``recording-agi`` with a probe that says how far its call follower is behind the AMI
stream, without changing the service.

    python bench/followprobe.py --out FILE [--every S] -- --database-url URL serve --listen ...

Everything after ``--`` goes to ``recording-agi`` as it is. Once the service's follower
(recording/doors/follower.py) starts, a thread of the probe looks at it every ``--every``
seconds (default 0.05) and writes one JSON line to FILE:

- ``lag_ms``: now minus the ``Timestamp`` (bench/amistream.py writes the time it wrote the
  event into every event) of the oldest event not handled yet: the first queued in the
  follower, else the first in the AMI reader's buffer, else the first the kernel holds unread
  on the AMI socket (read with MSG_PEEK, so nothing is taken from the service); 0 when every
  event written has been handled but the one being handled. Both processes read the same
  host clock (``time.time()``).
- ``pending``: the follower's ``pending`` (events queued, plus the one being handled);
  ``unread``: bytes of the AMI stream not parsed yet (the reader's buffer and the socket's
  receive queue, FIONREAD).
- ``handled``: events the follower has handled; ``calls`` and ``channels``: what its tracker
  holds; ``recorded``: channels it knows to have a recording.
- ``changes``, ``taken``, ``change_s``, ``change_ms_max``: the part changes handed to
  ``Following.part_changed`` (each one asks the database, Store.take_over, whether the call is
  recorded), how many of them this process recorded, their time in all and the longest since
  the last line; ``db_s``: the time in all of Store.take_over itself, in its worker thread
  (the rest of ``change_s`` is waiting for the thread and for the event loop to come back).
- ``gc2``, ``gc2_ms_max``: full garbage collections so far and the longest since the last line;
  ``rss_mb``: the process's resident memory.
- ``ran_s``, ``waited_s``: the event loop's thread's time on a CPU, and runnable but waiting for
  one (/proc/self/task/TID/schedstat), so far: a thread that waits for a CPU is a busy machine,
  not slow code.

``bench/run.py`` runs its ``+ami`` servers under this and prints :func:`summarize` per round.
The probe costs a wake-up every ``--every`` s and a few microseconds per part change; nothing
per event.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import gc
import itertools
import json
import os
import re
import socket
import statistics
import sys
import termios
import threading
import time

from stallprobe import split_at_dashes  # bench/ is the script's folder, first on the path

_STAMP = re.compile(rb"\nTimestamp: (\d+\.\d+)\r?\n")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Probe:
    def __init__(self, out: str, every: float):
        self.out = open(out, "a", buffering=1)
        self.every = every
        self.follower = None
        self.changes = self.taken = 0
        self.change_s = 0.0
        self.change_max = 0.0
        self.db_s = 0.0
        self.gc2 = 0
        self.gc2_max = 0.0
        self._gc_start = 0.0
        self.main = threading.get_native_id()  # installed from the main thread: the event loop's

    # -- hooks, in the service's process ---------------------------------------------------------

    def install(self) -> None:
        from recording import following
        from recording.doors import follower as door
        from recording.storage.store import Store

        probe = self
        start = door.Follower.start

        @functools.wraps(start)
        def started(self, *args, **kwargs):
            start(self, *args, **kwargs)
            probe.follower = self
            threading.Thread(target=probe.watch, name="followprobe", daemon=True).start()

        door.Follower.start = started
        part_changed = following.Following.part_changed

        @functools.wraps(part_changed)
        async def timed(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                result = await part_changed(self, *args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                probe.changes += 1
                probe.change_s += spent
                probe.change_max = max(probe.change_max, spent)
            probe.taken += result is not None
            return result

        following.Following.part_changed = timed
        take_over = Store.take_over

        @functools.wraps(take_over)
        def in_thread(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return take_over(self, *args, **kwargs)
            finally:
                probe.db_s += time.perf_counter() - t0

        Store.take_over = in_thread
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc2 += 1
            self.gc2_max = max(self.gc2_max, time.perf_counter() - self._gc_start)

    # -- the watching thread ---------------------------------------------------------------------

    def watch(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                line = self.sample()
            except Exception as exc:  # noqa: BLE001 - the probe must not stop the service
                line = {"error": repr(exc)}
            self.out.write(json.dumps(line) + "\n")

    def sample(self) -> dict:
        follower = self.follower
        now, mono = time.time(), time.monotonic()
        oldest = None
        # NOTE: islice in C holds the GIL throughout: the loop's thread cannot change the deque meanwhile
        for item in list(itertools.islice(follower._queue._queue, 4)):
            event = item[0]
            if isinstance(event, dict) and event.get("Timestamp"):
                oldest = float(event["Timestamp"])
                break
        buffered, unread_kernel, peeked = self._unread(follower)
        if oldest is None:
            found = _STAMP.search(buffered) or _STAMP.search(peeked)
            oldest = float(found.group(1)) if found else None
        model = follower.tracker.model
        line = {
            "t": round(mono, 4), "now": round(now, 4), "oldest": oldest,
            "lag_ms": round(1000 * (now - oldest), 2) if oldest is not None else 0.0,
            "pending": follower.pending, "unread": len(buffered) + unread_kernel, "handled": follower.handled,
            "calls": len(model.calls), "channels": len(model.channels), "recorded": len(follower.recorded),
            "changes": self.changes, "taken": self.taken, "change_s": round(self.change_s, 4),
            "db_s": round(self.db_s, 4),
            "change_ms_max": round(1000 * self.change_max, 2), "gc2": self.gc2,
            "gc2_ms_max": round(1000 * self.gc2_max, 2), "rss_mb": round(_rss_mb(), 1),
            **self._sched(),
        }
        self.change_max = self.gc2_max = 0.0
        return line

    def _sched(self) -> dict:
        try:
            with open(f"/proc/self/task/{self.main}/schedstat") as f:
                ran, waited, _ = f.read().split()
        except (OSError, ValueError):
            return {}
        return {"ran_s": int(ran) / 1e9, "waited_s": int(waited) / 1e9}

    @staticmethod
    def _unread(follower) -> tuple[bytes, int, bytes]:
        """The AMI reader's buffered bytes, the bytes the kernel holds unread on its socket, and
        the first of those (peeked)."""
        writer = getattr(follower.manager.client, "_writer", None)
        if writer is None or writer.transport.is_closing():
            return b"", 0, b""
        reader = getattr(writer.transport.get_protocol(), "_stream_reader", None)
        buffered = bytes(reader._buffer) if reader is not None else b""
        fd = writer.transport.get_extra_info("socket").fileno()
        try:
            size = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
            with socket.socket(fileno=os.dup(fd)) as sock:
                peeked = sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT) if size else b""
        except OSError:
            return buffered, 0, b""
        return buffered, size, b"\n" + peeked


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


# -- reading a probe file ------------------------------------------------------------------------

def load(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def summarize(path: str, start: float, end: float, frozen: list | tuple = ()) -> dict | None:
    """The lines between ``start`` and ``end`` (CLOCK_MONOTONIC): how far behind the follower
    was (``lag_ms`` p50, p99 and max over the samples, less the time the server was frozen,
    ``frozen`` being [from, to] spans of ``time.time()``), the most events pending and bytes
    unread, the events handled and part changes (and those this process recorded) over the
    span, the mean and longest part change, the calls tracked at the end, full collections and
    the longest, and the most resident memory. None without samples."""
    lines = [x for x in load(path) if "t" in x and start <= x["t"] <= end]
    if not lines:
        return None
    before = next((x for x in reversed(load(path)) if "t" in x and x["t"] < start), lines[0])
    lags = sorted(_active_lag_ms(x, frozen) for x in lines)
    changes = lines[-1]["changes"] - before["changes"]
    spent = lines[-1]["change_s"] - before["change_s"]
    return {
        "samples": len(lines), "seconds": round(lines[-1]["t"] - lines[0]["t"], 2),
        "lag_p50_ms": statistics.median(lags), "lag_p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        "lag_max_ms": lags[-1], "pending_max": max(x["pending"] for x in lines),
        "unread_max": max(x["unread"] for x in lines), "handled": lines[-1]["handled"] - before["handled"],
        "changes": changes, "taken": lines[-1]["taken"] - before["taken"],
        "change_ms_mean": round(1000 * spent / changes, 2) if changes else None,
        "change_ms_max": max(x["change_ms_max"] for x in lines),
        "db_ms_mean": round(1000 * (lines[-1]["db_s"] - before["db_s"]) / changes, 2) if changes else None, "calls": lines[-1]["calls"],
        "channels": lines[-1]["channels"], "gc2": lines[-1]["gc2"] - before["gc2"],
        "gc2_ms_max": max(x["gc2_ms_max"] for x in lines), "rss_mb": max(x["rss_mb"] for x in lines),
        "errors": sum(1 for x in load(path) if "error" in x),
        # the loop's thread: share of the span on a CPU, and runnable but waiting for one
        "loop_cpu": _share(lines, "ran_s"), "loop_waited": _share(lines, "waited_s"),
    }


def _active_lag_ms(line: dict, frozen) -> float:
    """A sample's lag without the time the server spent frozen (bench/run.py stops it between its
    rounds, while its stream is paused: that wait is not the follower's)."""
    oldest = line.get("oldest")
    if oldest is None:
        return line["lag_ms"]
    now = line["now"]
    idle = sum(max(0.0, min(now, to if to is not None else now) - max(oldest, since)) for since, to in frozen)
    return round(1000 * (now - oldest - idle), 2)


def _share(lines: list[dict], key: str) -> float | None:
    """The share of the time between the first and the last line that ``key`` grew by. NOTE:
    from the first line inside the span, not the last before it: bench/run.py freezes the
    server (SIGSTOP) between its rounds, and a frozen thread neither runs nor waits."""
    span = lines[-1]["t"] - lines[0]["t"]
    if key not in lines[-1] or key not in lines[0] or span <= 0:
        return None
    return round((lines[-1][key] - lines[0][key]) / span, 3)


def main() -> int:
    argv, rest = split_at_dashes(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the probe file to write (append)")
    p.add_argument("--every", type=float, default=0.05, help="seconds between samples (default 0.05)")
    args = p.parse_args(argv)
    if not rest:
        p.error("--out FILE -- <recording-agi arguments>")
    Probe(args.out, args.every).install()
    from recording.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main())
