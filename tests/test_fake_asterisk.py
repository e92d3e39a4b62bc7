"""The fake Asterisk speaks as the captured Asterisk 22 does: its environment block is the
captured one, byte for byte, given the same channel; it reads commands as res_agi's run_agi()
does, so commands sent before the reply to the one before wait."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from agi.protocol import mset_command, split_command
from tests.capture_files import captured_msets, mset_values
from tests.fake_asterisk import FakeAsterisk, environment, mset_pairs, separate_args

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


# -- MSet, as Asterisk parses it ---------------------------------------------------------------


@pytest.mark.parametrize("line, values", captured_msets(), ids=lambda v: v[:24] if isinstance(v, str) else "")
def test_the_fake_sets_from_the_captured_mset_lines_what_asterisk_gave_back(line, values):
    # The bytes Asterisk received, through the fake's own model of its three layers: res_agi's
    # word split, MSet's argument split, and the split of each pair at its first "=".
    words = split_command(line)
    assert words[:2] == ["EXEC", "MSet"]
    assert dict(mset_pairs(words[2])) == values


def test_every_captured_value_comes_back_as_asterisk_stored_it():
    rows = mset_values()
    assert len(rows) == 331
    for number, (sent, stored) in enumerate(rows):
        words = split_command(mset_command({f"V{number}": sent}))
        assert mset_pairs(words[2]) == [(f"V{number}", stored)], sent


def test_five_values_at_a_time_each_land_in_their_own_variable():
    # A report sets five variables in one MSet: one value's brackets or quotes must not swallow
    # its neighbours.
    rows = mset_values()
    for start in range(0, len(rows), 5):
        batch = {f"V{start + i}": sent for i, (sent, _) in enumerate(rows[start:start + 5])}
        words = split_command(mset_command(batch))
        assert mset_pairs(words[2]) == [(f"V{start + i}", stored) for i, (_, stored) in enumerate(rows[start:start + 5])]


@pytest.mark.parametrize(
    "data, pairs",
    [
        ("A=1,B=2", [("A", "1"), ("B", "2")]),
        ("A=(1,B=2", [("A", "(1,B=2")]),  # an unbalanced "(" swallows the pairs after it
        ("A=[1,B=2", [("A", "[1,B=2")]),
        ('A="(",B=2', [("A", "(,B=2")]),  # brackets are counted even inside quotes
        ("A=x=y", [("A", "x=y")]),
        ("A=", [("A", "")]),
        ("A=1,", [("A", "1")]),  # a trailing "," makes one more, empty, pair: no "=", ignored
        ("NOEQUALS,B=2", [("B", "2")]),
        ("", []),
    ],
)
def test_the_argument_parser_of_the_fake_follows_asterisks(data, pairs):
    assert mset_pairs(data) == pairs


def test_mset_sets_99_pairs_and_the_99th_takes_the_rest():
    data = ",".join(f"V{i}={i}" for i in range(1, 101))
    pairs = mset_pairs(data)
    assert len(pairs) == 99 and pairs[:98] == [(f"V{i}", str(i)) for i in range(1, 99)]
    assert pairs[98] == ("V99", "99,V100=100")


def test_separate_args_keeps_the_rest_whole_past_the_last_slot():
    assert separate_args("a,b,c", ",", 2) == ["a", "b,c"]
    assert separate_args("a,", ",", 5) == ["a", ""]
    assert separate_args(r"a\,b", ",", 5) == ["a,b"]


def _mixmonitor_server(*commands: bytes):
    def server(conn):
        _read_until_blank(conn)
        for command in commands:
            conn.sendall(command)
            assert conn.recv(65536).startswith(b"200 ")
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    return server


def test_mixmonitor_writes_a_wav_file_on_the_asterisk_hosts_disk(tmp_path):
    import wave

    port, done = _serve_once(_mixmonitor_server(b'EXEC MixMonitor "/spool/m/x-1.wav,bi(ID)"\n'))
    fake = FakeAsterisk(port, timeout=5, filesystem=tmp_path)
    call = fake.call("x", uniqueid="1795825765.10")
    assert done.wait(5)
    path = tmp_path / "spool/m/x-1.wav"
    # As captured: the file appears at once as a 44-byte WAV header (the folders are made).
    assert call.mixmonitors[0].path == path and path.stat().st_size == 44

    assert fake.talk("1795825765.10", 0.5) == 8000
    (monitor,) = fake.hang_up("1795825765.10")

    assert monitor.path == path and path.stat().st_size == 44 + 8000
    with wave.open(str(path)) as sound:
        assert (sound.getframerate(), sound.getsampwidth(), sound.getnframes()) == (8000, 2, 4000)
    assert fake.channels["1795825765.10"].running == []


def test_mixmonitor_that_cannot_write_still_answers_and_leaves_no_file(tmp_path):
    (tmp_path / "spool").write_text("a file where a folder should be")
    port, done = _serve_once(_mixmonitor_server(b'EXEC MixMonitor "/spool/m/x-1.wav,b"\n'))
    fake = FakeAsterisk(port, timeout=5, filesystem=tmp_path)

    call = fake.call("x", uniqueid="1795825765.11")

    assert done.wait(5)
    assert call.replies == ["200 result=0"] and call.mixmonitors[0].path is None
    assert fake.talk("1795825765.11", 0.1) == 0
