"""A real Asterisk for the tests: configured in a folder of its own, run in its own session
(process group), and driven the way a test needs it: CLI commands, dialplan added at run time,
calls made of Local channels playing a tone, waits for log lines and AMI events, channel
variables, MixMonitors, the files they write.

Its configuration is what ``../shared/asterisk/src/README.md`` found to work: every directory in
the run's folder (the build's own only for modules and read-only data), AMI on a free loopback
port, no module that listens on the network, the full log at verbose 5.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.real_asterisk.manager import Manager, ManagerError

# Modules that open network ports, or refuse to load without their own configuration (the
# src README's list); the harness checks after the start that only AMI listens.
NOLOAD = (
    "chan_iax2", "pbx_dundi", "chan_unistim", "res_hep", "res_hep_rtcp", "res_phoneprov", "cdr_csv",
    "cdr_manager", "pbx_ael", "cdr_pgsql", "cel_pgsql", "res_config_pgsql", "cdr_custom", "cel_custom",
    "cdr_sqlite3_custom", "cel_sqlite3_custom",
)
# Configuration files whose absence only makes their module log a notice.
QUIET = ("features.conf", "queues.conf", "cdr.conf", "cel.conf", "musiconhold.conf", "indications.conf",
         "ccss.conf", "udptl.conf", "rtp.conf", "res_parking.conf", "confbridge.conf", "voicemail.conf",
         "followme.conf", "acl.conf", "dsp.conf", "enum.conf", "res_fax.conf", "agents.conf",
         "stasis.conf", "sorcery.conf", "geolocation.conf", "aeap.conf", "minivm.conf", "res_config_sqlite3.conf",
         "extensions.ael", "say.conf", "dnsmgr.conf", "cli_aliases.conf", "codecs.conf", "res_pktccops.conf",
         "statsd.conf", "websocket_client.conf", "chan_websocket.conf", "ari.conf", "calendar.conf", "festival.conf",
         "prometheus.conf", "amd.conf", "res_stun_monitor.conf", "alarmreceiver.conf")
# The pause, resume and stop keys of the README ("For a pause key during the call"): the agent
# (callee) presses them, and the route runs on the peer, the recorded caller's channel, whose
# RECORDING_AGI variable names the service under test. The attended-transfer code is what AMI
# Atxfer sends (tests/real_asterisk/test_following.py); the transfers README's preconditions:
# the code configured before the call, and no announcement (no sound files are installed here,
# and the default prompt makes the transfer fail).
FEATURES = """[general]
transferdigittimeout => 3
transferannouncesound =

[featuremap]
atxfer => *2

[applicationmap]
pause-recording => *7,peer/callee,AGI(${RECORDING_AGI}/recording/pause)
resume-recording => *8,peer/callee,AGI(${RECORDING_AGI}/recording/resume)
stop-recording => *9,peer/callee,AGI(${RECORDING_AGI}/recording/stop)
"""
# The queue of tests/real_asterisk/test_following.py, as the transfers README's capture 5 had
# it: ringall. Its members, Local channels to agents' phones whose dialplan the test adds at run
# time, are added by the test (QueueAdd): a member configured here would be "Invalid" for good,
# its context not existing yet when app_queue first asks for its state.
FOLLOW_QUEUE = "follow-support"
QUEUES = (f"[general]\n\n[{FOLLOW_QUEUE}]\nstrategy = ringall\ntimeout = 15\nretry = 1\njoinempty = yes\n"
          "leavewhenempty = no\n")
_names = itertools.count(1)


def _end_with_parent() -> None:
    """In the child: SIGTERM when the test run dies without its finalizers (SIGKILL), so no
    Asterisk outlives it (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the finalizer and atexit still stop it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_name(prefix: str) -> str:
    """A context or extension name no other test of this session uses."""
    return f"{prefix}-{os.getpid() % 10000}-{next(_names)}"


class Asterisk:
    """One Asterisk process with a configuration of its own (see the module docstring).
    ``start()`` returns once it is fully booted and its AMI answers; ``stop()`` always leaves
    no process of it behind (SIGTERM to its process group, then SIGKILL)."""

    def __init__(self, binary: Path, folder: Path | None = None, includes: dict[str, str] | None = None):
        self.binary = Path(binary).resolve()
        self.prefix = self.binary.parent.parent
        self.folder = Path(folder or tempfile.mkdtemp(prefix="rast-"))
        self.etc = self.folder / "etc"
        self.spool = self.folder / "spool"
        self.monitor = self.spool / "monitor"
        self.log_file = self.folder / "log" / "full"
        self.ami_port = free_port()
        self.ami_user = "harness"
        self.ami_secret = secrets.token_hex(8)
        # The service under test logs in as a user of its own.
        self.service_secret = secrets.token_hex(8)
        self.process: subprocess.Popen | None = None
        self.ami: Manager | None = None
        self._owns_folder = folder is None
        # Files #included into extensions.conf at the start: {file name: its text}.
        self.includes = dict(includes or {})

    @property
    def service_ami_url(self) -> str:
        """RECORDING_AMI_URL for the service under test."""
        return f"ami://recording:{self.service_secret}@127.0.0.1:{self.ami_port}"

    # -- life ------------------------------------------------------------------------------

    def configure(self) -> None:
        for sub in ("etc", "lib/keys", "spool/monitor", "run", "log", "cache"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        build = self.prefix
        directories = {
            "astetcdir": self.etc, "astmoddir": build / "lib/asterisk/modules",
            "astvarlibdir": self.folder / "lib", "astdbdir": self.folder / "lib", "astkeydir": self.folder / "lib",
            "astdatadir": build / "var/lib/asterisk", "astagidir": self.folder / "lib/agi-bin",
            "astspooldir": self.spool, "astrundir": self.folder / "run", "astlogdir": self.folder / "log",
            "astsbindir": build / "sbin", "astcachedir": self.folder / "cache",
        }
        files = {
            "asterisk.conf": "[directories]\n" + "".join(f"{k} => {v}\n" for k, v in directories.items())
            + "\n[options]\nverbose = 5\ndebug = 0\nnocolor = yes\nhideconnect = yes\n"
              "documentation_language = en_US\ncache_media_frames = no\n",
            "logger.conf": "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\n"
                           "full => notice,warning,error,verbose(5),dtmf\n",
            "manager.conf": f"[general]\nenabled = yes\nport = {self.ami_port}\nbindaddr = 127.0.0.1\n"
                            "displayconnects = no\n\n"
                            f"[{self.ami_user}]\nsecret = {self.ami_secret}\nread = all\nwrite = all\n"
                            "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n\n"
                            f"[recording]\nsecret = {self.service_secret}\nread = all\nwrite = all\n"
                            "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n",
            "modules.conf": "[modules]\nautoload = yes\n" + "".join(f"noload => {m}.so\n" for m in NOLOAD),
            "extensions.conf": "[general]\nstatic = yes\nwriteprotect = yes\n\n[globals]\n\n[default]\n\n"
                               + "".join(f'#include "{name}"\n' for name in self.includes),
            "features.conf": FEATURES,
            "queues.conf": QUEUES,
            **self.includes,
            "http.conf": "[general]\nenabled = no\n",
        }
        for name, text in files.items():
            if text is not None:
                (self.etc / name).write_text(text)
        for name in QUIET:
            if not (self.etc / name).exists():
                (self.etc / name).touch()

    def start(self, timeout: float = 60) -> "Asterisk":
        self.configure()
        console = open(self.folder / "console.log", "wb")
        self.process = subprocess.Popen(
            [str(self.binary), "-C", str(self.etc / "asterisk.conf"), "-f", "-g", "-n"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_end_with_parent,
        )
        console.close()
        atexit.register(self.stop)
        try:
            self._wait_booted(timeout)
            self.ami = Manager(self.ami_port, self.ami_user, self.ami_secret)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Asterisk exited with {self.process.returncode}:\n{self.console()[-3000:]}")
            done = subprocess.run(self.rx_args("core waitfullybooted"), capture_output=True, text=True, timeout=timeout)
            if done.returncode == 0 and "fully booted" in done.stdout.lower():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Asterisk not fully booted within {timeout} s:\n{self.console()[-3000:]}")

    def stop(self) -> None:
        """Stops Asterisk and everything in its process group, whatever state it is in."""
        atexit.unregister(self.stop)
        if self.ami is not None:
            self.ami.close()
            self.ami = None
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            except ProcessLookupError:
                pass
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console(self) -> str:
        try:
            return (self.folder / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- the CLI ---------------------------------------------------------------------------

    def rx_args(self, command: str) -> list[str]:
        return [str(self.binary), "-C", str(self.etc / "asterisk.conf"), "-rx", command]

    def rx(self, command: str, timeout: float = 20) -> str:
        """``asterisk -rx command``: its output. AssertionError if the CLI fails."""
        done = subprocess.run(self.rx_args(command), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"asterisk -rx {command!r} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def cli(self, command: str) -> str:
        """A CLI command over the harness's AMI connection (faster than ``rx``)."""
        return self.ami.command(command)

    def listening(self) -> list[str]:
        """The local addresses Asterisk's process listens on (TCP and UDP, from ``ss``), and
        its Unix sockets."""
        done = subprocess.run(["ss", "-H", "-a", "-n", "-p", "-t", "-u", "-x", "-l"], capture_output=True,
                              text=True, timeout=10)
        mine = f"pid={self.process.pid},"
        return [" ".join(line.split()[:1] + line.split()[4:5]) for line in done.stdout.splitlines() if mine in line]

    # -- dialplan --------------------------------------------------------------------------

    def add_extension(self, context: str, exten: str, priority: int | str, application: str, data: str = "") -> None:
        """One dialplan line, added over AMI (``DialplanExtensionAdd``: no CLI quoting)."""
        self.ami.action("DialplanExtensionAdd", Context=context, Extension=exten, Priority=str(priority),
                        Application=application, ApplicationData=data, Replace="yes")

    def add_dialplan(self, context: str, exten: str, lines: list[str]) -> None:
        """``lines`` as priorities 1, 2, ... of ``exten@context``, each ``App(data)`` (or a bare
        ``App``)."""
        for priority, line in enumerate(lines, 1):
            match = re.fullmatch(r"(\w+)(?:\((.*)\))?", line, re.S)
            if match is None:
                raise ValueError(f"not App(data): {line!r}")
            self.add_extension(context, exten, priority, match.group(1), match.group(2) or "")

    # -- calls -----------------------------------------------------------------------------

    def originate(self, context: str, exten: str = "s", application: str = "Milliwatt", data: str = "",
                  variables: dict[str, str] | None = None, timeout: float = 10, caller: str | None = None) -> str:
        """Calls ``Local/exten@context``, whose first half runs ``application`` (Milliwatt: a
        1004 Hz tone), or the dialplan at ``s@caller`` when ``caller`` is given, while the
        second runs the dialplan. Returns the second half's channel name
        (``Local/s@ctx-00000001;2``), once it exists."""
        mark = self.ami.mark()
        fields = {"Channel": f"Local/{exten}@{context}", "Async": "true", "Timeout": "30000"}
        if caller is None:
            fields |= {"Application": application, "Data": data}
        else:
            fields |= {"Context": caller, "Exten": "s", "Priority": "1"}
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        self.ami.action("Originate", **fields)
        prefix = f"Local/{exten}@{context}-"
        event = self.ami.wait_event(
            lambda e: e.get("Event") == "Newchannel" and e.get("Channel", "").startswith(prefix)
            and e["Channel"].endswith(";2"), timeout, mark, f"the call to {exten}@{context}")
        return event["Channel"]

    def hangup(self, channel: str) -> None:
        try:
            self.ami.action("Hangup", Channel=channel)
        except ManagerError:
            pass  # already gone

    def channels(self) -> list[dict[str, str]]:
        return [e for e in self.ami.list_action("CoreShowChannels") if e.get("Event") == "CoreShowChannel"]

    def wait_hangup(self, channel: str, timeout: float = 20, after: int = 0) -> dict[str, str]:
        return self.ami.wait_event({"Event": "Hangup", "Channel": channel}, timeout, after)

    def getvar(self, channel: str, variable: str) -> str:
        return self.ami.getvar(channel, variable)

    def mixmonitors(self, channel: str) -> dict[str, str]:
        """``mixmonitor list <channel>``: each running MixMonitor's id and its file (without
        the extension, as the CLI prints it: columns ID, File, Receive File, Transmit File)."""
        # NOTE: the answer always has its header line, also for a channel without a MixMonitor
        # (transfers/README.md); one without it was not a listing (an answer cut short under
        # load), and is asked again rather than read as "none".
        for _ in range(5):
            output = self.cli(f"mixmonitor list {channel}")
            if "ID" in output:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"mixmonitor list {channel} gave no listing: {output!r}")
        found = {}
        for line in output.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0].startswith("0x"):
                found[parts[0].strip()] = parts[1].strip()
        return found

    # -- the log ---------------------------------------------------------------------------

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, after: int = 0) -> str:
        with open(self.log_file, "rb") as f:
            f.seek(after)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern: str, timeout: float = 20, after: int = 0) -> re.Match:
        """The first match of the regular expression ``pattern`` in the full log (from byte
        ``after``); AssertionError when it does not appear within ``timeout``."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text(after))
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s in Asterisk's log: {pattern}")
            time.sleep(0.05)
