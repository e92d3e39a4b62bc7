"""Who may talk to the service, and how wrong apiKeys are slowed down: pure logic, no I/O.

:class:`AddressAllowList` says whether a peer address may connect at all (FastAGI or HTTP);
:class:`FailureLimiter` counts wrong keys per peer address and says how long to make the next
answer to that address wait, so that guessing keys is slow and is logged once per window
rather than once per guess.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SEPARATORS = re.compile(r"[\s,]+")


def parse_address(address: str | None) -> Address | None:
    """The peer's IP address, IPv4-mapped IPv6 (``::ffff:10.1.2.3``, as a dual-stack socket
    reports IPv4 peers) as IPv4, an IPv6 zone (``%eth0``) dropped; ``None`` for anything that is
    not an IP address (a Unix socket's empty peer name, ``None``)."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class AddressAllowList:
    """The networks allowed to connect, from a comma- or space-separated list of CIDRs and
    single addresses, IPv4 and IPv6: ``"127.0.0.1/32, 10.0.0.0/8, ::1"``.

    An empty list allows every address: the listen address is what limits exposure by default
    (loopback), and the allow list narrows it further when the service listens more widely. A
    non-empty list allows only the addresses inside one of its networks; a peer that has no IP
    address (a Unix socket) is then refused. ``setting`` names the setting in error messages.
    Raises :class:`ConfigError` naming the first entry that is not an address or network.
    """

    def __init__(self, cidrs: str, setting: str = "the allow list"):
        self.text = cidrs.strip()
        self.networks: tuple[Network, ...] = tuple(
            _network(entry, setting) for entry in _SEPARATORS.split(self.text) if entry
        )

    @property
    def allows_all(self) -> bool:
        """True when the list is empty, so that every address is allowed."""
        return not self.networks

    def allows(self, address: str | None) -> bool:
        """True if a peer at ``address`` (as the socket reports it) may connect."""
        if not self.networks:
            return True
        parsed = parse_address(address)
        if parsed is None:
            return False
        return any(parsed.version == network.version and parsed in network for network in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks) if self.networks else "any address"

    def __repr__(self) -> str:
        return f"AddressAllowList({self.text!r})"


def _network(entry: str, setting: str) -> Network:
    text = entry.strip("[]")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise ConfigError(
                f"{setting}: {entry!r} has bits set beyond its prefix; write the network, {loose}, "
                "or the single address without a prefix"
            ) from None
        raise ConfigError(
            f"{setting}: {entry!r} is not an IP address or network (for example 10.0.0.0/8 or ::1)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        # NOTE: an IPv4 peer of a dual-stack socket is matched as IPv4, so an entry written as
        # ::ffff:10.0.0.0/104 is taken as the IPv4 network it means.
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@dataclass
class _Record:
    started: float  # when the first failure of the current window happened
    failures: int
    reported: bool


class FailureLimiter:
    """Wrong-key failures per peer address, over fixed windows of ``window`` seconds that start
    at an address's first failure.

    Below ``threshold`` failures in a window nothing happens. From the ``threshold``-th failure
    on, :meth:`delay` asks the caller to hold its next answer to that address for
    ``first_delay`` seconds, doubling with each further failure, up to ``max_delay``;
    :meth:`record_failure` returns True once, on the failure that crosses the threshold, so the
    caller logs once per window per address. A success forgets the address. A new window
    starts from zero.

    At most ``max_addresses`` addresses are remembered: past that the one whose last failure
    is oldest is forgotten, so that a flood of source addresses cannot grow memory. Addresses
    are compared as IP addresses (``::ffff:10.1.2.3`` is ``10.1.2.3``). Not thread-safe: meant
    for the event loop's thread.
    """

    def __init__(
        self,
        window: float,
        threshold: int,
        max_delay: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        first_delay: float = 0.25,
        max_addresses: int = 10_000,
    ):
        if window <= 0 or threshold < 1 or max_delay < 0 or first_delay < 0 or max_addresses < 1:
            raise ValueError("window and max_addresses must be positive, threshold at least 1, delays not negative")
        self.window = window
        self.threshold = threshold
        self.max_delay = max_delay
        self.first_delay = min(first_delay, max_delay)
        self.max_addresses = max_addresses
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        """How many addresses are remembered now."""
        return len(self._records)

    def failures(self, address: str | None) -> int:
        """Wrong keys from ``address`` in its current window (0 once the window is over)."""
        record = self._current(_key(address))
        return record.failures if record else 0

    def delay(self, address: str | None) -> float:
        """Seconds to wait before answering ``address`` next: 0 below the threshold, then
        ``first_delay`` doubling per failure beyond it, at most ``max_delay``."""
        if not self._records:  # NOTE: asked before every key check; usually nobody is slowed
            return 0.0
        record = self._current(_key(address))
        if record is None or record.failures < self.threshold:
            return 0.0
        doublings = min(record.failures - self.threshold, 64)  # 2**64 is past any max_delay
        return min(self.max_delay, self.first_delay * 2.0 ** doublings)

    def record_failure(self, address: str | None) -> bool:
        """Counts one wrong key from ``address``. True exactly when this failure is the one
        that reaches the threshold in the current window (log it then); False otherwise."""
        key = _key(address)
        now = self._clock()
        record = self._current(key, now)
        if record is None:
            record = self._records[key] = _Record(now, 0, False)
        self._records.move_to_end(key)
        record.failures += 1
        while len(self._records) > self.max_addresses:
            self._records.popitem(last=False)
        if record.failures >= self.threshold and not record.reported:
            record.reported = True
            return True
        return False

    def record_success(self, address: str | None) -> None:
        """A right key from ``address``: its failures are forgotten."""
        if self._records:  # NOTE: on every session; usually there is nothing to forget
            self._records.pop(_key(address), None)

    def _current(self, key: str, now: float | None = None) -> _Record | None:
        """The address's record if its window is still running; a finished one is dropped."""
        record = self._records.get(key)
        if record is None:
            return None
        now = self._clock() if now is None else now
        if now - record.started >= self.window:
            del self._records[key]
            return None
        return record


def _key(address: str | None) -> str:
    parsed = parse_address(address)
    return str(parsed) if parsed is not None else (address or "")
