"""A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temporary folder, on its own
port), so a test can stop, kill or stall the database without touching the shared server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

BIN = Path(os.environ.get("RECORDING_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    # NOTE: initdb and postgres refuse to run as root, and CI runs as root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, timeout=60, **kwargs)


class ThrowawayPostgres:
    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="recording-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        _as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "root", "--no-sync"])
        self.url = f"postgresql+psycopg://root@127.0.0.1:{self.port}/postgres"
        # The same cluster through its Unix socket, which a test can use while TCP is off.
        self.socket_url = f"postgresql+psycopg://root@/postgres?host={self.folder}&port={self.port}"

    def start(self, *, tcp: bool = True) -> None:
        """``tcp=False``: listening on the Unix socket only, so a service that connects to
        :attr:`url` cannot reach it (connection refused) while :attr:`socket_url` can."""
        listen = "127.0.0.1" if tcp else "''"
        _as_postgres([
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "30",
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses={listen}", "start",
        ])

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends connections cleanly; ``immediate`` is as abrupt as a crash."""
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"])

    def _pids(self) -> list[int]:
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
        return [main, *map(int, children)]

    def stall(self) -> None:
        """Freezes every server process: connections stay open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        for pid in self._pids():
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass  # a backend whose connection closed between pgrep and now

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.resume()
                self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def prepared_cluster(prepare: Callable | None = None, *, revision: str = "head") -> Iterator[ThrowawayPostgres]:
    """A started throwaway cluster with the project's schema (up to ``revision``), after
    ``prepare(store)`` has put in what the test needs; destroyed at the end, whatever happens."""
    from recording.storage.store import Store

    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        store = Store(cluster.url)
        try:
            store.upgrade(revision)
            if prepare is not None:
                prepare(store)
        finally:
            store.close()
        yield cluster
    finally:
        cluster.destroy()
