#!/usr/bin/env python3
"""The reference for the benchmark: the least a FastAGI recorder can do, in plain asyncio.

Per session it reads the environment block, sends ``EXEC MixMonitor "/tmp/ref-<uniqueid>.wav,b"``
and awaits the reply, sends ``SET VARIABLE RECORDING_STATUS "STARTED"`` and awaits the reply,
then half-closes, reads until Asterisk's ``HANGUP`` and EOF, and closes. No database, no
logging per session, no checks: what any Python recorder pays for the conversation alone.
With ``--in-turn`` it sends the 8 commands our ``recording/start`` sends instead (``ref8``).

    python bench/reference_server.py --listen 127.0.0.1:4599 [--in-turn]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import socket
import sys

ENV_LIMIT = 65536
TIMEOUT = 30.0


# The reference's conversation, and with --in-turn the same commands our recording/start sends
# (each after the reply to the one before, as res_agi requires), with nothing else around them.
BARE = ('EXEC MixMonitor "/tmp/ref-{uid}.wav,b"\n', 'SET VARIABLE RECORDING_STATUS "STARTED"\n')
IN_TURN = (
    'SET VARIABLE RECORDING_MIXMONITOR_ID ""\n',
    'EXEC MixMonitor "/tmp/ref-{uid}.wav,bi(RECORDING_MIXMONITOR_ID)"\n',
    "GET VARIABLE RECORDING_MIXMONITOR_ID\n",
    'SET VARIABLE RECORDING_STATUS "STARTED"\n',
    'SET VARIABLE RECORDING_ERROR ""\n',
    'SET VARIABLE RECORDING_ID "{uid}"\n',
    'SET VARIABLE RECORDING_FILE "/tmp/ref-{uid}.wav"\n',
    'SET VARIABLE RECORDING_DEFERRED "0"\n',
)
in_turn = False


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
            for command in (IN_TURN if in_turn else BARE):
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
    parser.add_argument("--in-turn", action="store_true",
                        help="send the 8 commands of our recording/start instead of the reference's 2")
    args = parser.parse_args(argv)
    global in_turn
    in_turn = args.in_turn
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
