"""The fake Asterisk speaks as the captured Asterisk 22 does: its environment block is the
captured one, byte for byte, given the same channel; it reads commands as res_agi's run_agi()
does, so commands sent before the reply to the one before wait."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.fake_asterisk import FakeAsterisk, environment

CAPTURES = Path(__file__).resolve().parent / "captures"


@pytest.mark.parametrize(
    "capture,channel,uniqueid,extension,threadid,args",
    [
        ("fastagi-start-ext100.raw.txt", "Local/100@acceptance-00000001;2", "1795825765.3", "100",
         "140521815484096", ()),
        ("fastagi-start-ext102.raw.txt", "Local/102@acceptance-00000005;2", "1795825829.11", "102",
         "140521815996096", ("first arg", "second", "quoted,with comma", "102")),
    ],
)
def test_the_environment_block_is_the_captured_one(capture, channel, uniqueid, extension, threadid, args):
    raw = (CAPTURES / capture).read_bytes()
    block = raw[: raw.index(b"\n\n") + 2]

    made = environment("recording/start?tag=22&agentLoginName=Fred&apiKey=k1", port=4574, channel=channel,
                       uniqueid=uniqueid, extension=extension, threadid=threadid, args=args)

    assert made == block


def _serve_once(handler):
    """A one-connection server on a loopback port running ``handler(conn)`` in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def run():
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                try:
                    handler(conn)
                finally:
                    done.set()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], done


def _read_until_blank(conn):
    data = b""
    while b"\n\n" not in data:
        data += conn.recv(65536)


def test_commands_sent_together_wait_as_in_res_agi():
    # run_agi() takes one line per wake-up of its poll; a second line that came in the same
    # read stays in its stdio buffer until more bytes arrive.
    seen = {}

    def pipelining_server(conn):
        _read_until_blank(conn)
        conn.sendall(b"GET VARIABLE UNIQUEID\nGET VARIABLE CHANNEL\n")
        conn.settimeout(0.5)
        first = conn.recv(65536)
        try:
            second = conn.recv(65536)
        except socket.timeout:
            second = None
        seen["before"] = (first, second)
        conn.settimeout(5)
        conn.sendall(b"NOOP\n")  # new bytes wake the poll: the buffered line is taken
        seen["after"] = conn.recv(65536)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    port, done = _serve_once(pipelining_server)
    call = FakeAsterisk(port, timeout=5).call("x", uniqueid="1795825765.9")
    assert done.wait(5)
    assert seen["before"] == (b"200 result=1 (1795825765.9)\n", None)
    assert seen["after"].startswith(b"200 result=1 (")
    # The NOOP waited too, behind the line it woke up: it was taken only at the server's EOF.
    assert call.commands == ["GET VARIABLE UNIQUEID", "GET VARIABLE CHANNEL", "NOOP"]
    assert call.stalled == 2


def test_commands_sent_one_at_a_time_never_wait():
    def polite_server(conn):
        _read_until_blank(conn)
        for command in (b"GET VARIABLE UNIQUEID\n", b"NOOP\n"):
            conn.sendall(command)
            assert conn.recv(65536).startswith(b"200 ")
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    port, done = _serve_once(polite_server)
    call = FakeAsterisk(port, timeout=5).call("x")
    assert done.wait(5)
    assert call.commands == ["GET VARIABLE UNIQUEID", "NOOP"] and call.stalled == 0 and call.server_closed
