#!/usr/bin/env python3
"""The reference for the benchmark: the least a FastAGI recorder can do, in plain asyncio.

Per session it reads the environment block, sends ``EXEC MixMonitor "/tmp/ref-<uniqueid>.wav,b"``
and awaits the reply, sends ``SET VARIABLE RECORDING_STATUS "STARTED"`` and awaits the reply,
then half-closes, reads until Asterisk's ``HANGUP`` and EOF, and closes. No database, no
logging per session, no checks: what any Python recorder pays for the conversation alone.

With ``--start3`` (``ref3``) it sends the three commands of a correct start instead, each after
the reply to the one before: ``EXEC MixMonitor "<file>,b i(RECORDING_MIXMON_<leg>)"`` (the id
variable named for the leg, so it never holds a stale id), ``GET VARIABLE RECORDING_MIXMON_<leg>``
(MixMonitor answers 0 even when it did not start: the id is what tells), and one ``EXEC MSet``
that sets RECORDING_STATUS, RECORDING_ERROR, RECORDING_ID, RECORDING_FILE and RECORDING_DEFERRED
(``STARTED`` with the leg, or ``FAILED`` when no id came back). Still no database.

    python bench/reference_server.py --listen 127.0.0.1:4599 [--start3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import signal
import socket
import sys

from loadgen import mset_encode  # bench/ is sys.path[0] when this runs as a script

ENV_LIMIT = 65536
TIMEOUT = 30.0


BARE = ('EXEC MixMonitor "/tmp/ref-{uid}.wav,b"\n', 'SET VARIABLE RECORDING_STATUS "STARTED"\n')
start3 = False
_legs = itertools.count(1)
_leg_prefix = f"{os.getpid():x}"


async def start_in_three(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, safe: str) -> None:
    leg = f"{_leg_prefix}x{next(_legs)}"
    path = f"/tmp/ref-{safe}.wav"
    writer.write(f'EXEC MixMonitor "{path},b i(RECORDING_MIXMON_{leg})"\n'.encode())
    await reader.readline()
    writer.write(f"GET VARIABLE RECORDING_MIXMON_{leg}\n".encode())
    reply = await reader.readline()
    if reply.startswith(b"200 result=1 ("):
        pairs = [("RECORDING_STATUS", "STARTED"), ("RECORDING_ERROR", ""), ("RECORDING_ID", leg),
                 ("RECORDING_FILE", path), ("RECORDING_DEFERRED", "0")]
    else:
        pairs = [("RECORDING_STATUS", "FAILED"), ("RECORDING_ERROR", "MixMonitor did not start (no id)"),
                 ("RECORDING_ID", ""), ("RECORDING_FILE", ""), ("RECORDING_DEFERRED", "0")]
    # the escaping that loadgen.py --self-test checks against the captures
    writer.write((mset_encode(pairs) + "\n").encode())
    await reader.readline()


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            uniqueid = ""
            size = 0
            while True:
                line = await reader.readline()
                if not line:
                    return
                size += len(line)
                if line in (b"\n", b"\r\n") or size > ENV_LIMIT:
                    break
                if line.startswith(b"agi_uniqueid:"):
                    uniqueid = line[13:].strip().decode("utf-8", "replace")
            safe = "".join(c for c in uniqueid if c.isalnum() or c in ".-_") or "unknown"
            if start3:
                await start_in_three(reader, writer, safe)
            else:
                for command in BARE:
                    writer.write(command.replace("{uid}", safe).encode())
                    await reader.readline()
            writer.write_eof()
            while await reader.read(4096):  # HANGUP, then EOF
                pass
    except (TimeoutError, OSError):
        pass
    except asyncio.CancelledError:
        # NOTE: stopped with sessions in flight; ending the task quietly keeps asyncio's
        # stream callback from logging a traceback for each of them.
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, backlog: int) -> None:
    server = await asyncio.start_server(session, host, port, backlog=backlog, reuse_address=True)
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound = server.sockets[0].getsockname()
    print(f"reference FastAGI server listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4599", help="HOST:PORT (default 127.0.0.1:4599)")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog (default 4096)")
    parser.add_argument("--start3", action="store_true",
                        help="send the 3 commands of a correct start (MixMonitor with a per-leg id variable, "
                             "GET VARIABLE of it, one MSet of the 5 results) instead of the reference's 2")
    args = parser.parse_args(argv)
    global start3
    start3 = args.start3
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen {args.listen!r} is not HOST:PORT")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(host.strip("[]"), int(port), args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
