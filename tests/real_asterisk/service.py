"""The service as a user runs it against the real Asterisk: ``recording-agi serve`` (optionally
``--workers 2``) as a child process, its settings in the environment (FastAGI and HTTP on fixed
free loopback ports, AMI pointing at the test Asterisk, recordings in its monitor folder), and
the database it uses, prepared with the test apiKey and users."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from recording import apikey
from recording.storage.store import Store
from tests.real_asterisk.pbx import Asterisk, free_port
from tests.recording.conftest import API_KEY
from tests.waiting import wait_until

READY = {
    "agi": re.compile(r"(?:worker (\d+) )?agi\.server: FastAGI listening on "),
    "http": re.compile(r"(?:worker (\d+) )?recording\.app: HTTP recording API listening on "),
    "ami": re.compile(r"(?:worker (\d+) )?recording\.ami: AMI connected to "),
}


def prepare_database(url: str) -> None:
    """The schema, the test apiKey, and the users: fred and ann (agents), boss (a Recording
    Manager)."""
    store = Store(url)
    try:
        store.upgrade()
        store.set_api_key_hash(apikey.hash_key(API_KEY))
        for login, groups in (("fred", []), ("ann", []), ("boss", ["Recording Manager"])):
            if store.find_user(login) is None:
                store.add_user(login, groups)
    finally:
        store.close()


def program() -> list[str]:
    """``recording-agi``, the console script installed beside this Python (as a user runs
    it), else ``python -m recording``."""
    script = Path(sys.executable).parent / "recording-agi"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recording"]


class Serve:
    """``recording-agi serve`` against ``pbx``; ``stop()`` always leaves no process."""

    def __init__(self, database_url: str, folder: Path, pbx: Asterisk, *, ami: bool = True, http: bool = True,
                 workers: int = 1, extra_env: dict[str, str] | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.pbx = pbx
        self.agi_port = free_port()
        self.http_port = free_port() if http else None
        self.workers = workers
        self.monitor = pbx.monitor / folder.name
        env = {
            **os.environ,
            "RECORDING_DATABASE_URL": database_url,
            "RECORDING_AGI_LISTEN": f"127.0.0.1:{self.agi_port}",
            "RECORDING_HTTP_LISTEN": f"127.0.0.1:{self.http_port}" if http else "",
            "RECORDING_AMI_URL": pbx.service_ami_url if ami else "",
            # NOTE: a date folder that does not exist yet: MixMonitor makes it.
            "RECORDING_MONITOR_TEMPLATE": f"{self.monitor}/{{date:%Y/%m/%d}}/{{uniqueid}}-{{leg}}.wav",
            "RECORDING_JOURNAL_DIR": str(folder / "journal"),
            "RECORDING_FILE_QUIET": "0.5", "RECORDING_HASH_INTERVAL": "0.2",
            "RECORDING_SHUTDOWN_GRACE": "5", "RECORDING_DIRECTORY_REFRESH": "0.5",
            # NOTE: as in the in-process tests, a slow disk must not send writes to the journal.
            "RECORDING_DATABASE_BUDGET": "5", "PYTHONUNBUFFERED": "1",
            # NOTE: retrieval and play are asked as the vendor's CRMs ask (apiKey and loginName),
            # which a new install does not trust unless told (README, "Who asks").
            "RECORDING_TRUST_CRM_LOGIN_NAME": "true",
            **(extra_env or {}),
        }
        for name in ("RECORDING_WORKERS", "RECORDING_REUSE_PORT", "RECORDING_WORKER_INDEX", "RECORDING_HEALTH_DIR",
                     "PROMETHEUS_MULTIPROC_DIR", "RECORDING_CONFIG", "RECORDING_API_KEY"):
            env.pop(name, None)
        self.ami = ami
        command = [*program(), "serve"] + (["--workers", str(workers)] if workers > 1 else [])
        self.process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.log: list[str] = []
        self.out: list[str] = []
        for stream, into in ((self.process.stderr, self.log), (self.process.stdout, self.out)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def agi_url(self) -> str:
        return f"agi://127.0.0.1:{self.agi_port}"

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def _wait_ready(self, timeout: float = 60) -> None:
        wanted = {"agi"} | ({"http"} if self.http_port else set()) | ({"ami"} if self.ami else set())
        who = {str(i) for i in range(1, self.workers + 1)} if self.workers > 1 else {None}
        for name in wanted:
            pattern = READY[name]
            wait_until(lambda: self.process.poll() is not None
                       or who <= {m.group(1) for line in list(self.log) if (m := pattern.search(line))},
                       timeout, f"serve: {name} ready")
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.text()}")

    def wait_log(self, pattern: str, timeout: float = 20) -> re.Match:
        regex = re.compile(pattern)
        return wait_until(lambda: next((m for line in list(self.log) if (m := regex.search(line))), None),
                          timeout, f"in the service's log: {pattern}\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops it; SIGKILL to its process group if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever it left (workers)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(10)
        time.sleep(0)  # let the readers take the last lines
        return self.process.returncode

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- what the database holds -----------------------------------------------------------

    def legs(self, unique_id: str | None = None, tag: str | None = None) -> list:
        store = Store(self.database_url)
        try:
            return store.find_legs(unique_id=unique_id, tag=tag)
        finally:
            store.close()
