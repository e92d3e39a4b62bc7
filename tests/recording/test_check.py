"""``recording-agi check`` against a good set-up and against each way one can be broken: the
database away, the schema empty, behind or unknown, no apiKey, a relative monitor template, a
journal directory that cannot be made, AMI closed or refusing the login, a port in use. Also
the systemd unit shipped beside it."""

from __future__ import annotations

import asyncio
import configparser
import os
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from recording import apikey
from recording.ops.check import Finding, check, format_findings
from recording.ops.config import Settings
from recording.storage.store import Store
from tests.fake_ami import FakeAMI

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "recording-agi.service"


def run(settings: Settings, timeout: float = 3.0) -> dict[str, Finding]:
    async def bounded():
        return await asyncio.wait_for(check(settings, timeout=timeout), 20)

    findings = asyncio.run(bounded())
    assert len({f.name for f in findings}) == len(findings)
    return {f.name: f for f in findings}


def failed(findings: dict[str, Finding]) -> set[str]:
    return {name for name, finding in findings.items() if not finding.ok}


@pytest.fixture
def good_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/recording.sqlite3"
    store = Store(url)
    store.upgrade()
    store.set_api_key_hash(apikey.hash_key("k1-test-key"))
    store.close()
    return url


@pytest.fixture
def good(tmp_path, good_url) -> Settings:
    return Settings(database_url=good_url, journal_dir=str(tmp_path / "journal"), agi_listen="127.0.0.1:0")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_good_setup_passes_every_check(good, tmp_path):
    findings = run(good)
    assert failed(findings) == set(), format_findings(list(findings.values()))
    assert list(findings) == ["settings", "database", "schema", "apikey", "monitor template", "recordings' files",
                              "journal", "ami", "agi listen"]
    assert "at the newest migration" in findings["schema"].detail
    assert "not configured" in findings["ami"].detail
    assert "can be created" in findings["journal"].detail
    assert not (tmp_path / "journal").exists()  # the probe leaves nothing behind
    (tmp_path / "journal").mkdir()
    assert run(good)["journal"].detail.endswith("is writable")
    assert list((tmp_path / "journal").iterdir()) == []


def test_the_journal_finding_counts_writes_waiting_for_replay(good, tmp_path):
    # Two entries left by a worker of serve --workers, one by a single process: the files as
    # recording.storage.journal names them, counted by line.
    (tmp_path / "journal" / "worker-1").mkdir(parents=True)
    (tmp_path / "journal" / "worker-1" / "journal-00000000000000000001.jsonl").write_text("{}\n{}\n")
    (tmp_path / "journal" / "journal-00000000000000000002.jsonl").write_text("{}\n")
    finding = run(good)["journal"]
    assert finding.ok and finding.detail.endswith("is writable; 3 writes wait for replay")


def test_format_findings():
    text = format_findings([Finding("database", True, "answers"), Finding("schema", False, "empty")])
    assert text == "ok   database: answers\nFAIL schema: empty"


def test_unreachable_postgresql_is_reported_quickly_without_its_password(good):
    started = time.monotonic()
    findings = run(good.with_(database_url="postgresql+psycopg://root:hunter2@127.0.0.1:1/x"))
    assert time.monotonic() - started < 10
    assert {"database", "schema", "apikey"} <= failed(findings)
    assert "127.0.0.1" in findings["database"].detail
    assert "not checked" in findings["schema"].detail
    assert all("hunter2" not in f.detail for f in findings.values())
    assert not failed(findings) - {"database", "schema", "apikey"}


def test_an_empty_database_says_to_upgrade(good, tmp_path):
    url = f"sqlite:///{tmp_path}/empty.sqlite3"
    Store(url).schema_revision()  # the file exists, without a schema
    findings = run(good.with_(database_url=url))
    assert findings["database"].ok
    assert not findings["schema"].ok
    assert findings["schema"].detail == "empty database: run 'recording-agi db upgrade'"
    assert not findings["apikey"].ok


def test_a_missing_sqlite_file_is_not_created(good, tmp_path):
    path = tmp_path / "nothing-yet.sqlite3"
    findings = run(good.with_(database_url=f"sqlite:///{path}"))
    assert findings["database"].ok and "does not exist yet" in findings["database"].detail
    assert "run 'recording-agi db upgrade'" in findings["schema"].detail and not findings["schema"].ok
    assert not path.exists()
    findings = run(good.with_(database_url=f"sqlite:///{tmp_path}/no/such/dir/x.sqlite3"))
    assert not findings["database"].ok


def test_an_outdated_schema_says_to_upgrade(good, tmp_path):
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    Store(url).upgrade("0001")
    findings = run(good.with_(database_url=url))
    assert findings["schema"].detail.startswith("at 0001, this version needs ")
    assert findings["schema"].detail.endswith("run 'recording-agi db upgrade'")
    assert failed(findings) == {"schema", "apikey"}


def test_a_schema_from_a_newer_version(good, good_url):
    store = Store(good_url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    detail = run(good)["schema"].detail
    assert "does not know" in detail and "9999" in detail


def test_no_apikey(good, tmp_path):
    url = f"sqlite:///{tmp_path}/nokey.sqlite3"
    Store(url).upgrade()
    findings = run(good.with_(database_url=url))
    assert failed(findings) == {"apikey"}
    assert "recording-agi apikey generate" in findings["apikey"].detail


def test_a_relative_monitor_template(good):
    findings = run(good.with_(monitor_template="{uniqueid}-{leg}.wav"))
    assert failed(findings) == {"monitor template"}
    assert "not an absolute path" in findings["monitor template"].detail


def test_the_recordings_files_must_be_visible_only_for_a_retention(good, tmp_path):
    template = f"{tmp_path}/monitor/{{uniqueid}}-{{leg}}.wav"
    unseen = run(good.with_(monitor_template=template))
    refused = run(good.with_(monitor_template=template, retention="90d"))
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "1795825765.3-1.wav").write_bytes(b"RIFF")
    seen = run(good.with_(monitor_template=template, retention="90d"))

    assert "recordings' files" not in failed(unseen)
    assert "not visible (playing, hashing and purging are off)" in unseen["recordings' files"].detail
    assert failed(refused) == {"recordings' files"}
    assert "RECORDING_RETENTION is 90d but nothing can be purged" in refused["recordings' files"].detail
    assert seen["recordings' files"].ok
    assert seen["recordings' files"].detail.startswith(f"{tmp_path}/monitor is visible")


def test_a_journal_directory_that_cannot_be_made(good, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    findings = run(good.with_(journal_dir=str(blocker / "journal")))
    assert failed(findings) == {"journal"}
    assert "Not a directory" in findings["journal"].detail
    findings = run(good.with_(journal_dir=str(blocker)))
    assert failed(findings) == {"journal"}


def test_ami_good_and_wrong_secret(good):
    with FakeAMI(secret="right-secret") as fake:
        findings = run(good.with_(ami_url=fake.url))
        assert failed(findings) == set(), findings["ami"].detail
        assert findings["ami"].detail.startswith(f"logged in at 127.0.0.1:{fake.port} as 'recording'")
        assert "calls are followed through transfers and queues" in findings["ami"].detail
        findings = run(good.with_(ami_url=fake.url.replace("right-secret", "wrong-secret")))
        assert failed(findings) == {"ami"}
        assert "refused" in findings["ami"].detail and "Authentication failed" in findings["ami"].detail
        assert [m["Secret"] for m in fake.received("Login")] == ["right-secret", "wrong-secret"]
    details = " ".join(f.detail for f in findings.values())
    assert "right-secret" not in details and "wrong-secret" not in details


def test_ami_on_a_closed_port(good):
    findings = run(good.with_(ami_url=f"ami://recording:s3cret@127.0.0.1:{closed_port()}"))
    assert failed(findings) == {"ami"}
    assert "refused the connection" in findings["ami"].detail
    assert "s3cret" not in findings["ami"].detail


def test_a_port_in_use_is_a_finding(good):
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        findings = run(good.with_(agi_listen=f"127.0.0.1:{port}", http_listen=f"127.0.0.1:{closed_port()}"))
    assert failed(findings) == {"agi listen"}
    assert "in use" in findings["agi listen"].detail
    assert findings["http listen"].ok


def test_the_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read(UNIT)
    service = unit["Service"]
    expected = {
        "User": "recording-agi",
        "ExecStartPre": "/usr/local/bin/recording-agi check",
        "ExecStart": "/usr/local/bin/recording-agi serve",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartSec": "2",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "20",
        "EnvironmentFile": "-/etc/recording-agi.env",
        "StateDirectory": "recording-agi",
        "WorkingDirectory": "/var/lib/recording-agi",
        "StandardOutput": "journal",
        "StandardError": "journal",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "DynamicUser" not in service
    # ProtectSystem=strict makes every folder read-only but those listed: retention deletes
    # files in the default monitor directory, whose files belong to Asterisk's group.
    from recording.ops.config import Settings
    from recording.storage.audio import MonitorDirectory

    assert service["ReadWritePaths"] == f"-{MonitorDirectory.of(Settings()).local_root}"
    assert service["SupplementaryGroups"] == "asterisk"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_a_monitor_folder_the_service_cannot_write_fails_with_a_retention(store, database_url, tmp_path):
    """What systemd's ProtectSystem=strict does to a folder not in ReadWritePaths=: the same
    folder, read-only in the service's own mount namespace. Every purge would fail there."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "mount", "--bind", str(tmp_path), str(tmp_path)], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (unshare -m and mount need root)")
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    (monitor / "1795825765.3-1.wav").write_bytes(b"RIFF")
    env = {**os.environ, "RECORDING_MONITOR_TEMPLATE": f"{monitor}/{{uniqueid}}-{{leg}}.wav",
           "RECORDING_RETENTION": "90d", "RECORDING_JOURNAL_DIR": str(tmp_path / "journal")}
    check = [sys.executable, "-m", "recording", "--database-url", database_url, "check", "--listen", "127.0.0.1:0"]

    def line(read_only: bool) -> str:
        protect = f"mount --bind {monitor} {monitor} && mount -o remount,ro,bind {monitor} && " if read_only else ""
        done = subprocess.run(["unshare", "-m", "sh", "-c", protect + 'exec "$@"', "sh", *check],
                              capture_output=True, text=True, env=env, timeout=60)
        return next(row for row in done.stdout.splitlines() if "recordings' files" in row)

    writable, read_only = line(False), line(True)

    assert writable.startswith("ok") and "is visible" in writable
    assert read_only.startswith("FAIL") and "not writable by this service (Read-only file system)" in read_only
    assert "ReadWritePaths=" in read_only
    assert list(monitor.iterdir()) == [monitor / "1795825765.3-1.wav"]
