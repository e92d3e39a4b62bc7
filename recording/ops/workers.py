"""``serve --workers N``: N server processes on one host, so that every core serves calls.

The workers share the listen ports (SO_REUSEPORT: the kernel spreads new connections over
them; or the listening sockets systemd handed to the supervisor, passed on as they are) and
the database (whose partial unique index keeps one active leg per call across processes);
each has a journal of its own, ``worker-N`` in RECORDING_JOURNAL_DIR. The parent
is only a supervisor: it starts the workers (``python -m recording serve`` with the same
settings in the environment), passes SIGTERM, SIGINT and SIGHUP on to them, starts one again
when it dies unexpectedly (with a backoff, a few times a minute at most), and leaves none
behind: on its way out it stops them, and should it be killed outright, the kernel tells them
(``PR_SET_PDEATHSIG``) and they stop by themselves.

The supervisor also makes a folder for the run (in TMPDIR; removed at the end) where the
workers share their metrics (``metrics/``, the Prometheus client's multiprocess mode) and their
health reports (``health/``), so that whichever worker a scrape or ``/healthz`` reaches answers
for the service; when a worker ends, its live gauges and its report leave the folder with it.

A worker runs the ``recording`` package the supervisor runs, whatever the current folder
holds: ``python -P`` leaves the current folder off its path (``-m`` would put it first, and a
checkout's ``recording/`` would win over the installed package), and when the supervisor itself
found ``recording`` in the folder of its script, that folder is put first on the worker's path.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .config import Settings
from .health import HEALTH_ENV, report_path
from .metrics import MULTIPROCESS_ENV, worker_gone
from .sockets import passed_on
from ..errors import ConfigError

log = logging.getLogger("recording.workers")

# Set by the supervisor in each worker's environment: its number, for its log lines.
WORKER_ENV = "RECORDING_WORKER_INDEX"
RESTART_MIN, RESTART_MAX = 0.5, 30.0
RESTARTS_PER_MINUTE = 5
# A worker that dies this soon after its start, this many times in a row, will not get far by
# being started again (a port taken, a database gone): the supervisor stops and says so.
QUICK_EXIT, QUICK_EXITS = 10.0, 6
# A worker's exit status for settings, or a database schema, it cannot run with (recording-agi's
# exit status 2): starting it again cannot help, so the supervisor stops at once.
CANNOT_RUN = 2
# Seconds past RECORDING_SHUTDOWN_GRACE that a stopping worker gets before it is killed.
STOP_MARGIN = 10.0
PR_SET_PDEATHSIG = 1
# The folder this process found the ``recording`` package in (recording/ops/workers.py).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def check_shareable(settings: Settings) -> None:
    """Raises ConfigError unless every listen address has a fixed port: port 0 would give
    each worker a port of its own, and Asterisk could reach only one of them."""
    addresses = [("RECORDING_AGI_LISTEN (--listen)", settings.agi_listen, settings.agi_address)]
    if settings.http_address is not None:
        addresses.append(("RECORDING_HTTP_LISTEN (--http)", settings.http_listen, settings.http_address))
    if settings.pages_address is not None:
        addresses.append(("RECORDING_PAGES_LISTEN", settings.pages_listen, settings.pages_address))
    for name, value, (_, port) in addresses:
        if port == 0:
            raise ConfigError(
                f"{name} {value!r}: with {settings.workers} workers the port must be fixed, since "
                "port 0 would give each worker a different free port; name one (for example 127.0.0.1:4573)"
            )


def worker_journal(settings: Settings, index: int) -> Path:
    return Path(settings.journal_dir) / f"worker-{index}"


def worker_environment(
    settings: Settings, index: int, environ: Mapping[str, str], overrides: Mapping[str, object] | None = None,
    shared: Path | None = None,
) -> dict[str, str]:
    """``environ`` plus what makes a process one worker of several: the parent's command-line
    options (``overrides``, by setting name: they must win over the config file and the
    environment there too), its own journal, the run's ``shared`` folder for metrics and
    health, and the parent's import path (:func:`import_path`). Everything else a worker reads
    itself, from the same environment and config file, so that SIGHUP reloads reach it."""
    env = dict(environ)
    names = {spec.name: spec.metadata["env"] for spec in fields(Settings)}
    for name, value in (overrides or {}).items():
        env[names[name]] = _text(value)
    env.update({
        "RECORDING_WORKERS": "1",
        "RECORDING_REUSE_PORT": "1",
        "RECORDING_JOURNAL_DIR": str(worker_journal(settings, index)),
        WORKER_ENV: str(index),
    })
    if shared is not None:
        env[MULTIPROCESS_ENV] = str(shared / "metrics")
        env[HEALTH_ENV] = str(shared / "health")
    first = import_path()
    if first is not None:
        env["PYTHONPATH"] = os.pathsep.join([first, *filter(None, [env.get("PYTHONPATH")])])
    return env


def worker_command(config: str | None = None) -> list[str]:
    """How a worker is started: this interpreter, ``-P`` (see the module), ``recording serve``."""
    config_option = ["--config", os.path.abspath(config)] if config else []
    return [sys.executable, "-P", "-m", "recording", *config_option, "serve"]


def import_path(path: Sequence[str] | None = None, safe: bool | None = None) -> str | None:
    """The folder a worker must have first on its path to import this process's ``recording``:
    the folder of this process's script (``path[0]``, as in ``sys.path``) when ``recording``
    was found there, which ``-P`` leaves out; None when ``recording`` comes from the rest of
    the path, which a worker has too (same interpreter, same environment)."""
    path = sys.path if path is None else path
    safe = sys.flags.safe_path if safe is None else safe
    if safe or not path:
        return None
    first = Path(path[0] or os.getcwd()).resolve()
    return str(first) if first == PACKAGE_ROOT else None


def _text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when this process
    dies (Linux ``prctl(PR_SET_PDEATHSIG)``); None where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signum))
        # NOTE: had the parent died before prctl, no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Worker:
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    due: float = 0.0  # when a worker that is not running should be started
    restarts: collections.deque = field(default_factory=collections.deque)
    quick_exits: int = 0


class Supervisor:
    """Runs ``settings.workers`` workers until SIGTERM or SIGINT (see the module)."""

    def __init__(self, settings: Settings, *, command: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None, config: str | None = None,
                 overrides: Mapping[str, object] | None = None, sockets: Mapping[str, socket.socket] | None = None):
        self.settings = settings
        # Listening sockets systemd handed over: every worker serves on them (see ops/sockets.py).
        self.sockets = dict(sockets or {})
        self.command = list(command or worker_command(config))
        self.overrides = dict(overrides or {})
        self.shared: Path | None = None
        self.environ = dict(os.environ if environ is None else environ)
        self.workers = [Worker(index) for index in range(1, settings.workers + 1)]
        self._preexec = parent_death_signal()
        self._stop_signal: int | None = None
        self._hangup = False
        self._wakeup: tuple[int, int] | None = None

    def run(self) -> int:
        """Starts the workers and watches them until SIGTERM or SIGINT. Returns 0 when every
        worker then stopped cleanly; 1 when one did not, or when a worker kept dying right
        after its start (then the supervisor stops the others and gives up)."""
        try:
            Path(self.settings.journal_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("journal directory %s cannot be created (the workers will say why): %s",
                        self.settings.journal_dir, exc)
        try:
            self.shared = make_shared()
        except OSError as exc:
            log.error("cannot make the workers' folder for metrics and health in %s (set TMPDIR): %s",
                      tempfile.gettempdir(), exc)
            return 1
        log.info("the workers share their metrics and health in %s", self.shared)
        previous = self._install_signals()
        gave_up = True
        clean = False
        try:
            gave_up = not all(self._start(worker) for worker in self.workers) or self._watch()
        finally:
            clean = self._stop_all(self._stop_signal or signal.SIGTERM)
            self._restore_signals(previous)
            shutil.rmtree(self.shared, ignore_errors=True)
        if not gave_up:
            log.info("all %d workers stopped%s", len(self.workers), "" if clean else ", not all cleanly")
        return 0 if clean and not gave_up else 1

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> dict:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._wakeup = (read, write)
        previous = {"wakeup": signal.set_wakeup_fd(write, warn_on_full_buffer=False)}
        # NOTE: the handlers only note what came; the wake-up pipe ends the loop's wait, and
        # the loop does the work (nothing here is safe to do inside a handler).
        for signum, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                                (signal.SIGHUP, self._on_hangup), (signal.SIGCHLD, self._on_child)):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def _restore_signals(self, previous: dict) -> None:
        signal.set_wakeup_fd(previous.pop("wakeup"))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in self._wakeup or ():
            os.close(fd)
        self._wakeup = None

    def _on_stop(self, signum, frame) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _on_hangup(self, signum, frame) -> None:
        self._hangup = True

    def _on_child(self, signum, frame) -> None:
        pass

    def _sleep(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds, less when a signal comes."""
        read = self._wakeup[0]
        try:
            select.select([read], [], [], max(timeout, 0))
        except InterruptedError:
            pass
        try:
            while os.read(read, 512):
                pass
        except BlockingIOError:
            pass

    # -- workers ------------------------------------------------------------------------------

    def _watch(self) -> bool:
        """Keeps the workers running until a stop signal; True when one kept failing."""
        while self._stop_signal is None:
            if self._hangup:
                self._hangup = False
                log.info("SIGHUP: passing it on to the workers")
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None:
                    if self._exited(worker, now):
                        return True
                if worker.process is None and now >= worker.due and self._stop_signal is None:
                    if not self._start(worker):
                        return True
            waiting = [w.due - now for w in self.workers if w.process is None]
            self._sleep(min(waiting + [1.0]))
        log.info("%s: stopping the workers", signal.Signals(self._stop_signal).name)
        return False

    def _start(self, worker: Worker) -> bool:
        """Starts ``worker``; False when it cannot be started and the supervisor gives up."""
        environment = worker_environment(self.settings, worker.index, self.environ, self.overrides, self.shared)
        environment.update(passed_on(self.sockets))
        worker.started = time.monotonic()
        try:
            worker.process = subprocess.Popen(
                self.command, env=environment, stdin=subprocess.DEVNULL, preexec_fn=self._preexec,
                pass_fds=[sock.fileno() for sock in self.sockets.values()],
            )
        except OSError as exc:
            worker.process = None
            return not self._failed(worker, worker.started, f"could not be started ({exc})", logging.ERROR)
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
        return True

    def _exited(self, worker: Worker, now: float) -> bool:
        """Notes a worker's unexpected end and when to start it again; True to give up."""
        code, pid = worker.process.returncode, worker.process.pid
        worker.process = None
        self._forget(worker.index, pid)
        if code == CANNOT_RUN:
            log.error("worker %d (pid %d) exited with status %d: it cannot run with these settings or this "
                      "database (its log says why); stopping the other workers", worker.index, pid, code)
            return True
        return self._failed(worker, now, f"(pid {pid}) {_how(code)} unexpectedly",
                            logging.WARNING if code == 0 else logging.ERROR)

    def _failed(self, worker: Worker, now: float, what: str, level: int) -> bool:
        worker.quick_exits = worker.quick_exits + 1 if now - worker.started < QUICK_EXIT else 0
        if worker.quick_exits >= QUICK_EXITS:
            log.error("worker %d %s, %d times in a row within %gs of its start: giving up, stopping "
                      "the other workers", worker.index, what, worker.quick_exits, QUICK_EXIT)
            return True
        delay = self._schedule(worker, now)
        log.log(level, "worker %d %s; starting it again in %.1fs", worker.index, what, delay)
        return False

    def _forget(self, index: int, pid: int) -> None:
        """A worker ended: its live gauges and its health report leave the shared folder (its
        counts stay: they are part of the service's totals)."""
        if self.shared is None:
            return
        try:
            worker_gone(pid, str(self.shared / "metrics"))
            report_path(self.shared / "health", index).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("worker %d (pid %d): cannot tidy its files in %s: %s", index, pid, self.shared, exc)

    def _schedule(self, worker: Worker, now: float) -> float:
        """Sets when ``worker`` starts again: a delay doubling with each restart in the last
        minute, and no more than RESTARTS_PER_MINUTE of them. Returns the delay."""
        while worker.restarts and worker.restarts[0] <= now - 60:
            worker.restarts.popleft()
        delay = min(RESTART_MIN * 2 ** len(worker.restarts), RESTART_MAX)
        if len(worker.restarts) >= RESTARTS_PER_MINUTE:
            delay = max(delay, worker.restarts[0] + 60 - now)
        worker.due = now + delay
        worker.restarts.append(worker.due)
        return delay

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _stop_all(self, signum: int) -> bool:
        """Passes ``signum`` on, waits for the workers' graceful stop, kills those still there
        after the grace; True when every running worker stopped cleanly."""
        running = [w for w in self.workers if w.process is not None]
        self._signal_all(signum)
        deadline = time.monotonic() + self.settings.shutdown_grace + STOP_MARGIN
        while any(w.process.poll() is None for w in running) and time.monotonic() < deadline:
            self._sleep(min(0.5, deadline - time.monotonic()))
        clean = True
        for worker in running:
            process = worker.process
            if process.poll() is None:
                log.error("worker %d (pid %d) did not stop within %gs: killing it", worker.index, process.pid,
                          self.settings.shutdown_grace + STOP_MARGIN)
                process.kill()
                process.wait()
                clean = False
            # NOTE: a worker the signal reached before it could set up its handler ends by the
            # signal itself; it had no session in flight, so that is a clean stop too.
            elif process.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("worker %d (pid %d) %s while stopping", worker.index, process.pid,
                          _how(process.returncode))
                clean = False
            self._forget(worker.index, process.pid)
            worker.process = None
        return clean


SHARED_PREFIX = "recording-agi-workers-"


def make_shared(parent: str | None = None) -> Path:
    """A new folder for one run's shared metrics and health (the client's rule: a run starts
    from an empty one), private to this user, named for this supervisor's pid. Folders left by
    a supervisor that no longer runs (killed, so it could not remove its own) go first."""
    parent = parent or tempfile.gettempdir()
    for left in Path(parent).glob(f"{SHARED_PREFIX}*-*"):
        owner = left.name[len(SHARED_PREFIX):].split("-", 1)[0]
        try:
            mine = left.stat().st_uid == os.geteuid()
        except OSError:
            continue
        if owner.isdigit() and mine and not _running(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
            log.info("removed %s, left by a supervisor that no longer runs", left)
    shared = Path(tempfile.mkdtemp(prefix=f"{SHARED_PREFIX}{os.getpid()}-", dir=parent))
    (shared / "metrics").mkdir()
    (shared / "health").mkdir()
    return shared


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
