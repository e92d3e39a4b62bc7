"""Every setting of the service in one frozen object: its default, its environment variable,
and what it means. The CLI, the README's table and ``recording-agi check`` read them from here.
"""

from __future__ import annotations

import functools
import os
import re
import string
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from ..errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///recording.sqlite3"
DEFAULT_MONITOR_TEMPLATE = "/var/spool/asterisk/monitor/{date:%Y/%m/%d}/{uniqueid}-{leg}-{id:.8}.wav"
# What makes every leg's file name its own when a template does not place {id} itself.
ID_FIELD = "-{id:.8}"
_OPTIONS = re.compile(r"^[A-Za-z0-9()_.:/-]*$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PERIOD = re.compile(r"^\s*(\d{1,9})\s*([hdwy])\s*$", re.IGNORECASE)
_PERIOD_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1), "y": timedelta(days=365)}
# Longer than this is "for ever", which an empty setting says better (and dates stay in range).
LONGEST_PERIOD = timedelta(days=365 * 1000)


def _setting(env: str, help: str, default: Any) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    database_url: str = _setting(
        "RECORDING_DATABASE_URL",
        "SQLAlchemy URL of the database: a SQLite file (the default, no server needed) or "
        "postgresql+psycopg://user:password@host/dbname",
        DEFAULT_DATABASE_URL,
    )
    agi_listen: str = _setting(
        "RECORDING_AGI_LISTEN",
        "HOST:PORT the FastAGI server listens on; only loopback unless told otherwise",
        "127.0.0.1:4573",
    )
    http_listen: str = _setting(
        "RECORDING_HTTP_LISTEN",
        "HOST:PORT of the HTTP recording API; empty: off (it needs RECORDING_AMI_URL to reach channels)",
        "",
    )
    ami_url: str = _setting(
        "RECORDING_AMI_URL",
        "Asterisk's manager interface, ami://USER:SECRET@HOST:PORT; empty: no AMI (the HTTP API then "
        "answers 503, pause and resume stop and restart MixMonitor instead of muting it)",
        "",
    )
    ami_timeout: float = _setting(
        "RECORDING_AMI_TIMEOUT", "seconds for Asterisk's manager interface to answer one action", 5.0
    )
    sweep_interval: float = _setting(
        "RECORDING_SWEEP_INTERVAL",
        "seconds between checks for legs whose channel is gone (over AMI), which are closed as lost",
        60.0,
    )
    max_leg_age: float = _setting(
        "RECORDING_MAX_LEG_AGE",
        "without AMI, seconds after which a leg still open is closed as lost",
        43200.0,
    )
    monitor_template: str = _setting(
        "RECORDING_MONITOR_TEMPLATE",
        "file MixMonitor writes, on the Asterisk host; fields {uniqueid} {leg} {extension} {id} "
        "(the leg's id; {id:.8} its first 8 characters; added before the suffix when missing, so "
        "that no two legs share a file) {date:strftime} (UTC); MixMonitor creates missing directories",
        DEFAULT_MONITOR_TEMPLATE,
    )
    mixmonitor_options: str = _setting(
        "RECORDING_MIXMONITOR_OPTIONS",
        "MixMonitor options (b: only while bridged, so no ringing or queue music); i() is "
        "always added",
        "b",
    )
    api_key_variable: str = _setting(
        "RECORDING_API_KEY_VARIABLE",
        "channel variable read for the apiKey when the AGI URL does not carry one",
        "RECORDING_API_KEY",
    )
    journal_dir: str = _setting(
        "RECORDING_JOURNAL_DIR",
        "directory of the local journal that keeps legs and tags while the database is away",
        "recording-journal",
    )
    database_budget: float = _setting(
        "RECORDING_DATABASE_BUDGET",
        "seconds a session waits for the database: for a write before journaling it instead, for a "
        "read before answering from memory (or ERROR)",
        0.25,
    )
    shutdown_grace: float = _setting(
        "RECORDING_SHUTDOWN_GRACE",
        "seconds sessions in flight get to finish after SIGTERM",
        10.0,
    )
    directory_refresh: float = _setting(
        "RECORDING_DIRECTORY_REFRESH",
        "seconds between reloads of the apiKey hash, the users and the extension attachments held in "
        "memory (each one also rewrites the directory snapshot next to the journal)",
        5.0,
    )
    snapshot_max_age: float = _setting(
        "RECORDING_SNAPSHOT_MAX_AGE",
        "seconds after which the directory snapshot (the apiKey hash, users and attachments that "
        "serve uses when it starts without the database) counts as old: it still serves, with a warning",
        604800.0,
    )
    environment_timeout: float = _setting(
        "RECORDING_ENVIRONMENT_TIMEOUT", "seconds for Asterisk to send the AGI environment", 5.0
    )
    reply_timeout: float = _setting(
        "RECORDING_REPLY_TIMEOUT", "seconds for Asterisk to answer one AGI command", 10.0
    )
    session_timeout: float = _setting(
        "RECORDING_SESSION_TIMEOUT", "seconds a whole FastAGI session may last", 30.0
    )
    max_line_bytes: int = _setting(
        "RECORDING_MAX_LINE_BYTES", "longest line accepted from Asterisk", 8192
    )
    max_environment_bytes: int = _setting(
        "RECORDING_MAX_ENVIRONMENT_BYTES", "largest AGI environment block accepted", 65536
    )
    max_sessions: int = _setting(
        "RECORDING_MAX_SESSIONS", "FastAGI sessions served at once; more are refused", 4096
    )
    backlog: int = _setting("RECORDING_BACKLOG", "listen backlog of the FastAGI socket", 4096)
    workers: int = _setting(
        "RECORDING_WORKERS",
        "server processes serve runs (serve --workers); more than 1 starts that many, sharing the "
        "listen ports (which must be fixed, not 0) and the database, each with its own journal in "
        "a worker-N folder of RECORDING_JOURNAL_DIR",
        1,
    )
    reuse_port: bool = _setting(
        "RECORDING_REUSE_PORT",
        "let several processes share the listen ports (SO_REUSEPORT); serve --workers sets it for its workers",
        False,
    )
    agi_allow: str = _setting(
        "RECORDING_AGI_ALLOW",
        "addresses or CIDR networks of the Asterisk hosts that may use FastAGI, comma-separated; "
        "empty: any host that can reach the listen address",
        "",
    )
    http_allow: str = _setting(
        "RECORDING_HTTP_ALLOW",
        "addresses or CIDR networks of the clients that may use the HTTP API (the vendor's "
        "whitelisted IPs); empty: any host that can reach the listen address",
        "",
    )
    apikey_failure_window: float = _setting(
        "RECORDING_APIKEY_FAILURE_WINDOW",
        "seconds over which wrong apiKeys from one address are counted (and logged once)",
        60.0,
    )
    apikey_failure_threshold: int = _setting(
        "RECORDING_APIKEY_FAILURE_THRESHOLD",
        "wrong apiKeys from one address within the window before its answers are slowed down",
        5,
    )
    apikey_failure_max_delay: float = _setting(
        "RECORDING_APIKEY_FAILURE_MAX_DELAY",
        "the longest an answer to an address that keeps sending wrong apiKeys is held back, seconds",
        5.0,
    )
    metrics_listen: str = _setting(
        "RECORDING_METRICS_LISTEN",
        "HOST:PORT of a listener for /metrics and /healthz only; empty: they are served on the "
        "HTTP API's listener when that is on",
        "",
    )
    event_loop: str = _setting(
        "RECORDING_EVENT_LOOP",
        "auto (uvloop when it is installed, as it is with the package on Linux), uvloop, or asyncio "
        "(the standard library's loop)",
        "auto",
    )
    monitor_mount: str = _setting(
        "RECORDING_MONITOR_MOUNT",
        "where this host sees the folder at the start of RECORDING_MONITOR_TEMPLATE (Asterisk's monitor "
        "directory) when it is shared here under another path; empty: under the same path (the same host, "
        "or a share mounted there). Playing, purging and hashing recordings need it",
        "",
    )
    retention: str = _setting(
        "RECORDING_RETENTION",
        "how long the audio of an ended leg is kept, e.g. 90d (h, d, w, or y of 365 days); empty: for ever. "
        "When set the service purges once a day; held legs are never purged",
        "",
    )
    file_quiet: float = _setting(
        "RECORDING_FILE_QUIET",
        "seconds an ended leg's file must go unchanged before it counts as complete and its size and "
        "SHA-256 are stored (Asterisk says nothing when MixMonitor closes a file)",
        10.0,
    )
    hash_interval: float = _setting(
        "RECORDING_HASH_INTERVAL",
        "seconds between looks for ended legs whose file is complete, to store its size and SHA-256",
        30.0,
    )
    # -- webhooks (README, "Webhooks") --
    webhook_timeout: float = _setting(
        "RECORDING_WEBHOOK_TIMEOUT",
        "seconds a webhook receiver has to accept the connection and answer; a delivery not answered "
        "2xx in time is tried again later",
        10.0,
    )
    webhook_deny: str = _setting(
        "RECORDING_WEBHOOK_DENY",
        "networks webhooks are never sent to, CIDRs comma-separated, or 'internal' (loopback, private, "
        "link-local...); each address a receiver's name resolves to is checked before connecting; empty: none",
        "",
    )
    webhook_allow: str = _setting(
        "RECORDING_WEBHOOK_ALLOW",
        "networks exempted from RECORDING_WEBHOOK_DENY (your CRM's own address inside a denied range)",
        "",
    )
    # -- the recordings pages, and who the HTTP API takes the word of (README, "Recordings in a browser") --
    pages_listen: str = _setting(
        "RECORDING_PAGES_LISTEN",
        "where the recordings pages are served: HOST:PORT for a listener of their own, http for the HTTP API's "
        "listener (under /recordings/); empty: off",
        "",
    )
    pages_allow: str = _setting(
        "RECORDING_PAGES_ALLOW",
        "addresses or CIDR networks of the browsers (or the proxy) that may use the recordings pages; empty: any "
        "host that can reach the listener (on the HTTP API's listener RECORDING_HTTP_ALLOW applies too)",
        "",
    )
    pages_idle_timeout: float = _setting(
        "RECORDING_PAGES_IDLE_TIMEOUT", "seconds without a request after which a pages session ends", 1800.0
    )
    pages_session_max_age: float = _setting(
        "RECORDING_PAGES_SESSION_MAX_AGE", "seconds after signing in at which a pages session ends, used or not",
        43200.0,
    )
    pages_trusted_proxies: str = _setting(
        "RECORDING_PAGES_TRUSTED_PROXIES",
        "addresses or CIDR networks of the reverse proxies in front of the pages, whose X-Forwarded-For, "
        "X-Forwarded-Proto and single-sign-on header are believed; empty: none",
        "",
    )
    pages_sso_header: str = _setting(
        "RECORDING_PAGES_SSO_HEADER",
        "a header by which a trusted proxy names the signed-in user (single sign-on), e.g. X-Remote-User; empty: "
        "off (passwords only)",
        "",
    )
    pages_https: bool = _setting(
        "RECORDING_PAGES_HTTPS",
        "the pages are reached over HTTPS (a TLS proxy in front): session cookies are Secure; a trusted proxy's "
        "X-Forwarded-Proto: https says so per request",
        False,
    )
    trust_crm_login_name: str = _setting(
        "RECORDING_TRUST_CRM_LOGIN_NAME",
        "true: the HTTP API takes apiKey and loginName as proof of who asks (the CRM is trusted with every user's "
        "rights); false: retrieval, play and holds need the user's own token; empty: as the database says (true "
        "on a database in use before this version, false on a new one)",
        "",
    )
    log_format: str = _setting("RECORDING_LOG_FORMAT", "text (one line per event) or json (for log shippers)", "text")
    log_level: str = _setting("RECORDING_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO")

    def __post_init__(self) -> None:
        parse_listen(self.agi_listen, "RECORDING_AGI_LISTEN")
        if self.http_listen:
            parse_listen(self.http_listen, "RECORDING_HTTP_LISTEN")
        if self.ami_url:
            from ..asterisk.ami import parse_ami_url

            parse_ami_url(self.ami_url)
        if self.metrics_listen:
            parse_listen(self.metrics_listen, "RECORDING_METRICS_LISTEN")
        from .access import AddressAllowList

        AddressAllowList(self.agi_allow, "RECORDING_AGI_ALLOW")
        AddressAllowList(self.http_allow, "RECORDING_HTTP_ALLOW")
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"RECORDING_EVENT_LOOP {self.event_loop!r}: auto, uvloop or asyncio")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"RECORDING_LOG_FORMAT {self.log_format!r}: text or json")
        if not _OPTIONS.match(self.mixmonitor_options) or "i(" in self.mixmonitor_options:
            raise ConfigError(
                f"RECORDING_MIXMONITOR_OPTIONS {self.mixmonitor_options!r}: letters and "
                "option arguments only, without i() (the service adds its own)"
            )
        if not _VARIABLE.match(self.api_key_variable):
            raise ConfigError(f"RECORDING_API_KEY_VARIABLE {self.api_key_variable!r} is not a variable name")
        render_file(self.file_template, uniqueid="1795825765.3", leg=1, extension="100",
                    when=datetime(2026, 1, 1, tzinfo=timezone.utc), leg_id="5f0c2a9b" * 4)
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ConfigError(f"{spec.metadata['env']} must be greater than 0, not {value}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"RECORDING_LOG_LEVEL {self.log_level!r} is not a log level")
        if self.retention:
            parse_period(self.retention, "RECORDING_RETENTION")
        from .destinations import Destinations

        Destinations(self.webhook_deny, self.webhook_allow)
        self._check_pages()

    def _check_pages(self) -> None:
        if self.pages_listen and self.pages_listen != "http":
            parse_listen(self.pages_listen, "RECORDING_PAGES_LISTEN")
        if self.pages_listen == "http" and not self.http_listen:
            raise ConfigError("RECORDING_PAGES_LISTEN=http serves the pages on the HTTP API's listener: set "
                              "RECORDING_HTTP_LISTEN too (or give the pages a HOST:PORT of their own)")
        from .access import AddressAllowList

        AddressAllowList(self.pages_allow, "RECORDING_PAGES_ALLOW")
        AddressAllowList(self.pages_trusted_proxies, "RECORDING_PAGES_TRUSTED_PROXIES")
        if self.pages_sso_header and not _VARIABLE.match(self.pages_sso_header.replace("-", "_")):
            raise ConfigError(f"RECORDING_PAGES_SSO_HEADER {self.pages_sso_header!r} is not a header name")
        if self.pages_sso_header and not self.pages_trusted_proxies:
            raise ConfigError("RECORDING_PAGES_SSO_HEADER is honoured only from the proxies that "
                              "RECORDING_PAGES_TRUSTED_PROXIES lists: list them")
        self.crm_trust  # noqa: B018 (checks the value)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the environment, then ``overrides`` (command-line options; ``None``
        values are ignored). Raises :class:`ConfigError` naming the faulty setting."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is not None and raw != "":
                values[spec.name] = _convert(spec.metadata["env"], raw, type(spec.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    @property
    def file_template(self) -> str:
        """The template every leg's file name is made from: RECORDING_MONITOR_TEMPLATE with the
        leg's id in it (see unique_template)."""
        return unique_template(self.monitor_template)

    @property
    def agi_address(self) -> tuple[str, int]:
        return parse_listen(self.agi_listen, "RECORDING_AGI_LISTEN")

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return parse_listen(self.metrics_listen, "RECORDING_METRICS_LISTEN") if self.metrics_listen else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        return parse_listen(self.http_listen, "RECORDING_HTTP_LISTEN") if self.http_listen else None

    @property
    def pages_address(self) -> tuple[str, int] | None:
        """The pages' own listener; None when they are off or on the HTTP API's listener."""
        if not self.pages_listen or self.pages_listen == "http":
            return None
        return parse_listen(self.pages_listen, "RECORDING_PAGES_LISTEN")

    @property
    def crm_trust(self) -> bool | None:
        """RECORDING_TRUST_CRM_LOGIN_NAME as True or False; None: the database decides."""
        value = self.trust_crm_login_name.strip().lower()
        if not value:
            return None
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"RECORDING_TRUST_CRM_LOGIN_NAME {self.trust_crm_login_name!r}: true, false, or empty "
                          "(as the database says)")

    @property
    def retention_period(self) -> timedelta | None:
        """How long ended legs' audio is kept; None: for ever."""
        return parse_period(self.retention, "RECORDING_RETENTION") if self.retention else None


def describe() -> list[tuple[str, str, Any, str]]:
    """``(field, environment variable, default, help)`` for every setting."""
    return [(s.name, s.metadata["env"], s.default, s.metadata["help"]) for s in fields(Settings)]


def _convert(env: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


def parse_listen(value: str, name: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4573`` for IPv6) as ``(host, port)``; raises ConfigError."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} {value!r} is not HOST:PORT (for example 127.0.0.1:4573)")
    return host, int(port)


def parse_period(text: str, name: str) -> timedelta:
    """A period such as ``90d``: a whole number and a unit, ``h`` hours, ``d`` days, ``w`` weeks
    or ``y`` years of 365 days. Raises ConfigError naming ``name`` for anything else."""
    match = _PERIOD.match(text or "")
    if match is None:
        raise ConfigError(
            f"{name} {text!r} is not a period: a whole number and h, d, w or y (hours, days, weeks, "
            "years of 365 days), e.g. 90d"
        )
    try:
        period = int(match.group(1)) * _PERIOD_UNITS[match.group(2).lower()]
    except OverflowError:
        period = None
    if period is None or not timedelta(0) < period <= LONGEST_PERIOD:
        raise ConfigError(f"{name} {text!r}: a period must be longer than 0 and at most 1000y (for ever: leave it empty)")
    return period


class _Second:
    """A time for ``str.format`` whose strftime for each format spec is remembered for the
    second it is in: every start renders the file name, and strftime was most of that."""

    __slots__ = ("when",)
    _made: dict[tuple[str, int], str] = {}

    def __init__(self, when: datetime):
        self.when = when

    def __format__(self, spec: str) -> str:
        if not spec or "%f" in spec:
            return format(self.when, spec)
        key = (spec, int(self.when.timestamp()))
        made = self._made.get(key)
        if made is None:
            if len(self._made) > 64:
                self._made.clear()
            made = self._made[key] = format(self.when, spec)
        return made


def has_id(template: str) -> bool:
    """Whether the template places the leg's id ({id}, {id:.8}...) in the file name."""
    try:
        return any(name == "id" for _, name, _, _ in string.Formatter().parse(template))
    except ValueError:
        return False


@functools.lru_cache(maxsize=8)
def unique_template(template: str) -> str:
    """``template`` with the leg's id in its file name: as it is when it places ``{id}``, else
    with ``-{id:.8}`` added before the file name's suffix. The leg's number alone cannot keep
    two legs apart: it is proposed before the leg is written, and a call's legs may be started
    by different processes, or before and after a restart (MixMonitor without ``a`` would
    truncate the other leg's file)."""
    if has_id(template):
        return template
    folder, slash, name = template.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem or "}" in suffix:
        return template + ID_FIELD
    return f"{folder}{slash}{stem}{ID_FIELD}.{suffix}"


def render_file(template: str, *, uniqueid: str, leg: int, extension: str, when: datetime, leg_id: str) -> str:
    """The recording's file name from the template. Raises ConfigError for a template that
    cannot be rendered, or that would leave ``${...}`` for Asterisk (which does not expand it)."""
    try:
        # NOTE: the hot path; the template itself was checked when the settings were made.
        path = template.format(uniqueid=uniqueid, leg=leg, extension=extension, date=_Second(when), id=leg_id)
    except (KeyError, IndexError, ValueError, AttributeError):
        path = ""
    # NOTE: commas and brackets are fine: the doors escape the file name as one argument of
    # MixMonitor's data (agi.protocol.app_argument).
    if path and "${" not in path:
        return path
    if "${" in template:
        raise ConfigError(
            f"RECORDING_MONITOR_TEMPLATE {template!r}: Asterisk would not expand ${{...}} in EXEC data; "
            "use {uniqueid}, {leg}, {extension}, {id} and {date:%Y/%m/%d}"
        )
    try:
        path = template.format(uniqueid=uniqueid, leg=leg, extension=extension, date=when, id=leg_id)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(f"RECORDING_MONITOR_TEMPLATE {template!r} cannot be rendered: {exc}") from None
    if "${" in path or not path.strip():
        raise ConfigError(
            f"RECORDING_MONITOR_TEMPLATE {template!r} gives {path!r}: Asterisk would not expand ${{...}}"
        )
    return path
