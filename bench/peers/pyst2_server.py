#!/usr/bin/env python3
"""A peer for the benchmark: a recorder as a user would write it with pyst2 and SQLAlchemy.

One route, ``recording/start``: ``EXEC MixMonitor "<file>,b"`` (``agi.appexec``), then one row
into PostgreSQL through the SQLAlchemy ORM (the table ``pyst2_recordings``, made at start-up by
``create_all``), committed (durable with the server's default ``synchronous_commit``), then
``SET VARIABLE RECORDING_STATUS STARTED`` (``agi.set_variable``; ``FAILED`` if the commit
failed).

How it serves FastAGI: pyst2's own ``asterisk.fastagi`` is Python 2 only (``import
SocketServer``); its design is a ``ForkingTCPServer`` whose handler gives ``AGI()`` the socket's
files. That is what this does on Python 3: a ``socketserver.ForkingTCPServer``, one child
process per connection, ``AGI(stdin=rfile, stdout=<text wrapper of wfile>)``. A fork per session
is also what makes ``AGI()`` work at all: it installs a SIGHUP handler when built, which Python
allows only in the main thread, so a threading server fails (``ValueError: signal only works in
main thread``) unless the library is patched. Consequences, measured as they are: each session
pays a fork and its own PostgreSQL connection (a child cannot share the parent's pool, so the
parent disposes of its engine after start-up and each child connects anew, as SQLAlchemy's
"Using Connection Pools with Multiprocessing or os.fork()" says), and at most
``ForkingMixIn.max_children`` (40) sessions run at once, the others waiting to be accepted.

pyst2 echoes every line it reads and sends to the ``stderr`` it is given; that goes to
/dev/null here (``--echo`` keeps it on stderr), so the figures are of the protocol, not of a
debug trace.

    python bench/peers/pyst2_server.py --listen 127.0.0.1:4601 --dsn postgresql://root@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import socketserver
import sys
from urllib.parse import parse_qs, urlsplit

from asterisk.agi import AGI
from sqlalchemy import DateTime, String, create_engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Recording(Base):
    __tablename__ = "pyst2_recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    uniqueid: Mapped[str] = mapped_column(String(150))
    channel: Mapped[str] = mapped_column(String(200))
    tag: Mapped[str | None] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


engine = None
echo = False


class FastAGIHandler(socketserver.StreamRequestHandler):
    timeout = 30  # seconds a read or write on the socket may block

    def handle(self) -> None:
        engine.dispose(close=False)  # forked: never use the parent's connections
        debug = sys.stderr if echo else open(os.devnull, "w")
        agi = AGI(stdin=self.rfile, stdout=io.TextIOWrapper(self.wfile, encoding="utf-8", write_through=True),
                  stderr=debug)
        query = parse_qs(urlsplit(agi.env.get("agi_network_script", "")).query)
        uniqueid = agi.env["agi_uniqueid"]
        path = f"/var/spool/asterisk/monitor/{uniqueid}.wav"
        agi.appexec("MixMonitor", f"{path},b")
        status = "STARTED"
        try:
            with Session(engine) as session:
                session.add(Recording(uniqueid=uniqueid, channel=agi.env.get("agi_channel", ""),
                                      tag=query.get("tag", [None])[0], path=path))
                session.commit()
        except SQLAlchemyError as exc:
            print(f"could not record {uniqueid}: {exc}", file=sys.stderr)
            status = "FAILED"
        finally:
            engine.dispose()
        agi.set_variable("RECORDING_STATUS", status)


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 4096  # the listen backlog, as the other servers in the bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4601", help="HOST:PORT (default 127.0.0.1:4601)")
    parser.add_argument("--dsn", required=True, help="PostgreSQL URL (postgresql://...)")
    parser.add_argument("--echo", action="store_true", help="keep pyst2's trace of each line on stderr")
    args = parser.parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen {args.listen!r} is not HOST:PORT")
    global engine, echo
    echo = args.echo
    engine = create_engine(args.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    Base.metadata.create_all(engine)
    engine.dispose()  # no connection is left open for the children to inherit
    with Server((host.strip("[]"), int(port)), FastAGIHandler) as server:
        print(f"pyst2 FastAGI peer listening on {host}:{port}", file=sys.stderr, flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
