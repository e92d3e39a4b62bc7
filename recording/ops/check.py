"""``recording-agi check``: whether the service could start and work with these settings.

Each check says what it found in one :class:`Finding`; none changes anything (the journal
probe removes what it made, a missing SQLite file is not created) and each is bounded in time,
so the command suits systemd's ``ExecStartPre``. The caller decides the exit status (non-zero
when any finding is not ok). A database that cannot be reached while a directory snapshot of it
is at hand is a warning, not a failure: serve starts from the snapshot and journals.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable

from sqlalchemy.engine import make_url

from ..asterisk.ami import AMIClient, AMILoginRefused, AMIUnavailable, parse_ami_url
from .config import Settings, has_id, parse_listen, render_file
from ..errors import StorageUnavailable
from ..storage import snapshot as snapshots
from ..storage.audio import MonitorDirectory
from ..storage.store import Store, migrations_path, normalize_url, redact_url

CHECK_TIMEOUT = 5.0
UPGRADE = "run 'recording-agi db upgrade'"


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``ok`` False means the service would not start or not work as
    configured; ``detail`` says what was found (and what to do about a failure). ``warning``:
    ok, but not as it should be (the service starts and works, degraded)."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


async def check(settings: Settings, *, timeout: float = CHECK_TIMEOUT, systemd_sockets: bool = False) -> list[Finding]:
    """Runs every check, each within ``timeout`` seconds, and returns their findings in a
    fixed order: settings, database, schema, apikey, monitor template, recordings' files,
    journal, ami, then one per listen address. Never raises for what it finds.
    ``systemd_sockets``: the listen ports are held by systemd's socket unit (socket
    activation), so binding them here would fail for the wrong reason."""
    groups = await asyncio.gather(
        _database(settings, timeout),
        _guarded("monitor template", _monitor_template(settings)),
        _guarded("recordings' files", _files(settings, timeout)),
        _guarded("journal", _journal(settings, timeout)),
        _guarded("ami", _ami(settings, timeout)),
        *(_guarded(name, _listen(name, value, timeout, systemd_sockets)) for name, value in _listen_addresses(settings)),
    )
    findings = [_settings(settings)]
    for group in groups:
        findings.extend(group if isinstance(group, list) else [group])
    return findings


def format_findings(findings: list[Finding]) -> str:
    """One line per finding: ``ok   database: ...``, ``WARN database: ...`` or ``FAIL schema: ...``."""
    return "\n".join(f"{_mark(f):<4} {f.name}: {f.detail}" for f in findings)


def _mark(finding: Finding) -> str:
    if not finding.ok:
        return "FAIL"
    return "WARN" if finding.warning else "ok"


async def _guarded(name: str, work: Awaitable[Finding]) -> Finding:
    """The check's finding; a failure of the check itself is a failed finding, not a crash."""
    try:
        return await work
    except TimeoutError:
        return Finding(name, False, "no answer in time")
    except Exception as exc:
        return Finding(name, False, f"the check itself failed: {exc.__class__.__name__}: {exc}")


async def _in_thread(function: Callable[[], Any], timeout: float) -> Any:
    """``function()`` in a daemon thread, awaited for at most ``timeout`` seconds (TimeoutError).
    A daemon thread, not an executor: a connect that hangs past the timeout must not keep the
    command from exiting."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            outcome = (function(), None)
        except BaseException as exc:
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed while we hung: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="recording-check", daemon=True).start()
    async with asyncio.timeout(timeout):
        return await future


# --- the checks -------------------------------------------------------------------------------


def _settings(settings: Settings) -> Finding:
    ami = "off"
    if settings.ami_url:
        host, port, user, _secret = parse_ami_url(settings.ami_url)
        ami = f"{user}@{host}:{port}"
    return Finding("settings", True, (
        f"{len(fields(settings))} settings valid; database {redact_url(normalize_url(settings.database_url))}, "
        f"FastAGI on {settings.agi_listen}, HTTP API {settings.http_listen or 'off'}, AMI {ami}, "
        f"journal {settings.journal_dir}"
    ))


async def _database(settings: Settings, timeout: float) -> list[Finding]:
    """The database, schema and apikey findings: the later ones need the earlier to pass."""
    url = normalize_url(settings.database_url)
    shown = redact_url(url)
    missing = _missing_sqlite_file(url)
    if missing is not None:
        return _no_sqlite_file(missing)
    try:
        store = Store(url)
    except Exception as exc:
        return _database_failed(f"{shown}: {exc}")
    try:
        try:
            current = await _in_thread(store.schema_revision, timeout)
        except TimeoutError:
            return _unreachable(settings, shown, f"{shown}: no answer within {timeout:g} s")
        except StorageUnavailable as exc:
            detail = str(exc) if shown in str(exc) else f"{shown}: {exc}"
            return _unreachable(settings, shown, detail) if exc.outage else _database_failed(detail)
        except Exception as exc:
            return _database_failed(str(exc) if shown in str(exc) else f"{shown}: {exc}")
        found = [Finding("database", True, f"{shown} answers")]
        schema = await _guarded("schema", _schema(current))
        found.append(schema)
        if not schema.ok:
            found.append(Finding("apikey", False, "not checked: the schema is not current"))
            return found
        found.append(await _guarded("apikey", _apikey(store, timeout)))
        webhooks = await _guarded("webhooks", _webhooks(store, timeout))
        if webhooks is not None:
            found.append(webhooks)
        return found
    finally:
        store.close()


def _unreachable(settings: Settings, shown: str, detail: str) -> list[Finding]:
    """An outage (not a wrong setting): serve starts if a snapshot of this database is at hand."""
    found = snapshots.find(settings.journal_dir, shown)
    if found is None:
        return _database_failed(
            f"{detail}; and no directory snapshot of it in {Path(settings.journal_dir).absolute()} to serve from "
            "(one is written once the service has read the directory from the database)"
        )
    age = found.age()
    old = (f" (it is {age / 86400:.1f} days old, older than RECORDING_SNAPSHOT_MAX_AGE: it serves all the same)"
           if age > settings.snapshot_max_age else "")
    return [
        Finding("database", True, (
            f"database unreachable, will serve from the snapshot of {found.when}{old} and journal until it "
            f"answers; {detail}"
        ), warning=True),
        Finding("schema", True, "not checked: the database cannot be reached (serve checks it once it answers)",
                warning=True),
        Finding("apikey", found.directory.api_key_hash is not None, (
            "the snapshot holds an apiKey hash" if found.directory.api_key_hash is not None
            else "none in the snapshot: every apiKey would be refused until the database answers"
        ), warning=True),
    ]


def _database_failed(detail: str) -> list[Finding]:
    return [
        Finding("database", False, detail),
        Finding("schema", False, "not checked: the database cannot be reached"),
        Finding("apikey", False, "not checked: the database cannot be reached"),
    ]


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file the URL names if it does not exist yet (connecting would create it)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None  # Store() reports the bad URL
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path.absolute()


def _no_sqlite_file(path: Path) -> list[Finding]:
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        database = Finding("database", False, f"SQLite file {path} does not exist and {folder} is not a writable directory")
    else:
        database = Finding("database", True, f"SQLite file {path} does not exist yet; {folder} is writable")
    return [
        database,
        Finding("schema", False, f"empty database (no file yet): {UPGRADE}"),
        Finding("apikey", False, "not checked: no database yet"),
    ]


async def _schema(current: str | None) -> Finding:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    if current is None:
        return Finding("schema", False, f"empty database: {UPGRADE}")
    if current == head:
        return Finding("schema", True, f"at the newest migration, {head}")
    try:
        script.get_revision(current)
    except Exception:
        return Finding("schema", False, (
            f"at {current}, a migration this version does not know (made by a newer recording-agi?); "
            f"this version needs {head}"
        ))
    return Finding("schema", False, f"at {current}, this version needs {head}: {UPGRADE}")


async def _apikey(store: Store, timeout: float) -> Finding:
    if await _in_thread(store.api_key_hash, timeout) is None:
        return Finding("apikey", False, (
            "none configured: run 'recording-agi apikey generate' (or 'apikey set -' to choose one)"
        ))
    return Finding("apikey", True, "configured (stored as a hash)")


async def _webhooks(store: Store, timeout: float) -> Finding | None:
    """Webhooks, when there is a subscription: a warning for one whose every try has failed for
    an hour or more, or for deliveries given up (README, "Webhooks")."""
    from ..storage.outbox import Outbox
    from .delivery import shown

    subscriptions = await _in_thread(Outbox(store).subscriptions, timeout)
    if not subscriptions:
        return None
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    failing = [s for s in subscriptions if s.failing_since is not None and s.failing_since <= hour_ago]
    given_up = sum(s.failed for s in subscriptions)
    pending = sum(s.pending for s in subscriptions)
    if failing:
        names = "; ".join(f"{s.id} {shown(s.url)} since {s.failing_since.isoformat(timespec='seconds')}" for s in failing)
        return Finding("webhooks", True, (
            f"failing for an hour or more: {names} ({pending} deliveries pending; see 'recording-agi webhooks "
            "deliveries')"), warning=True)
    if given_up:
        return Finding("webhooks", True, (
            f"{given_up} deliveries given up after 3 days of tries: 'recording-agi webhooks deliveries --failed', "
            "then 'webhooks redeliver --failed'"), warning=True)
    return Finding("webhooks", True, f"{len(subscriptions)} subscriptions, none failing; {pending} deliveries pending")


async def _monitor_template(settings: Settings) -> Finding:
    example = render_file(settings.file_template, uniqueid="1795825765.3", leg=1, extension="410",
                          when=datetime.now(timezone.utc), leg_id="5f0c2a9b1d2e4f6a8b9c0d1e2f3a4b5c")
    if not PurePosixPath(example).parent.is_absolute():
        return Finding("monitor template", False, (
            f"{settings.monitor_template!r} gives {example!r}, not an absolute path: MixMonitor would put it "
            "under its own monitor directory, and the stored file name would not say where it is "
            "(set RECORDING_MONITOR_TEMPLATE to an absolute path)"
        ))
    added = "" if has_id(settings.monitor_template) else (
        "; it has no {id}, so the leg's id is added before the suffix (no two legs may share a file)"
    )
    return Finding("monitor template", True, f"renders, e.g. {example} (a path on the Asterisk host){added}")


async def _files(settings: Settings, timeout: float) -> Finding:
    """Whether this host sees the monitor directory: needed to play, purge and hash recordings,
    so a failure only when RECORDING_RETENTION asks for purges."""
    monitor = MonitorDirectory.of(settings)
    try:
        problem = await _in_thread(monitor.problem, timeout)
    except TimeoutError:
        problem = f"{monitor.local_root} gave no answer within {timeout:g} s (a share that hangs?)"
    if problem is None and settings.retention:
        try:
            await _in_thread(lambda: _probe_writable(monitor.local_root), timeout)
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror or str(exc) if isinstance(exc, OSError) else f"no answer within {timeout:g} s"
            return Finding("recordings' files", False, (
                f"RECORDING_RETENTION is {settings.retention} but {monitor.local_root} is not writable by this "
                f"service ({reason}), so no file can be purged: under systemd list it in ReadWritePaths= and give "
                "the service Asterisk's group (SupplementaryGroups=; see contrib/recording-agi.service)"
            ))
    if problem is None:
        return Finding("recordings' files", True, f"{monitor.local_root} is visible: recordings can be played, "
                                                  "hashed and purged")
    if settings.retention:
        return Finding("recordings' files", False, f"RECORDING_RETENTION is {settings.retention} but nothing can "
                                                   f"be purged: {problem}")
    return Finding("recordings' files", True, f"not visible (playing, hashing and purging are off): {problem}")


async def _journal(settings: Settings, timeout: float) -> Finding:
    directory = Path(settings.journal_dir).absolute()
    try:
        state = await _in_thread(lambda: _probe_directory(directory), timeout)
    except TimeoutError:
        return Finding("journal", False, f"{directory}: no answer from the file system within {timeout:g} s")
    except OSError as exc:
        return Finding("journal", False, f"{directory} cannot be used: {exc.strerror or exc} ({exc.filename or directory})")
    return Finding("journal", True, f"{directory} {state}")


def _probe_writable(directory: Path) -> None:
    """Makes and removes a file in ``directory``, as a purge deletes one; raises OSError."""
    fd, name = tempfile.mkstemp(prefix=".recording-agi-check-", dir=directory)
    os.close(fd)
    os.unlink(name)


def _probe_directory(directory: Path) -> str:
    """Makes the directory if needed, writes, syncs and removes a file in it, and removes the
    directories it made. Returns what it found; raises OSError when it cannot."""
    missing = []
    existing = directory
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=0o700)
            made.append(folder)
        handle, name = tempfile.mkstemp(prefix=".recording-check-", dir=directory)
        try:
            os.write(handle, b"recording-agi check\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(name)
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
    if missing:
        return "does not exist yet and can be created (the service creates it)"
    from ..storage.journal import Journal

    # serve --workers gives each worker a journal of its own in a worker-N folder
    folders = [directory, *sorted(p for p in directory.glob("worker-*") if p.is_dir())]
    waiting = sum(Journal(folder).pending() for folder in folders)
    return f"is writable; {waiting} writes wait for replay" if waiting else "is writable"


async def _ami(settings: Settings, timeout: float) -> Finding:
    if not settings.ami_url:
        return Finding("ami", True, "not configured (RECORDING_AMI_URL is empty): the HTTP API answers 503, and "
                                    "calls are not followed through transfers and queues")
    client = AMIClient.from_url(settings.ami_url, action_timeout=min(settings.ami_timeout, timeout),
                                connect_timeout=timeout)
    where = f"{client.address} as {client.username!r}"
    problem = await _reach(client.host, client.port, timeout)
    if problem is not None:
        return Finding("ami", False, f"{client.address} {problem}")
    with _quiet("recording.ami"):
        await client.start()
        try:
            await client.wait_connected(timeout)
        except AMILoginRefused as exc:
            return Finding("ami", False, f"login at {where} refused: {exc} (check the user and secret in manager.conf)")
        except AMIUnavailable:
            return Finding("ami", False, (
                f"{client.address} accepts connections but no AMI login within {timeout:g} s "
                "(is it Asterisk's manager port?)"
            ))
        finally:
            await client.stop()
    return Finding("ami", True, f"logged in at {where} (manager {client.version}); calls are followed through "
                                "transfers and queues (the user must read call and dialplan events)")


async def _reach(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to host:port opens, else why not, in words."""
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"unreachable: no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return "refused the connection (is Asterisk running, with its manager enabled on that port?)"
    except OSError as exc:
        return f"unreachable: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return None


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Keeps a logger's warnings out of the check's output: the finding says it better, and
    'retrying in the background' is not true of a check."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _listen_addresses(settings: Settings) -> list[tuple[str, str]]:
    found = [("agi listen", settings.agi_listen)]
    if settings.http_listen:
        found.append(("http listen", settings.http_listen))
    if settings.pages_address is not None:
        found.append(("pages listen", settings.pages_listen))
    return found


async def _listen(name: str, value: str, timeout: float, systemd_sockets: bool = False) -> Finding:
    host, port = parse_listen(value, name)
    if port == 0:
        return Finding(name, True, f"{value}: any free port (0)")
    if systemd_sockets:
        # NOTE: systemd passes the sockets to ExecStart= only, not to ExecStartPre=, and holds
        # the port meanwhile: there is nothing here to look at but the setting.
        return Finding(name, True, f"{value}: not bound here (--systemd-sockets: systemd's socket unit holds it and hands it to serve)")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except TimeoutError:
        return Finding(name, False, f"{value}: {host} not resolved within {timeout:g} s")
    except socket.gaierror as exc:
        return Finding(name, False, f"{value}: {host} cannot be resolved ({exc.strerror})")
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        problem = _bind(family, kind, proto, address)
        if problem is not None:
            return Finding(name, False, f"{value}: {problem}")
    return Finding(name, True, f"{value} can be bound")


def _bind(family: int, kind: int, proto: int, address: tuple) -> str | None:
    """None if the address can be bound now (as the server binds it), else why not."""
    with socket.socket(family, kind, proto) as sock:
        # NOTE: the servers set SO_REUSEADDR too, so a port held only by TIME_WAIT is fine,
        # while a port another socket listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use by another program (is recording-agi already running?)"
            if exc.errno == errno.EACCES:
                return "not allowed (ports below 1024 need a privilege the service does not have)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no such address on this host"
            return f"cannot be bound: {exc.strerror or exc}"
    return None
