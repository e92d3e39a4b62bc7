"""`serve --workers N`: several server processes sharing one port (SO_REUSEPORT) and one
database, run for real as child processes; and the journal's rule of one process per directory,
with the leftovers of directories nobody holds taken over rather than stranded."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import pytest

from recording.cli import main
from recording.errors import StorageUnavailable
from recording.storage.journal import LOCK_NAME, Journal
from recording.storage.store import Store
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve
from tests.recording.test_store import leg
from tests.waiting import wait_until

LISTENING = re.compile(r" worker (\d+) agi\.server: FastAGI listening on ")
HTTP_LISTENING = re.compile(r" worker (\d+) recording\.app: HTTP recording API listening on ")
STARTED = re.compile(r" worker (\d+) started \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.add(int(entry.name))
    return found


class Workers:
    """`recording-agi serve --workers N` as a child process on a fixed free port. Its log is
    read in a thread, so a test can wait for what it says; ``stop`` always leaves no process."""

    def __init__(self, database_url: str, cwd: Path, *, workers: int = 2, journal: Path | None = None,
                 http: bool = False, program: Sequence[str] = (sys.executable, "-m", "recording"),
                 extra_env: dict | None = None):
        self.port = free_port()
        self.http_port = free_port() if http else None
        self.workers = workers
        env = {
            **os.environ, "RECORDING_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1",
            "RECORDING_JOURNAL_DIR": str(journal or cwd / "journal"), "RECORDING_SHUTDOWN_GRACE": "5",
            # NOTE: as in the in-process tests, a slow disk must not send writes to the journal.
            "RECORDING_DATABASE_BUDGET": "5", **(extra_env or {}),
        }
        for name in ("RECORDING_AGI_LISTEN", "RECORDING_HTTP_LISTEN", "RECORDING_WORKERS", "RECORDING_REUSE_PORT",
                     "RECORDING_WORKER_INDEX", "RECORDING_HEALTH_DIR", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name, None)
        http_option = ["--http", f"127.0.0.1:{self.http_port}"] if http else []
        self.process = subprocess.Popen(
            [*program, "serve", "--workers", str(workers), "--listen", f"127.0.0.1:{self.port}", *http_option],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stderr, self.log), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            self.wait_for_listening(range(1, workers + 1))
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def wait_for_listening(self, indexes, after: int = 0, timeout: float = 60) -> None:
        """Until the workers ``indexes`` listen for FastAGI, and for HTTP when it is on (a worker
        opens its HTTP listener after its FastAGI one)."""
        wanted = {str(i) for i in indexes}
        for pattern in (LISTENING, HTTP_LISTENING) if self.http_port else (LISTENING,):
            wait_until(lambda: wanted <= {m.group(1) for line in self.log[after:] if (m := pattern.search(line))},
                       timeout, f"workers {sorted(wanted)} listening:\n{self.text()}")

    def pids(self) -> dict[int, int]:
        """The newest pid of each worker, from the supervisor's log."""
        return {int(m.group(1)): int(m.group(2)) for line in list(self.log) if (m := STARTED.search(line))}

    def shared(self) -> Path:
        """The run's folder of shared metrics and health, from the supervisor's log."""
        match = re.search(r"share their metrics and health in (\S+)", self.text())
        assert match, self.text()
        return Path(match.group(1))

    def answered_by(self, path: str) -> list[int]:
        """The workers that answered HTTP requests for ``path``, in order, from their log."""
        pattern = re.compile(rf" worker (\d+) recording\.http: HTTP GET {re.escape(path)} from ")
        return [int(m.group(1)) for line in list(self.log) if (m := pattern.search(line))]

    def served_by(self, uniqueid: str) -> set[int]:
        """The workers that logged the end of a session for ``uniqueid``."""
        pattern = re.compile(rf" worker (\d+) recording\.fastagi: \S+ {re.escape(uniqueid)} status=")
        return {int(m.group(1)) for line in list(self.log) if (m := pattern.search(line))}

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 40) -> tuple[int, str]:
        """Signals the supervisor and waits for it; whatever is left is killed, by its pid."""
        workers = set(self.pids().values()) | children_of(self.process.pid)
        try:
            if self.process.poll() is None:
                self.process.send_signal(signum)
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            for pid in workers | set(self.pids().values()):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            for reader in self._readers:
                reader.join(10)
        return self.process.returncode, self.text()


def place_calls(port: int, count: int, threads: int) -> list:
    def caller(number: int) -> list:
        asterisk = FakeAsterisk(port, timeout=15)
        return [asterisk.call(f"recording/start?apiKey={API_KEY}&tag=W{number}-{n}") for n in range(count // threads)]

    with ThreadPoolExecutor(threads) as pool:
        return [call for calls in pool.map(caller, range(threads)) for call in calls]


def start_twice(port: int, uniqueid: str) -> tuple:
    """Two starts for one call at the same moment, as two AGI connections."""
    barrier = threading.Barrier(2)

    def start(tag: str):
        asterisk = FakeAsterisk(port, timeout=15)
        barrier.wait(5)
        return asterisk.call(f"recording/start?apiKey={API_KEY}&tag={tag}", uniqueid=uniqueid)

    with ThreadPoolExecutor(2) as pool:
        return tuple(pool.map(start, ("first", "second")))


# --- several processes, for real ----------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_share_the_port_the_database_and_one_leg_per_call(store, database_url, tmp_path):
    service = Workers(database_url, tmp_path)
    try:
        pids = service.pids()
        assert sorted(pids) == [1, 2] and len(set(pids.values())) == 2
        assert set(pids.values()) == children_of(service.process.pid)

        calls = place_calls(service.port, 40, 4)

        assert [c.status for c in calls] == ["STARTED"] * 40, [c.error for c in calls if c.status != "STARTED"]
        wait_until(lambda: all(service.served_by(c.uniqueid) for c in calls), 10, "every session logged")
        served = Counter(worker for c in calls for worker in service.served_by(c.uniqueid))
        assert set(served) == {1, 2} and sum(served.values()) == 40, served

        pairs = {f"1795900000.{n}": start_twice(service.port, f"1795900000.{n}") for n in range(20)}
        for uniqueid, (first, second) in pairs.items():
            statuses = sorted((first.status, second.status))
            assert statuses == ["ALREADY_RECORDING", "STARTED"], (first.error, second.error)
            assert first.variables["RECORDING_ID"] == second.variables["RECORDING_ID"]
        # Some pairs were split between the two processes: the database decided there.
        wait_until(lambda: all(service.served_by(u) for u in pairs), 10, "every pair logged")
        assert any(service.served_by(u) == {1, 2} for u in pairs)
    finally:
        children = children_of(service.process.pid)
        code, log = service.stop()

    assert code == 0, log
    assert not [pid for pid in children if alive(pid)]
    assert "all 2 workers stopped" in log and "shown only this once" not in "".join(service.out)
    legs = Counter(leg.unique_id for leg in store.find_legs())
    assert all(legs[c.uniqueid] == 1 for c in calls)
    assert all(legs[u] == 1 for u in pairs)
    assert sum(legs.values()) == 60


@pytest.mark.slow
def test_a_killed_worker_is_started_again_and_calls_go_on(store, database_url, tmp_path):
    service = Workers(database_url, tmp_path)
    try:
        before = service.pids()
        mark = len(service.log)
        os.kill(before[1], signal.SIGKILL)
        service.wait_for_listening([1], after=mark, timeout=30)
        after = service.pids()

        # SIGHUP is passed on, and does not end (or restart) a worker.
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: passing it on to the workers" in service.text(), 10, "SIGHUP passed on")
        calls = place_calls(service.port, 20, 2)
        hup = service.pids()
    finally:
        code, log = service.stop()

    assert after[1] != before[1] and after[2] == before[2]
    assert hup == after and log.count("unexpectedly; starting it again") == 1
    assert not alive(before[1])
    assert re.search(r"worker 1 \(pid \d+\) was killed by SIGKILL unexpectedly; starting it again in", log)
    assert [c.status for c in calls] == ["STARTED"] * 20
    assert code == 0, log


@pytest.mark.slow
def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path):
    service = Workers(f"sqlite:///{tmp_path}/db.sqlite3", tmp_path)
    workers = set(service.pids().values())
    try:
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in workers), 20, "the orphaned workers stopped")
    finally:
        service.stop()


@pytest.mark.slow
def test_the_supervisor_prints_a_new_key_once_and_workers_take_over_leftovers(tmp_path):
    """From one process to workers: the single process's journal files (in the top folder) and
    a worker folder nobody runs any more are replayed by the workers."""
    journal = tmp_path / "journal"
    leave(journal, leg("1795800000.1", tag="single"))
    leave(journal / "worker-5", leg("1795800000.2", tag="fifth"))
    url = f"sqlite:///{tmp_path}/fresh.sqlite3"

    service = Workers(url, tmp_path, journal=journal)
    try:
        store = Store(url)
        try:
            # NOTE: a replayed file is removed just after its legs are committed: the legs alone
            # showing up does not yet mean the replay is done.
            found = wait_until(
                lambda: len(store.find_legs()) == 2 and not list(journal.rglob("journal-*.jsonl")) and store.find_legs(),
                30, "the leftovers replayed and their files removed",
            )
        finally:
            store.close()
    finally:
        code, log = service.stop()

    assert code == 0, log
    assert sorted(leg.tag for leg in found) == ["fifth", "single"]
    assert "".join(service.out).count("shown only this once") == 1
    assert f"took over 1 journal file left in {journal / 'worker-5'} " in log
    assert not list(journal.rglob("journal-*.jsonl"))


def test_workers_need_a_fixed_port(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    code = main(["--database-url", url, "serve", "--workers", "2", "--listen", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert code == 2 and "RECORDING_AGI_LISTEN (--listen) '127.0.0.1:0': with 2 workers the port must be fixed" in err

    code = main(["--database-url", url, "serve", "--workers", "2", "--listen", "127.0.0.1:4599",
                 "--http", "127.0.0.1:0"])
    assert code == 2 and "RECORDING_HTTP_LISTEN (--http) '127.0.0.1:0'" in capsys.readouterr().err
    # Refused before anything was made.
    assert not (tmp_path / "db.sqlite3").exists()


def test_workers_setting_is_checked(tmp_path, capsys):
    code = main(["--database-url", f"sqlite:///{tmp_path}/db.sqlite3", "serve", "--workers", "0"])
    assert code == 2 and "RECORDING_WORKERS must be greater than 0" in capsys.readouterr().err


# --- one process per journal directory, and no leftovers stranded -------------------------------


@pytest.mark.slow
def test_a_second_process_on_a_journal_directory_is_refused(tmp_path):
    held = Journal(tmp_path / "journal")
    held.open()
    try:
        env = {**os.environ, "RECORDING_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
               "RECORDING_JOURNAL_DIR": str(tmp_path / "journal")}
        env.pop("RECORDING_WORKERS", None)
        run = subprocess.run([sys.executable, "-m", "recording", "serve", "--listen", "127.0.0.1:0"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        held.close()

    assert run.returncode == 1, run.stderr
    assert f"journal directory {tmp_path / 'journal'} is in use by another process" in run.stderr


def test_one_journal_directory_one_holder_also_within_a_process(tmp_path):
    first, second = Journal(tmp_path / "j"), Journal(tmp_path / "j")
    first.open()
    first.open()  # again on the same journal: it holds the directory already
    with pytest.raises(StorageUnavailable, match=r"is in use by another process .*RECORDING_JOURNAL_DIR"):
        second.open()
    first.close()
    second.open()
    second.close()
    assert (tmp_path / "j" / LOCK_NAME).exists()


def segment_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("journal-*.jsonl"))


def leave(directory: Path, *writes) -> list[str]:
    """Journal files left in ``directory`` by a process that no longer runs; written aside
    and moved in, since opening a journal there would take over its neighbours' files."""
    scratch = directory.parent / f"scratch-{directory.name}"
    journal = Journal(scratch)
    journal.open()
    for write in writes:
        journal.append([write])
        journal.seal()
    journal.close()
    directory.mkdir(parents=True, exist_ok=True)
    names = segment_names(scratch)
    for name in names:
        (scratch / name).rename(directory / name)
    return names


def test_leftovers_of_worker_folders_nobody_holds_are_taken_over(tmp_path):
    top = tmp_path / "journal"
    running = Journal(top / "worker-2")
    running.open()
    running.append([leg("2.1")])
    names = leave(top / "worker-3", leg("3.1"), leg("3.2")) + leave(top / "worker-4", leg("4.1"))
    (top / "worker-4" / "rejected.jsonl").write_text('{"kind": "leg", "rejected": "no"}\n')

    journal = Journal(top)
    journal.open()
    try:
        # Names keep their times, so the replay order survives the move.
        assert segment_names(top) == sorted(names)
        assert [w.unique_id for s in journal.seal() for w in journal.read(s)] == ["3.1", "3.2", "4.1"]
        assert journal.adopted == 3 and journal.pending() == 3
        assert segment_names(top / "worker-3") == segment_names(top / "worker-4") == []
        assert "no" in (top / "rejected.jsonl").read_text() and not (top / "worker-4" / "rejected.jsonl").exists()
        # A folder a process holds is its own business.
        assert len(segment_names(top / "worker-2")) == 1
    finally:
        journal.close()
        running.close()


def test_a_worker_takes_over_its_parent_and_idle_siblings(tmp_path):
    top = tmp_path / "journal"
    single = leave(top, leg("0.1"))
    sibling = leave(top / "worker-7", leg("7.1"))
    # The same name in two folders cannot come from one clock, but must not lose a file either.
    (top / "worker-8").mkdir()
    (top / "worker-8" / sibling[0]).write_bytes((top / "worker-7" / sibling[0]).read_bytes().replace(b"7.1", b"8.1"))
    leave(top / "worker-9", leg("9.1"))
    journal = Journal(top / "worker-1")
    journal.open()
    try:
        moved = [w.unique_id for s in journal.seal() for w in journal.read(s)]
        assert sorted(moved) == ["0.1", "7.1", "8.1", "9.1"]
        assert len(segment_names(top / "worker-1")) == 4 and segment_names(top) == []
    finally:
        journal.close()
    assert single[0] in segment_names(top / "worker-1")


@pytest.mark.slow
def test_one_process_after_workers_replays_their_leftovers(store, database_url, tmp_path):
    journal = tmp_path / "journal"
    leave(journal / "worker-5", leg("1795700000.5", tag="from-worker-5"))

    server = Serve(database_url, tmp_path, extra_env={"RECORDING_JOURNAL_DIR": str(journal)})
    try:
        (found,) = wait_until(lambda: store.find_legs(unique_id="1795700000.5"), 30, "the leftover replayed")
    finally:
        code, _, log = server.stop()

    assert code == 0, log
    assert found.tag == "from-worker-5"
    assert not list(journal.rglob("journal-*.jsonl"))
