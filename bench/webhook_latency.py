"""How long a leg's `ended` webhook takes to reach a receiver: from the leg's end (its ended_at,
the event's timestamp) to the request's arrival at a receiver on 127.0.0.1, over a few hundred
legs, for `recording-agi serve` on SQLite and on PostgreSQL.

    .venv/bin/python bench/webhook_latency.py [--legs 300] [--callers 4] [--backends sqlite,pg]

Calls are placed by the tests' fake Asterisk (start, then stop) from ``--callers`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_asterisk import FakeAsterisk  # noqa: E402

KEY = "bench-webhook-key"


def receiver():
    arrivals: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            now = time.time()
            if body["type"] == "recording.ended":
                ended = datetime.fromisoformat(body["timestamp"]).timestamp()
                with lock:
                    arrivals[body["data"]["RecordingId"]] = now - ended
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, arrivals


def database(backend: str, folder: Path) -> tuple[str, callable]:
    if backend == "sqlite":
        return f"sqlite:///{folder}/latency.sqlite3", lambda: None
    import psycopg

    name = f"whlatency_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://root@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect("postgresql://root@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://root@127.0.0.1:5432/{name}", drop


def measure(backend: str, legs: int, callers: int) -> dict:
    server, arrivals = receiver()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url, drop = database(backend, folder)
        env = {**os.environ, "RECORDING_DATABASE_URL": url, "RECORDING_JOURNAL_DIR": str(folder / "journal"),
               "RECORDING_LOG_LEVEL": "WARNING"}
        cli = [sys.executable, "-m", "recording"]
        try:
            for step in (["db", "upgrade"], ["apikey", "set", KEY],
                         ["webhooks", "add", f"http://127.0.0.1:{server.server_address[1]}/h", "--events", "ended"]):
                subprocess.run(cli + step, env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
            serve = subprocess.Popen(cli + ["serve", "--listen", "127.0.0.1:0"], env=dict(env, RECORDING_LOG_LEVEL="INFO"),
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True)
            port = None
            deadline = time.monotonic() + 30
            while port is None and time.monotonic() < deadline:
                match = re.search(r"FastAGI listening on 127\.0\.0\.1:(\d+)", serve.stderr.readline())
                port = int(match.group(1)) if match else None
            threading.Thread(target=serve.stderr.read, daemon=True).start()
            ids: list[str] = []

            def caller(count: int):
                asterisk = FakeAsterisk(port, timeout=10)
                for _ in range(count):
                    call = asterisk.call(f"recording/start?apiKey={KEY}&tag=L")
                    asterisk.call(f"recording/stop?apiKey={KEY}", uniqueid=call.uniqueid)
                    ids.append(call.variables["RECORDING_ID"])
                    time.sleep(0.01)

            threads = [threading.Thread(target=caller, args=(legs // callers,)) for _ in range(callers)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            placed = time.monotonic() - started
            deadline = time.monotonic() + 60
            while len(arrivals) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.05)
            serve.terminate()
            serve.wait(30)
        finally:
            drop()
            server.shutdown()
    found = sorted(arrivals[i] * 1000 for i in ids if i in arrivals)
    return {
        "backend": backend, "legs": len(ids), "arrived": len(found), "calls_per_s": round(len(ids) / placed, 1),
        "p50_ms": round(statistics.median(found), 1),
        "p99_ms": round(found[max(0, int(len(found) * 0.99) - 1)], 1), "max_ms": round(found[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=300)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--backends", default="sqlite,pg")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(json.dumps(measure(backend.strip(), args.legs, args.callers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
