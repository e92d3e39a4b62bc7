"""The recording-agi command: administration in-process against each backend, and `serve` as a
real process on a fresh SQLite file, the way the README's first command runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recording.cli import main
from tests.recording.conftest import API_KEY
from tests.fake_asterisk import FakeAsterisk


def run(database_url, *args, capsys) -> tuple[int, str, str]:
    code = main(["--database-url", database_url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_users_extensions_and_find_as_json(store, database_url, capsys):
    assert run(database_url, "users", "add", "fred", capsys=capsys)[0] == 0
    code, out, _ = run(database_url, "users", "add", "boss", "--group", "Recording Manager", capsys=capsys)
    assert code == 0 and "Recording Manager" in out
    assert run(database_url, "extensions", "attach", "410", "fred", capsys=capsys)[0] == 0
    from tests.recording.test_store import leg

    store.commit([leg("9.1", tag="CRM-9"), leg("9.2", tag="CRM-9", extension="411")])

    code, out, _ = run(database_url, "recordings", "find", "--tag", "CRM-9", "--json", capsys=capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2
    assert set(rows[0]) >= {"uniqueId", "leg", "tag", "owner", "ownership", "file", "channel", "extension",
                            "start", "end", "state"}
    assert [(r["uniqueId"], r["owner"], r["ownership"]) for r in rows] == [
        ("9.1", "fred", "EXTENSION"), ("9.2", None, "DEFAULT")
    ]
    _, out, _ = run(database_url, "recordings", "find", "--tag", "CRM-9", "--as", "fred", "--json", capsys=capsys)
    assert [r["uniqueId"] for r in json.loads(out)] == ["9.1"]
    _, out, _ = run(database_url, "recordings", "find", "--tag", "CRM-9", "--as", "boss", "--json", capsys=capsys)
    assert len(json.loads(out)) == 2
    code, _, err = run(database_url, "recordings", "find", "--as", "ghost", capsys=capsys)
    assert code == 1 and "unknown user 'ghost'" in err


def test_find_prints_a_table_by_unique_id(store, database_url, capsys):
    from tests.recording.test_store import leg

    store.commit([leg("9.3", tag="T")])

    code, out, _ = run(database_url, "recordings", "find", "--unique-id", "9.3", capsys=capsys)
    assert code == 0 and out.startswith("9.3\t1\trecording\tDEFAULT\t-\tT\t")


def test_attach_unknown_user_fails_clearly(store, database_url, capsys):
    code, _, err = run(database_url, "extensions", "attach", "410", "ghost", capsys=capsys)
    assert code == 1 and "unknown user 'ghost'" in err


def test_apikey_generate_prints_a_key_and_stores_only_its_hash(store, database_url, capsys):
    code, out, _ = run(database_url, "apikey", "generate", capsys=capsys)
    key = out.strip()

    assert code == 0 and len(key) >= 40
    stored = store.api_key_hash()
    assert key not in stored and stored.startswith("scrypt$")
    from recording import apikey

    assert apikey.verify(key, stored)


def test_apikey_set_from_stdin_keeps_it_out_of_the_process_list(store, database_url, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    assert run(database_url, "apikey", "set", "-", capsys=capsys)[0] == 0

    from recording import apikey

    assert apikey.verify("from-stdin", store.api_key_hash())


def test_db_upgrade_and_current(store, database_url, capsys):
    head = store.head_revision()
    code, out, _ = run(database_url, "db", "upgrade", capsys=capsys)
    assert code == 0 and out.strip().endswith(f"-> {head}")
    code, out, _ = run(database_url, "db", "current", capsys=capsys)
    assert code == 0 and out.startswith(head)


def test_bad_settings_exit_2_with_the_setting_named(capsys, monkeypatch):
    monkeypatch.setenv("RECORDING_AGI_LISTEN", "nowhere")
    code = main(["--database-url", "sqlite:///x.sqlite3", "serve"])
    assert code == 2 and "RECORDING_AGI_LISTEN 'nowhere' is not HOST:PORT" in capsys.readouterr().err


def test_unreachable_database_exits_1_without_the_password(capsys):
    code = main(["--database-url", "postgresql://u:hunter2@127.0.0.1:1/x", "users", "add", "a"])
    err = capsys.readouterr().err
    assert code == 1 and "unavailable" in err and "hunter2" not in err


class Serve:
    """`recording-agi serve` as a child process, on a port it picks itself."""

    def __init__(self, database_url: str, cwd: Path, extra_env: dict | None = None):
        env = {**os.environ, "RECORDING_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        env.pop("RECORDING_AGI_LISTEN", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recording", "serve", "--listen", "127.0.0.1:0"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = re.search(r"FastAGI listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return
        self.process.kill()
        raise AssertionError("serve did not start:\n" + "".join(self.log))

    def stop(self) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, "".join(self.log) + err


def test_serve_on_a_fresh_sqlite_file_makes_schema_and_key_once(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.sqlite3"

    first = Serve(url, tmp_path)
    call = FakeAsterisk(first.port).call("recording/start?tag=fresh&apiKey=not-it")
    code, out, err = first.stop()

    assert call.status == "DENIED"
    assert code == 0, err
    key = re.search(r"shown only this once:\s+(\S+)", out).group(1)
    assert key not in err
    # A first start's log is read by someone new to the service: no library warning in it.
    assert "Warning" not in err and "creating the schema" in err

    second = Serve(url, tmp_path)
    call = FakeAsterisk(second.port).call(f"recording/start?tag=fresh&apiKey={key}")
    code, out, err = second.stop()

    assert call.status == "STARTED"
    assert code == 0 and "shown only this once" not in out
    assert "status=STARTED" in err and key not in err
    assert "creating the schema" not in err


@pytest.mark.parametrize("key", [API_KEY])
def test_serve_uses_the_database_url_from_the_environment(tmp_path, key):
    from recording import apikey
    from recording.storage.store import Store

    url = f"sqlite:///{tmp_path}/env.sqlite3"
    store = Store(url)
    store.upgrade()
    store.set_api_key_hash(apikey.hash_key(key))
    store.close()

    server = Serve(url, tmp_path)
    call = FakeAsterisk(server.port).call(f"recording/start?apiKey={key}")
    code, out, _ = server.stop()

    assert call.status == "STARTED" and code == 0 and out == ""


@pytest.mark.parametrize("choice, named", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_serve_runs_on_the_event_loop_it_is_told(tmp_path, choice, named):
    from recording import apikey
    from recording.storage.store import Store

    url = f"sqlite:///{tmp_path}/loop.sqlite3"
    store = Store(url)
    store.upgrade()
    store.set_api_key_hash(apikey.hash_key(API_KEY))
    store.close()

    server = Serve(url, tmp_path, {"RECORDING_EVENT_LOOP": choice})
    call = FakeAsterisk(server.port).call(f"recording/start?tag=loop&apiKey={API_KEY}")
    code, _, err = server.stop()

    assert call.status == "STARTED" and code == 0, err
    assert re.search(rf"event loop: {named}\b", err), err


def test_an_event_loop_that_is_not_known_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("RECORDING_EVENT_LOOP", "twisted")
    code = main(["--database-url", "sqlite:///x.sqlite3", "serve"])
    assert code == 2 and "RECORDING_EVENT_LOOP 'twisted': auto, uvloop or asyncio" in capsys.readouterr().err
