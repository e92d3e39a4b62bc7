"""Settings: defaults, environment variables, and a clear error naming the faulty setting."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from recording.ops.config import DEFAULT_MONITOR_TEMPLATE, Settings, describe, render_file
from recording.errors import ConfigError


def test_defaults_are_safe():
    settings = Settings.load(environ={})
    assert settings.agi_address == ("127.0.0.1", 4573)
    assert settings.database_url.startswith("sqlite:///")
    assert settings.monitor_template == DEFAULT_MONITOR_TEMPLATE


def test_environment_then_overrides():
    environ = {"RECORDING_AGI_LISTEN": "0.0.0.0:4600", "RECORDING_REPLY_TIMEOUT": "2.5",
               "RECORDING_DATABASE_URL": "sqlite:///env.sqlite3"}
    settings = Settings.load(environ=environ, database_url="sqlite:///cli.sqlite3", agi_listen=None)
    assert settings.agi_address == ("0.0.0.0", 4600)
    assert settings.reply_timeout == 2.5
    assert settings.database_url == "sqlite:///cli.sqlite3"


@pytest.mark.parametrize(
    "environ,message",
    [
        ({"RECORDING_AGI_LISTEN": "4573"}, "RECORDING_AGI_LISTEN"),
        ({"RECORDING_REPLY_TIMEOUT": "soon"}, "RECORDING_REPLY_TIMEOUT='soon' is not a valid float"),
        ({"RECORDING_MAX_SESSIONS": "0"}, "RECORDING_MAX_SESSIONS must be greater than 0"),
        ({"RECORDING_MIXMONITOR_OPTIONS": "bi(X)"}, "without i()"),
        ({"RECORDING_MIXMONITOR_OPTIONS": "b,W(1)"}, "RECORDING_MIXMONITOR_OPTIONS"),
        ({"RECORDING_MONITOR_TEMPLATE": "/m/${UNIQUEID}.wav"}, "would not expand"),
        ({"RECORDING_MONITOR_TEMPLATE": "/m/{unknown}.wav"}, "cannot be rendered"),
        ({"RECORDING_API_KEY_VARIABLE": "not a name"}, "RECORDING_API_KEY_VARIABLE"),
        ({"RECORDING_LOG_LEVEL": "LOUD"}, "RECORDING_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(environ, message):
    with pytest.raises(ConfigError) as error:
        Settings.load(environ=environ)
    assert message in str(error.value)


def test_ipv6_listen_address():
    assert Settings.load(environ={"RECORDING_AGI_LISTEN": "[::1]:4573"}).agi_address == ("::1", 4573)


def test_file_template_fields():
    when = datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc)
    path = render_file("/m/{date:%Y/%m/%d}/{extension}/{uniqueid}-{leg}-{id}.wav", uniqueid="sys-1.2", leg=3,
                       extension="410", when=when, leg_id="5f0c2a9b1d2e")
    assert path == "/m/2026/03/04/410/sys-1.2-3-5f0c2a9b1d2e.wav"


@pytest.mark.parametrize(("template", "unique"), [
    ("/m/{uniqueid}-{leg}.wav", "/m/{uniqueid}-{leg}-{id:.8}.wav"),
    ("/m/{date:%Y}/{uniqueid}.wav", "/m/{date:%Y}/{uniqueid}-{id:.8}.wav"),
    ("/m/{uniqueid}", "/m/{uniqueid}-{id:.8}"),
    ("/m.d/{uniqueid}-{leg}", "/m.d/{uniqueid}-{leg}-{id:.8}"),
    ("/m/{uniqueid}-{id}.wav", "/m/{uniqueid}-{id}.wav"),
    ("/m/{id:.12}/{uniqueid}.wav", "/m/{id:.12}/{uniqueid}.wav"),
])
def test_every_file_template_names_the_leg(template, unique):
    """The leg's number alone cannot keep two legs' files apart (it is proposed before the
    database decides it): a template without the leg's id gets it before the suffix."""
    settings = Settings.load(environ={"RECORDING_MONITOR_TEMPLATE": template})
    assert settings.file_template == unique


def test_the_default_file_template_names_the_leg():
    when = datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc)
    path = render_file(DEFAULT_MONITOR_TEMPLATE, uniqueid="1.2", leg=1, extension="410", when=when,
                       leg_id="5f0c2a9b1d2e4f6a8b9c0d1e2f3a4b5c")
    assert path == "/var/spool/asterisk/monitor/2026/03/04/1.2-1-5f0c2a9b.wav"


def test_every_setting_has_an_environment_variable_and_help():
    rows = describe()
    assert len({env for _, env, _, _ in rows}) == len(rows)
    assert all(env.startswith("RECORDING_") and help for _, env, _, help in rows)
