#!/usr/bin/env python3
"""A peer for the benchmark: a recorder as a user would write it with panoramisk and psycopg.

One route, ``recording/start``: ``EXEC MixMonitor "<file>,b"``, then an INSERT of one row into
PostgreSQL (the table ``panoramisk_recordings``, made at start-up) through a
``psycopg_pool.AsyncConnectionPool``, committed (durable with the server's default
``synchronous_commit``), then ``SET VARIABLE RECORDING_STATUS "STARTED"`` (``FAILED`` if the
INSERT failed). panoramisk's ``Application.handler`` on a plain ``asyncio.start_server``, as its
own example does; the standard event loop.

NOTE: panoramisk looks a route up by the whole ``agi_network_script``, query string included, so
``recording/start?tag=...`` finds no route. The usual fix is a routes mapping that drops the query
(``PathRoutes``); the route reads the query itself.

    python bench/peers/panoramisk_server.py --listen 127.0.0.1:4600 --dsn postgresql://root@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections import OrderedDict
from urllib.parse import parse_qs, urlsplit

import psycopg
from panoramisk.fast_agi import Application
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("peer.panoramisk")

TABLE = """
CREATE TABLE IF NOT EXISTS panoramisk_recordings (
    id bigserial PRIMARY KEY,
    uniqueid text NOT NULL,
    channel text NOT NULL,
    tag text,
    path text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = "INSERT INTO panoramisk_recordings (uniqueid, channel, tag, path) VALUES (%s, %s, %s, %s)"


class PathRoutes(OrderedDict):
    """panoramisk's route table, looked up by the script's path without its query string."""

    def get(self, script, default=None):
        return super().get(script.partition("?")[0], default)


def make_start(pool: AsyncConnectionPool):
    async def start(request):
        headers = request.headers
        query = parse_qs(urlsplit(headers["agi_network_script"]).query)
        uniqueid = headers["agi_uniqueid"]
        path = f"/var/spool/asterisk/monitor/{uniqueid}.wav"
        await request.send_command(f'EXEC MixMonitor "{path},b"')
        status = "STARTED"
        try:
            async with pool.connection() as conn:  # commits when the block ends
                await conn.execute(INSERT, (uniqueid, headers.get("agi_channel", ""),
                                            query.get("tag", [None])[0], path))
        except psycopg.Error:
            log.exception("could not record %s", uniqueid)
            status = "FAILED"
        await request.send_command(f'SET VARIABLE RECORDING_STATUS "{status}"')

    return start


async def serve(host: str, port: int, dsn: str, backlog: int, pool_size: int) -> None:
    pool = AsyncConnectionPool(dsn, min_size=pool_size, open=False)
    await pool.open(wait=True, timeout=30)
    async with pool.connection() as conn:
        await conn.execute(TABLE)
    app = Application()
    app._route = PathRoutes()
    app.add_route("recording/start", make_start(pool))
    server = await asyncio.start_server(app.handler, host, port, backlog=backlog)
    log.info("panoramisk FastAGI peer listening on %s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    await pool.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4600", help="HOST:PORT (default 127.0.0.1:4600)")
    parser.add_argument("--dsn", required=True, help="PostgreSQL connection string")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog (default 4096, as the others)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections in the pool (default 4, psycopg_pool's)")
    parser.add_argument("--log-level", default="INFO",
                        help="logging level (default INFO: panoramisk logs each request)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen {args.listen!r} is not HOST:PORT")
    asyncio.run(serve(host.strip("[]"), int(port), args.dsn, args.backlog, args.pool_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
