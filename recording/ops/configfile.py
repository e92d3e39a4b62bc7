"""The optional configuration file (``recording-agi --config /etc/recording-agi.conf``), and
which settings may change on SIGHUP without a restart.

The file holds one section (INI) or table (TOML) called ``[recording-agi]``. Its keys are the
settings' field names (``database_url``) or their environment variables
(``RECORDING_DATABASE_URL``), without regard to case::

    [recording-agi]
    database_url = postgresql+psycopg://recording@db/recording
    RECORDING_LOG_LEVEL = DEBUG

Precedence, lowest first: the defaults, the file, the environment, the command line. A setting
given in a higher layer wins whatever the lower ones say; :func:`load_settings` applies that
order, :func:`read_config_file` only reads the file.
"""

from __future__ import annotations

import configparser
import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from .config import Settings, _convert
from ..errors import ConfigError

SECTION = "recording-agi"

# Settings a running service can take on SIGHUP: they are read afresh on each use (a session,
# a commit, a sweep, a refresh) or can be swapped in one place (the log level, the access
# rules). Everything else (listen addresses, the database, AMI, the journal, sizes of
# buffers and pools) is bound at start-up and needs a restart.
RELOADABLE = frozenset({
    "log_level",
    "monitor_template",
    "mixmonitor_options",
    "directory_refresh",
    "database_budget",
    "reply_timeout",
    "session_timeout",
    "environment_timeout",
    "sweep_interval",
    "max_leg_age",
    # after the call: read on each pass of the background work and each download
    "monitor_mount",
    "retention",
    "file_quiet",
    "hash_interval",
    # the access rules of recording.access: who may connect, and how wrong keys are slowed
    "agi_allow",
    "http_allow",
    "apikey_failure_window",
    "apikey_failure_threshold",
    "apikey_failure_max_delay",
    # webhooks: read on each try
    "webhook_timeout",
    "webhook_deny",
    "webhook_allow",
    # the recordings pages: read on each request (their listener needs a restart)
    "pages_allow",
    "pages_idle_timeout",
    "pages_session_max_age",
    "pages_trusted_proxies",
    "pages_sso_header",
    "pages_https",
    "trust_crm_login_name",
})


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings the file at ``path`` gives, as field name -> value, converted as
    :meth:`Settings.load` converts environment values (an empty value counts as not given, so
    the default stands). A file without any section (empty, or comments only) gives ``{}``.

    The format is TOML for a ``.toml`` name, INI for ``.ini``/``.cfg``; any other name (such as
    ``.conf``) is read as TOML if it parses as TOML, else as INI. Raises :class:`ConfigError`
    naming the file (and the line where it can tell) for a file that cannot be read or parsed,
    a section other than ``[recording-agi]``, an unknown key, a key given twice (by either of
    its names) or a value of the wrong type."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    entries = _parse(path, text)
    return _settings_of(path, text, entries)


def load_settings(
    path: str | os.PathLike | None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from the defaults, then the file at ``path`` (``None``: no file), then
    ``environ`` (default ``os.environ``), then ``overrides`` (command-line options; ``None``
    values are ignored). Raises :class:`ConfigError` naming the faulty setting or file."""
    environ = os.environ if environ is None else environ
    from_file = read_config_file(path) if path is not None else {}
    env_names = {spec.name: spec.metadata["env"] for spec in fields(Settings)}
    # NOTE: Settings.load ignores an empty environment value, so an empty variable must not
    # hide the file's value either.
    below_environment = {name: value for name, value in from_file.items() if not environ.get(env_names[name])}
    given = {name: value for name, value in overrides.items() if value is not None}
    return Settings.load(environ, **(below_environment | given))


def reload_changes(old: Settings, new: Settings) -> tuple[dict[str, Any], list[str]]:
    """What a reload from ``old`` to ``new`` means: the changed settings that take effect
    without a restart (field name -> new value), and the names of the changed settings that
    only a restart applies, in declaration order (empty when nothing needs one)."""
    reloadable: dict[str, Any] = {}
    restart: list[str] = []
    for spec in fields(Settings):
        value = getattr(new, spec.name)
        if getattr(old, spec.name) == value:
            continue
        if spec.name in RELOADABLE:
            reloadable[spec.name] = value
        else:
            restart.append(spec.name)
    return reloadable, restart


# --- parsing ----------------------------------------------------------------------------------


def _parse(path: Path, text: str) -> list[tuple[str, Any]]:
    """The ``(key, value)`` pairs of the [recording-agi] section, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _toml_entries(path, _load_toml(path, text))
    if suffix in (".ini", ".cfg"):
        return _ini_entries(path, text)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as toml_error:
        try:
            return _ini_entries(path, text)
        except ConfigError as ini_error:
            raise ConfigError(f"{ini_error} (nor is it TOML: {toml_error})") from None
    return _toml_entries(path, document)


def _load_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _toml_entries(path: Path, document: dict[str, Any]) -> list[tuple[str, Any]]:
    for name, value in document.items():
        if name != SECTION or not isinstance(value, dict):
            raise ConfigError(
                f"config file {path}: {name!r} is not the [{SECTION}] table (every setting goes in [{SECTION}])"
            )
    return list(document.get(SECTION, {}).items())


def _ini_entries(path: Path, text: str) -> list[tuple[str, Any]]:
    # NOTE: no interpolation: the monitor template's strftime fields (%Y/%m/%d) are meant
    # literally, and a '%' in a database password must not be read as a reference.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00no default section")
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"config file {path} is not a valid INI file: {_one_line(exc)}") from None
    for name in parser.sections():
        if name != SECTION:
            raise ConfigError(
                f"config file {path}: unknown section [{name}] (every setting goes in [{SECTION}])"
            )
    if not parser.has_section(SECTION):
        return []
    # NOTE: items() would add the DEFAULT section's keys; there is none, but read the section's own.
    return [(key, parser.get(SECTION, key)) for key in parser.options(SECTION)]


def _settings_of(path: Path, text: str, entries: list[tuple[str, Any]]) -> dict[str, Any]:
    specs = {}
    for spec in fields(Settings):
        specs[spec.name.lower()] = spec
        specs[spec.metadata["env"].lower()] = spec
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in entries:
        where = _where(path, text, key)
        spec = specs.get(key.lower())
        if spec is None:
            raise ConfigError(f"{where}: unknown setting {key!r} (see recording-agi.conf.sample for the names)")
        if spec.name in given_as:
            raise ConfigError(f"{where}: {key!r} sets {spec.name} again (already set as {given_as[spec.name]!r})")
        given_as[spec.name] = key
        converted = _value(where, spec.metadata["env"], value, type(spec.default))
        if converted is not None:
            values[spec.name] = converted
    return values


def _value(where: str, env: str, value: Any, kind: type) -> Any:
    """The value as Settings wants it; ``None`` for an empty string (not given)."""
    if isinstance(value, str):
        if value == "":
            return None
        try:
            return _convert(env, value, kind)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    # A TOML value already has a type: take it when it is the setting's (an integer is a fine
    # float), but never a boolean for a number (bool is a subclass of int).
    if isinstance(value, bool):
        fits = kind is bool
    elif kind is float:
        fits = isinstance(value, (int, float))
    else:
        fits = isinstance(value, kind)
    if not fits:
        raise ConfigError(f"{where}: {env}={value!r} is not a valid {kind.__name__}")
    return kind(value)


def _where(path: Path, text: str, key: str) -> str:
    """``file, line N`` for the first line that assigns ``key``; just the file when no line can
    be found (a quoted or dotted TOML key)."""
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=:]", re.IGNORECASE)
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f"config file {path}, line {number}"
    return f"config file {path}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


SAMPLE_HEADER = """# recording-agi configuration: copy to /etc/recording-agi.conf and pass --config.
#
# INI: every setting goes in the [recording-agi] section, named by its field name (as below) or
# by its environment variable (RECORDING_DATABASE_URL), without regard to case. An empty value
# leaves the default. Precedence, lowest first: the defaults, this file, the environment
# (systemd's EnvironmentFile), the command line. Relative paths are relative to the working
# directory (/var/lib/recording-agi under the systemd unit).
#
# The file may hold the database password and the AMI secret: keep it readable only by root
# and the service's group (chown root:recording-agi; chmod 0640).
#
# Settings marked "reload" take effect on SIGHUP (systemctl reload recording-agi); the others
# need a restart.

"""


def sample_text() -> str:
    """A config file naming every setting, commented out at its default, with its variable,
    whether SIGHUP reloads it, and what it means (``recording-agi config-sample``; the file in
    contrib/ is this text)."""
    import textwrap

    from .config import describe

    parts = [SAMPLE_HEADER, "[recording-agi]\n"]
    for name, env, default, help in describe():
        when = "reload" if name in RELOADABLE else "restart"
        text = f"{env} ({when}): {help}."
        lines = textwrap.wrap(text, width=94, break_on_hyphens=False, break_long_words=False)
        parts.append("\n" + "".join(f"# {line}\n" for line in lines))
        value = "" if default == "" else f" {default}"
        parts.append(f"#{name} ={value}\n")
    return "".join(parts)
