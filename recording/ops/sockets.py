"""Listening sockets handed over by systemd (socket activation), so a restart refuses no call.

Between a process's end and its successor's listen, Asterisk's ``AGI()`` gets ``connection
refused`` and the call is not recorded (``bench/soak.py --restart-at`` counted them). When
systemd holds the port (``recording-agi.socket``), connections made meanwhile wait in the
socket's backlog and the next process serves them. systemd's side is ``sd_listen_fds(3)``:
the sockets are file descriptors 3, 4, ... and ``LISTEN_FDS`` says how many, for the process
``LISTEN_PID`` only. Each socket is given the role whose listen address has its port
(``RECORDING_AGI_LISTEN``, ``RECORDING_HTTP_LISTEN``, ``RECORDING_METRICS_LISTEN``), so the
settings stay the one place that says what listens where.

``serve --workers`` hands its sockets on to its workers: the same descriptors, named in
``RECORDING_LISTEN_SOCKETS`` (``LISTEN_PID`` cannot name a process before it exists).
"""

from __future__ import annotations

import os
import socket
from typing import Mapping, MutableMapping

from ..errors import ConfigError
from .config import Settings

LISTEN_FDS_START = 3
PASSED_ENV = "RECORDING_LISTEN_SOCKETS"
_SYSTEMD_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def handed_over(settings: Settings, environ: MutableMapping[str, str] | None = None) -> dict[str, socket.socket]:
    """The listening sockets this process was given, by role (``agi``, ``http``, ``metrics``);
    empty when none. The systemd variables are taken out of ``environ`` (as
    ``sd_listen_fds(1)`` does), so that no child takes them for its own. Raises ConfigError
    for a descriptor that is not a listening TCP socket or that no listen address names."""
    environ = os.environ if environ is None else environ
    descriptors = _descriptors(environ)
    roles = {}
    for fd in descriptors:
        sock = _listening(fd)
        role = _role(sock, settings, roles)
        roles[role] = sock
    return roles


def passed_on(sockets: Mapping[str, socket.socket]) -> dict[str, str]:
    """The environment by which a worker finds ``sockets`` (its descriptors have the same numbers)."""
    if not sockets:
        return {}
    return {PASSED_ENV: ",".join(str(sock.fileno()) for sock in sockets.values())}


def _descriptors(environ: MutableMapping[str, str]) -> list[int]:
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    passed = environ.pop(PASSED_ENV, None)
    for name in _SYSTEMD_ENV:
        environ.pop(name, None)
    if count is not None and pid == str(os.getpid()):
        try:
            number = int(count)
        except ValueError:
            raise ConfigError(f"LISTEN_FDS={count!r} from systemd is not a number of sockets") from None
        return list(range(LISTEN_FDS_START, LISTEN_FDS_START + number))
    if passed:
        try:
            return [int(fd) for fd in passed.split(",")]
        except ValueError:
            raise ConfigError(f"{PASSED_ENV}={passed!r} is not a list of descriptors") from None
    return []


def _listening(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"descriptor {fd} handed over by systemd is not a socket ({exc.strerror})") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ConfigError(
            f"descriptor {fd} handed over by systemd is not a listening TCP socket: the socket unit "
            "must use ListenStream= with an address and port"
        )
    return sock


def _role(sock: socket.socket, settings: Settings, taken: Mapping[str, socket.socket]) -> str:
    port = sock.getsockname()[1]
    named = [
        ("agi", "RECORDING_AGI_LISTEN", settings.agi_listen, settings.agi_address),
        ("http", "RECORDING_HTTP_LISTEN", settings.http_listen, settings.http_address),
        ("metrics", "RECORDING_METRICS_LISTEN", settings.metrics_listen, settings.metrics_address),
        ("pages", "RECORDING_PAGES_LISTEN", settings.pages_listen, settings.pages_address),
    ]
    for role, _, _, address in named:
        if address is not None and address[1] == port and role not in taken:
            return role
    said = ", ".join(f"{env} {value or '(off)'}" for _, env, value, _ in named)
    host = sock.getsockname()[0]
    raise ConfigError(
        f"systemd handed over a socket listening on {host}:{port}, which none of the listen "
        f"settings names ({said}): make the socket unit's ListenStream= and the settings agree"
    )

