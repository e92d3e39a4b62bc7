"""Listening sockets handed over by systemd (socket activation): a restart refuses no call.

``SocketUnit`` does what systemd does for ``recording-agi.socket``: it holds a listening socket
across the service's restarts and starts each process with it as descriptor 3 and
``LISTEN_PID``/``LISTEN_FDS`` naming that process (sd_listen_fds(3)). One test also runs
Debian's ``systemd-socket-activate``, systemd's own implementation of that hand-over.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recording.cli import build_parser, check as check_command, main
from recording.errors import ConfigError
from recording.ops.config import Settings
from recording.ops.sockets import PASSED_ENV, handed_over, passed_on
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until

# What systemd does between fork and exec: the socket to descriptor 3, the variables naming
# this very process (its pid is only known in the child), then the service's command.
LAUNCH = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="recording-agi.socket")
os.execv(sys.executable, [sys.executable, "-m", "recording", *sys.argv[2:]])
"""

LISTENING = re.compile(r"FastAGI listening on 127\.0\.0\.1:(\d+) \(a socket handed over\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One process started by the socket unit; its log read in a thread."""

    def __init__(self, args: list[str], env: dict, cwd: Path, sock: socket.socket):
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(sock.fileno()), *args], pass_fds=[sock.fileno()],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def wait_listening(self, count: int = 1) -> None:
        wait_until(lambda: sum(bool(LISTENING.search(line)) for line in list(self.log)) >= count, 60,
                   f"{count} listener(s) on the handed-over socket:\n{self.text()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)
        self._reader.join(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._reader.join(10)
        return self.process.returncode


class SocketUnit:
    """recording-agi.socket: a listening socket that outlives every process it starts."""

    def __init__(self, database_url: str, cwd: Path):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.cwd = cwd
        self.env = {
            **os.environ, "RECORDING_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1",
            "RECORDING_JOURNAL_DIR": str(cwd / "journal"), "RECORDING_SHUTDOWN_GRACE": "5",
            "RECORDING_DATABASE_BUDGET": "5", "RECORDING_AGI_LISTEN": f"127.0.0.1:{self.port}",
        }
        for name in ("RECORDING_HTTP_LISTEN", "RECORDING_METRICS_LISTEN", "RECORDING_WORKERS",
                     "RECORDING_REUSE_PORT", "RECORDING_WORKER_INDEX", "RECORDING_HEALTH_DIR",
                     "PROMETHEUS_MULTIPROC_DIR", PASSED_ENV):
            self.env.pop(name, None)
        self.processes: list[Process] = []

    def start(self, *args: str) -> Process:
        process = Process(["serve", *args], self.env, self.cwd, self.sock)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.sock.close()


@pytest.fixture
def unit(store, database_url, tmp_path):
    unit = SocketUnit(database_url, tmp_path)
    yield unit
    unit.close()


def start_call(asterisk: FakeAsterisk, tag: str):
    return asterisk.call(f"recording/start?apiKey={API_KEY}&tag={tag}",
                         channel=f"PJSIP/410-{abs(hash(tag)) % 0xffffffff:08x}")


def test_a_call_made_while_the_service_restarts_waits_and_is_recorded(unit, store):
    first = unit.start()
    first.wait_listening()
    asterisk = FakeAsterisk(unit.port, timeout=30)
    assert start_call(asterisk, "before-the-crash").status == "STARTED"

    first.kill()
    # No process listens now; systemd's socket still does: the call is queued, not refused.
    during: dict = {}
    caller = threading.Thread(target=lambda: during.update(call=start_call(asterisk, "during-the-restart")))
    caller.start()
    time.sleep(0.5)
    assert caller.is_alive(), "the call ended while no process was there to serve it"
    assert "call" not in during

    second = unit.start()
    second.wait_listening()
    caller.join(30)
    assert during["call"].status == "STARTED", during["call"]
    legs = store.find_legs(tag="during-the-restart")
    assert [leg.id for leg in legs] == [during["call"].variables["RECORDING_ID"]]
    assert len(store.find_legs(tag="before-the-crash")) == 1
    assert second.stop() == 0, second.text()


def test_workers_serve_on_the_socket_handed_to_their_supervisor(unit, store):
    supervisor = unit.start("--workers", "2")
    supervisor.wait_listening(2)
    asterisk = FakeAsterisk(unit.port, timeout=30)
    calls = [start_call(asterisk, f"worker-call-{i}") for i in range(20)]
    assert [call.status for call in calls] == ["STARTED"] * 20
    assert sum(len(store.find_legs(tag=f"worker-call-{i}")) for i in range(20)) == 20
    text = supervisor.text()
    # Both workers took the supervisor's socket; none bound a port of its own.
    assert {m for m in re.findall(r"worker (\d) agi\.server: FastAGI listening", text)} == {"1", "2"}
    assert "can be bound" not in text and "Address already in use" not in text
    assert supervisor.stop() == 0, text


def test_a_socket_the_settings_do_not_name_is_refused_with_a_sentence(unit):
    process = unit.start("--listen", f"127.0.0.1:{free_port()}")
    assert process.process.wait(30) == 2
    process.stop()
    assert re.search(
        rf"systemd handed over a socket listening on 127\.0\.0\.1:{unit.port}, which none of the listen "
        r"settings names \(RECORDING_AGI_LISTEN 127\.0\.0\.1:\d+, RECORDING_HTTP_LISTEN \(off\)",
        process.text()), process.text()
    assert "Traceback" not in process.text()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_systemds_own_hand_over_starts_the_service_on_the_first_call(store, database_url, tmp_path):
    port = free_port()
    env = {**os.environ, "RECORDING_DATABASE_URL": database_url, "RECORDING_JOURNAL_DIR": str(tmp_path / "journal"),
           "RECORDING_DATABASE_BUDGET": "5", "PYTHONUNBUFFERED": "1"}
    env.pop(PASSED_ENV, None)
    # NOTE: systemd-socket-activate clears the environment but for what -E names.
    passed = [f"--setenv={name}" for name in ("RECORDING_DATABASE_URL", "RECORDING_JOURNAL_DIR",
                                              "RECORDING_DATABASE_BUDGET", "PYTHONUNBUFFERED", "PATH")]
    process = subprocess.Popen(
        ["systemd-socket-activate", "--listen", f"127.0.0.1:{port}", *passed,
         sys.executable, "-m", "recording", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def connects() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        # Nothing is started until a call comes: the first connection starts the service,
        # which then serves it (the probe above was that first connection).
        wait_until(connects, 30, "systemd-socket-activate listening")
        call = start_call(FakeAsterisk(port, timeout=30), "first-call")
        assert call.status == "STARTED", call
        assert len(store.find_legs(tag="first-call")) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert "FastAGI listening on 127.0.0.1:%d (a socket handed over)" % port in out, out


# -- handed_over(), as a function ----------------------------------------------------------


def settings_for(agi: int, http: int | None = None) -> Settings:
    return Settings(agi_listen=f"127.0.0.1:{agi}", http_listen=f"127.0.0.1:{http}" if http else "")


def test_no_variables_no_sockets():
    assert handed_over(settings_for(4573), {}) == {}


def test_variables_for_another_process_are_ignored_and_taken_out():
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "OTHER": "kept"}
    assert handed_over(settings_for(4573), environ) == {}
    assert environ == {"OTHER": "kept"}


def test_sockets_passed_on_to_a_worker_get_their_roles_by_port():
    agi, http = socket.socket(), socket.socket()
    try:
        for sock in (agi, http):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        settings = settings_for(agi.getsockname()[1], http.getsockname()[1])
        environ = passed_on({"http": http, "agi": agi})
        roles = handed_over(settings, environ)
        assert environ == {}
        assert {role: sock.getsockname() for role, sock in roles.items()} == {
            "agi": agi.getsockname(), "http": http.getsockname()}
        for sock in roles.values():
            sock.detach()  # the same descriptors as agi and http, closed below
    finally:
        agi.close()
        http.close()


def test_a_descriptor_that_is_not_a_listening_socket_is_refused():
    unbound = socket.socket()
    try:
        with pytest.raises(ConfigError, match=r"is not a listening TCP socket: the socket unit must use ListenStream="):
            handed_over(settings_for(4573), {PASSED_ENV: str(unbound.fileno())})
        assert unbound.fileno() >= 0, "a refused descriptor is left open for its owner"
    finally:
        unbound.close()


def test_check_does_not_bind_ports_systemd_holds(store, database_url, capsys):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    address = f"127.0.0.1:{held.getsockname()[1]}"
    try:
        main(["--database-url", database_url, "check", "--listen", address])
        plain = capsys.readouterr().out
        main(["--database-url", database_url, "check", "--listen", address, "--systemd-sockets"])
        handed = capsys.readouterr().out
    finally:
        held.close()
    assert f"FAIL agi listen: {address}: in use by another program" in plain
    assert f"ok   agi listen: {address}: not bound here (--systemd-sockets" in handed


def test_the_socket_unit_and_its_drop_in_agree_with_the_service():
    contrib = Path(__file__).resolve().parents[2] / "contrib"

    def read(path: Path) -> configparser.ConfigParser:
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # systemd's keys are case-sensitive
        unit.read(path)
        return unit

    socket_unit = read(contrib / "recording-agi.socket")
    drop_in = read(contrib / "recording-agi.service.d" / "socket.conf")
    # The port systemd holds is the one the service's default setting names.
    assert socket_unit["Socket"]["ListenStream"] == Settings().agi_listen
    assert socket_unit["Socket"]["Service"] == "recording-agi.service"
    assert socket_unit["Install"]["WantedBy"] == "sockets.target"
    assert drop_in["Unit"]["Requires"] == drop_in["Unit"]["After"] == "recording-agi.socket"
    # The last ExecStartPre= wins (the empty one before it clears the unit's own).
    command = drop_in["Service"]["ExecStartPre"].split()
    assert command[:2] == ["/usr/local/bin/recording-agi", "check"]
    args = build_parser().parse_args(command[1:])
    assert args.command is check_command and args.systemd_sockets is True
