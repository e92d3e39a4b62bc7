#!/usr/bin/env python3
"""A peer for the benchmark: a recorder as a user would write it with pystrix and psycopg.

One route, ``recording/start``: ``EXEC MixMonitor "<file>,b"`` (``core.Exec``), then an INSERT
of one row into PostgreSQL (the table ``pystrix_recordings``, made at start-up) through a
``psycopg_pool.ConnectionPool``, committed (durable with the server's default
``synchronous_commit``), then ``SET VARIABLE "RECORDING_STATUS" "STARTED"``
(``core.SetVariable``; ``FAILED`` if the INSERT failed).

pystrix's ``FastAGIServer`` as its documentation shows it: a ``socketserver`` ``ThreadingMixIn``
server, one thread per connection, handlers registered by a regular expression on the script's
path (pystrix splits the query off and hands it to the handler parsed). Its listen backlog is
the system's ``net.core.somaxconn`` (read with ``sysctl``), 4096 here as for the other servers.
The pool is psycopg_pool's default size (4), as the panoramisk peer's; the session threads wait
for a connection from it. pystrix writes no line per session.

    python bench/peers/pystrix_server.py --listen 127.0.0.1:4602 --dsn postgresql://root@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import psycopg
from psycopg_pool import ConnectionPool
from pystrix.agi import FastAGIServer, core

log = logging.getLogger("peer.pystrix")

TABLE = """
CREATE TABLE IF NOT EXISTS pystrix_recordings (
    id bigserial PRIMARY KEY,
    uniqueid text NOT NULL,
    channel text NOT NULL,
    tag text,
    path text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = "INSERT INTO pystrix_recordings (uniqueid, channel, tag, path) VALUES (%s, %s, %s, %s)"


def make_start(pool: ConnectionPool):
    def start(agi, args, kwargs, match, path):
        env = agi.get_environment()
        uniqueid = env["agi_uniqueid"]
        file = f"/var/spool/asterisk/monitor/{uniqueid}.wav"
        agi.execute(core.Exec("MixMonitor", (f"{file},b",)))
        status = "STARTED"
        try:
            with pool.connection() as conn:  # commits when the block ends
                conn.execute(INSERT, (uniqueid, env.get("agi_channel", ""), kwargs.get("tag", [None])[0], file))
        except psycopg.Error:
            log.exception("could not record %s", uniqueid)
            status = "FAILED"
        agi.execute(core.SetVariable("RECORDING_STATUS", status))

    return start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4602", help="HOST:PORT (default 127.0.0.1:4602)")
    parser.add_argument("--dsn", required=True, help="PostgreSQL connection string")
    parser.add_argument("--pool-size", type=int, default=4, help="connections in the pool (default 4, psycopg_pool's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen {args.listen!r} is not HOST:PORT")
    pool = ConnectionPool(args.dsn, min_size=args.pool_size, open=True)
    pool.wait(timeout=30)
    with pool.connection() as conn:
        conn.execute(TABLE)
    server = FastAGIServer(interface=host.strip("[]"), port=int(port))
    server.register_script_handler(r"^recording/start$", make_start(pool))
    # serve_forever() in a thread: the main thread waits for SIGTERM, and shutdown() needs
    # another thread than the one serving.
    serving = threading.Thread(target=server.serve_forever, name="fastagi", daemon=True)
    serving.start()
    log.info("pystrix FastAGI peer listening on %s:%s", host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
