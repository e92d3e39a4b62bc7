"""The config file: INI or TOML, keys by field or environment name, Settings' conversions,
clear errors naming the file and line; the precedence of its layers; what a reload changes."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from recording.ops.config import Settings
from recording.ops.configfile import RELOADABLE, load_settings, read_config_file, reload_changes
from recording.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "recording-agi.conf.sample"
# The access settings the lead adds with recording/ops/access.py; RELOADABLE names them ahead.
ACCESS_SETTINGS = {"agi_allow", "http_allow", "apikey_failure_window", "apikey_failure_threshold",
                   "apikey_failure_max_delay"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ini_by_field_and_environment_names_any_case(tmp_path):
    path = write(tmp_path, "recording-agi.conf", """
# a comment
; another
[recording-agi]
database_url = postgresql+psycopg://rec:p%40ss@db/recording
RECORDING_LOG_LEVEL = DEBUG
Reply_Timeout = 2.5
recording_max_sessions = 10
monitor_template = /m/{date:%Y/%m/%d}/{uniqueid}-{leg}.wav
""")
    assert read_config_file(path) == {
        "database_url": "postgresql+psycopg://rec:p%40ss@db/recording",
        "log_level": "DEBUG",
        "reply_timeout": 2.5,
        "max_sessions": 10,
        "monitor_template": "/m/{date:%Y/%m/%d}/{uniqueid}-{leg}.wav",
    }


def test_toml_by_extension_and_by_content(tmp_path):
    text = """
[recording-agi]
reply_timeout = 3          # an integer is a fine float
RECORDING_BACKLOG = 128
log_level = "WARNING"
session_timeout = "12.5"   # a string is converted as an environment value
"""
    expected = {"reply_timeout": 3.0, "backlog": 128, "log_level": "WARNING", "session_timeout": 12.5}
    assert read_config_file(write(tmp_path, "a.toml", text)) == expected
    assert read_config_file(write(tmp_path, "a.conf", text)) == expected
    assert isinstance(read_config_file(write(tmp_path, "b.toml", text))["reply_timeout"], float)


def test_an_empty_value_leaves_the_default_and_an_empty_file_gives_nothing(tmp_path):
    assert read_config_file(write(tmp_path, "a.conf", "[recording-agi]\nhttp_listen =\nreply_timeout =\n")) == {}
    assert read_config_file(write(tmp_path, "b.conf", "")) == {}
    assert read_config_file(write(tmp_path, "c.conf", "# only comments\n")) == {}
    assert read_config_file(write(tmp_path, "d.toml", "[recording-agi]\n")) == {}


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("a.conf", "[recording-agi]\nlog_level = INFO\nreply_timout = 2\n", "line 3: unknown setting 'reply_timout'"),
        ("a.toml", '[recording-agi]\nRECORDING_NOPE = "x"\n', "line 2: unknown setting 'RECORDING_NOPE'"),
        ("a.conf", "[recording-agi]\nreply_timeout = soon\n", "line 2: RECORDING_REPLY_TIMEOUT='soon' is not a valid float"),
        ("a.toml", "[recording-agi]\nmax_sessions = 1.5\n", "RECORDING_MAX_SESSIONS=1.5 is not a valid int"),
        ("a.toml", "[recording-agi]\nmax_sessions = true\n", "RECORDING_MAX_SESSIONS=True is not a valid int"),
        ("a.toml", "[recording-agi]\nlog_level = [1]\n", "RECORDING_LOG_LEVEL=[1] is not a valid str"),
        ("a.conf", "[recording-agi]\nlog_level = INFO\nRECORDING_LOG_LEVEL = DEBUG\n",
         "line 3: 'recording_log_level' sets log_level again (already set as 'log_level')"),
        ("a.conf", "[recording_agi]\nlog_level = INFO\n", "unknown section [recording_agi]"),
        ("a.conf", "[DEFAULT]\nlog_level = INFO\n", "unknown section [DEFAULT]"),
        ("a.toml", "log_level = 'INFO'\n", "'log_level' is not the [recording-agi] table"),
        ("a.conf", "log_level = INFO\n", "is not a valid INI file"),
        ("a.ini", "[recording-agi]\nlog_level = INFO\nlog_level = DEBUG\n", "is not a valid INI file"),
        ("a.toml", "[recording-agi]\nlog_level = \n", "is not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as error:
        read_config_file(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*missing\.conf cannot be read"):
        read_config_file(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_config_file(tmp_path)
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"[recording-agi]\nlog_level = \xff\n")
    with pytest.raises(ConfigError, match=r"binary\.conf: not UTF-8"):
        read_config_file(binary)


def test_precedence_defaults_file_environment_command_line(tmp_path):
    path = write(tmp_path, "a.conf", "[recording-agi]\nreply_timeout = 2\nsession_timeout = 20\n"
                                     "agi_listen = 127.0.0.1:5000\nlog_level = DEBUG\n")
    environ = {"RECORDING_SESSION_TIMEOUT": "25", "RECORDING_AGI_LISTEN": "127.0.0.1:6000", "RECORDING_LOG_LEVEL": ""}
    settings = load_settings(path, environ, agi_listen="127.0.0.1:7000", database_url=None)
    assert settings.reply_timeout == 2.0  # file over default
    assert settings.session_timeout == 25.0  # environment over file
    assert settings.agi_listen == "127.0.0.1:7000"  # command line over both
    assert settings.log_level == "DEBUG"  # an empty variable does not hide the file
    assert settings.environment_timeout == Settings().environment_timeout
    assert load_settings(None, {}) == Settings()


def test_invalid_file_values_are_refused_by_settings(tmp_path):
    path = write(tmp_path, "a.conf", "[recording-agi]\nmax_sessions = 0\n")
    with pytest.raises(ConfigError, match="RECORDING_MAX_SESSIONS must be greater than 0"):
        load_settings(path, {})


def test_reload_changes_splits_reloadable_from_restart():
    old = Settings()
    new = old.with_(log_level="DEBUG", reply_timeout=3.0, agi_listen="127.0.0.1:5000", database_url="sqlite:///b")
    assert reload_changes(old, new) == (
        {"reply_timeout": 3.0, "log_level": "DEBUG"},
        ["database_url", "agi_listen"],
    )
    assert reload_changes(old, Settings()) == ({}, [])


def test_reloadable_names_are_settings():
    names = {spec.name for spec in fields(Settings)}
    assert RELOADABLE - ACCESS_SETTINGS <= names
    # Bound at start-up: the listeners, the database, AMI, the journal and the buffer sizes.
    assert not RELOADABLE & {"database_url", "agi_listen", "http_listen", "ami_url", "journal_dir", "backlog",
                             "max_sessions", "max_line_bytes"}


def test_the_sample_names_every_setting_with_its_default(tmp_path):
    text = SAMPLE.read_text()
    assert read_config_file(SAMPLE) == {}  # everything commented out: the defaults
    for spec in fields(Settings):
        assert f"\n#{spec.name} =" in text, f"{spec.name} missing from {SAMPLE.name}"
        assert spec.metadata["env"] in text
    # Uncommented, every line gives the default it shows.
    uncommented = re.sub(r"(?m)^#(?=[a-z_]+ =)", "", text)
    values = read_config_file(write(tmp_path, "all.conf", uncommented))
    assert set(values) == {spec.name for spec in fields(Settings) if spec.default != ""}
    assert Settings(**values) == Settings()


def test_the_sample_in_contrib_is_what_config_sample_prints(capsys):
    from recording.cli import main
    from recording.ops.configfile import sample_text

    assert SAMPLE.read_text() == sample_text()
    assert main(["config-sample"]) == 0
    assert capsys.readouterr().out == sample_text()
