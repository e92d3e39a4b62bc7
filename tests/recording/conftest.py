"""Fixtures: a real database per backend (SQLite file, PostgreSQL over psycopg), migrated once
with the project's own migrations and emptied before each test, and the running service.

The suite runs once per backend. RECORDING_TEST_BACKENDS=sqlite (or postgresql) narrows it;
RECORDING_TEST_POSTGRES names the server (default: the local one, as root, trust auth).
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from sqlalchemy import text

from recording import apikey
from recording.ops.config import Settings
from recording.storage.store import Store

from tests.fake_asterisk import FakeAsterisk
from tests.service_runner import RunningService

BACKENDS = [b.strip() for b in os.environ.get("RECORDING_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]
POSTGRES = os.environ.get("RECORDING_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")
API_KEY = "k1-test-key"
TABLES = ("webhook_deliveries", "webhook_events", "webhook_subscriptions", "recording_pauses", "recording_legs",
          "call_records", "extension_attachments", "user_groups", "groups", "users", "system_variables",
          # issue 22: the pages, tokens and the audit
          "leg_checks", "audit_events", "api_tokens", "page_sessions", "passwords")


@pytest.fixture(scope="session")
def key_hash() -> str:
    return apikey.hash_key(API_KEY)


def _postgres_database():
    name = f"recording_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES.rsplit("/", 1)[0]
    return name, f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def _drop_postgres_database(name: str) -> None:
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(backend: str, folder) -> tuple[str, str | None]:
    """An empty database of ``backend``: its URL, and the PostgreSQL name to drop after."""
    if backend == "sqlite":
        return f"sqlite:///{folder}/recording.sqlite3", None
    if backend == "postgresql":
        name, url = _postgres_database()
        return url, name
    raise ValueError(f"unknown backend {backend}")


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    """A migrated, empty database of each backend, for the whole run."""
    url, name = _fresh_database(request.param, tmp_path_factory.mktemp("sqlite"))
    store = Store(url)
    store.upgrade()
    store.close()
    yield url
    if name:
        _drop_postgres_database(name)


@pytest.fixture
def empty_database_url(database_url, tmp_path):
    """A database of the same backend as ``database_url`` with no schema at all, for tests that
    migrate by themselves (up, down, from an older revision)."""
    url, name = _fresh_database("sqlite" if database_url.startswith("sqlite") else "postgresql", tmp_path)
    yield url
    if name:
        _drop_postgres_database(name)


@pytest.fixture
def store(database_url, key_hash):
    """The database, emptied, with the test apiKey stored."""
    store = Store(database_url)
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
    store.set_api_key_hash(key_hash)
    yield store
    store.close()


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    # NOTE: a generous database budget, so that a slow CI disk does not send writes to the
    # journal in tests that are not about the journal.
    return Settings(
        database_url=database_url,
        journal_dir=str(tmp_path / "journal"),
        database_budget=5.0,
        agi_listen="127.0.0.1:0",
        monitor_template="/var/spool/asterisk/monitor/{date:%Y/%m/%d}/{uniqueid}-{leg}-{id:.8}.wav",
        environment_timeout=2.0,
        reply_timeout=2.0,
        session_timeout=10.0,
        directory_refresh=0.5,
        # NOTE: the service runs on both loops it supports: uvloop on one backend, the
        # standard library's on the other.
        event_loop="uvloop" if database_url.startswith("sqlite") else "asyncio",
    )


@pytest.fixture
def service(store, settings):
    with RunningService(settings) as running:
        yield running


@pytest.fixture
def asterisk(service) -> FakeAsterisk:
    return FakeAsterisk(service.port)


@pytest.fixture
def fake_ami():
    from tests.fake_ami import FakeAMI

    ami = FakeAMI().start()
    yield ami
    ami.stop()


@pytest.fixture
def ami_service(store, settings, fake_ami):
    """The service with the HTTP API on and AMI pointed at the fake manager."""
    # The vendor's form (apiKey and loginName) is what these tests use: the CRM is trusted here.
    configured = settings.with_(http_listen="127.0.0.1:0", ami_url=fake_ami.url, ami_timeout=1.0,
                                trust_crm_login_name="true")
    with RunningService(configured) as running:
        running.run(running.app.manager.client.wait_connected(5))
        yield running


@pytest.fixture
def http(ami_service):
    from tests.http_client import HTTPClient

    return HTTPClient(ami_service.app.http_port)


@pytest.fixture
def monitor_dir(tmp_path):
    """Asterisk's monitor directory, on the disk this host shares with the fake Asterisk."""
    return tmp_path / "monitor"


@pytest.fixture
def files_settings(settings, monitor_dir) -> Settings:
    """The service's settings with recordings in ``monitor_dir``, counted complete after 0.3 s
    without a change, and looked for every 0.1 s."""
    return settings.with_(
        monitor_template=f"{monitor_dir}/{{date:%Y/%m/%d}}/{{uniqueid}}-{{leg}}-{{id:.8}}.wav", file_quiet=0.3,
        hash_interval=0.1,
        # The vendor's form (apiKey and loginName) is what these tests use: the CRM is trusted here.
        trust_crm_login_name="true",
    )


@pytest.fixture
def files_service(store, files_settings):
    """The service with its HTTP API, reading the recordings' files."""
    with RunningService(files_settings.with_(http_listen="127.0.0.1:0")) as running:
        yield running


@pytest.fixture
def pbx(files_service) -> FakeAsterisk:
    """A fake Asterisk on the same host as the service: its MixMonitor writes real files."""
    from pathlib import Path

    return FakeAsterisk(files_service.port, filesystem=Path("/"))


@pytest.fixture
def people(store):
    """fred and ann (agents) and boss (a Recording Manager)."""
    store.add_user("fred")
    store.add_user("ann")
    store.add_user("boss", ["Recording Manager"])


@pytest.fixture
def cli(database_url, files_settings, monkeypatch, capsys):
    """``recording-agi`` run in this process against the database, reading the same monitor
    directory as the service: ``cli(*args)`` gives (exit status, stdout, stderr)."""
    from recording.cli import main

    monkeypatch.setenv("RECORDING_MONITOR_TEMPLATE", files_settings.monitor_template)
    for name in ("RECORDING_RETENTION", "RECORDING_MONITOR_MOUNT"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
