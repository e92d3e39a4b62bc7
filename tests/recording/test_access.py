"""Access rules: allow lists of networks (IPv4, IPv6, IPv4-mapped peers) and the limiter that
slows wrong apiKeys per address, on an injected clock."""

from __future__ import annotations

import pytest

from recording.ops.access import AddressAllowList, FailureLimiter, parse_address
from recording.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "address,allowed",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("10.200.3.4", True),
        ("11.0.0.1", False),
        ("::1", True),
        ("::2", False),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("::ffff:192.168.1.1", False),
        ("fd00:1::5", True),
        ("fd00:2::5", False),
        ("fe80::1%eth0", False),
        ("[::1]", True),
        ("", False),  # a Unix socket's peer
        (None, False),
        ("not-an-address", False),
    ],
)
def test_allow_list(address, allowed):
    allow = AddressAllowList("127.0.0.1/32, 10.0.0.0/8 ::1,fd00:1::/64")
    assert allow.allows(address) is allowed


def test_an_empty_allow_list_allows_every_address():
    for text in ("", "  ", " , "):
        allow = AddressAllowList(text)
        assert allow.allows_all
        assert allow.allows("203.0.113.9") and allow.allows("2001:db8::1") and allow.allows(None)
        assert str(allow) == "any address"


def test_single_addresses_and_mapped_networks():
    allow = AddressAllowList("192.0.2.7 ::ffff:10.0.0.0/104")
    assert allow.allows("192.0.2.7") and not allow.allows("192.0.2.8")
    assert allow.allows("10.9.9.9") and allow.allows("::ffff:10.9.9.9")
    assert str(allow) == "192.0.2.7/32, 10.0.0.0/8"


@pytest.mark.parametrize(
    "text,message",
    [
        ("10.0.0.0/8, 10.0.0.300", "'10.0.0.300' is not an IP address or network"),
        ("localhost", "'localhost' is not an IP address or network"),
        ("10.1.2.3/8", "write the network, 10.0.0.0/8"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not"),
        ("fd00::1/64", "write the network, fd00::/64"),
    ],
)
def test_bad_entries_are_named(text, message):
    with pytest.raises(ConfigError) as error:
        AddressAllowList(text, "RECORDING_HTTP_ALLOW")
    assert str(error.value).startswith("RECORDING_HTTP_ALLOW: ")
    assert message in str(error.value)


def test_parse_address():
    assert str(parse_address("::ffff:10.1.2.3")) == "10.1.2.3"
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
    assert parse_address("") is None and parse_address("x") is None


def test_below_the_threshold_nothing_happens_then_delays_grow_to_the_cap():
    clock = Clock()
    limiter = FailureLimiter(window=60, threshold=3, max_delay=2.0, clock=clock, first_delay=0.25)
    assert [limiter.record_failure("10.0.0.1") for _ in range(2)] == [False, False]
    assert limiter.delay("10.0.0.1") == 0.0
    assert limiter.record_failure("10.0.0.1") is True  # crossing: log it
    delays = [limiter.delay("10.0.0.1")]
    for _ in range(5):
        assert limiter.record_failure("10.0.0.1") is False  # once per window, not per attempt
        delays.append(limiter.delay("10.0.0.1"))
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert limiter.delay("10.0.0.2") == 0.0  # other addresses are not slowed
    assert limiter.failures("10.0.0.1") == 8


def test_a_new_window_starts_from_zero_and_reports_again():
    clock = Clock()
    limiter = FailureLimiter(window=60, threshold=2, max_delay=5.0, clock=clock)
    assert [limiter.record_failure("10.0.0.1") for _ in range(3)] == [False, True, False]
    clock.now += 59.9
    assert limiter.delay("10.0.0.1") > 0
    clock.now += 0.1
    assert limiter.delay("10.0.0.1") == 0.0 and limiter.failures("10.0.0.1") == 0
    assert [limiter.record_failure("10.0.0.1") for _ in range(3)] == [False, True, False]


def test_success_forgets_the_address():
    limiter = FailureLimiter(window=60, threshold=1, max_delay=5.0, clock=Clock())
    assert limiter.record_failure("::ffff:10.0.0.1") is True
    assert limiter.delay("10.0.0.1") > 0  # the same peer, whichever way the socket wrote it
    limiter.record_success("10.0.0.1")
    assert limiter.delay("10.0.0.1") == 0.0
    assert limiter.record_failure("10.0.0.1") is True


def test_memory_is_bounded_forgetting_the_longest_quiet_address():
    limiter = FailureLimiter(window=60, threshold=2, max_delay=5.0, clock=Clock(), max_addresses=3)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.record_failure(address)
    limiter.record_failure("10.0.0.1")  # recently active again
    limiter.record_failure("10.0.0.4")
    assert len(limiter) == 3
    assert limiter.failures("10.0.0.2") == 0
    assert limiter.failures("10.0.0.1") == 2 and limiter.failures("10.0.0.3") == 1
    for number in range(10_000):
        limiter.record_failure(f"2001:db8::{number:x}")
    assert len(limiter) == 3


def test_a_zero_cap_never_delays():
    limiter = FailureLimiter(window=60, threshold=1, max_delay=0.0, clock=Clock())
    assert limiter.record_failure("10.0.0.1") is True
    assert limiter.delay("10.0.0.1") == 0.0


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        FailureLimiter(window=0, threshold=1, max_delay=1.0)
    with pytest.raises(ValueError):
        FailureLimiter(window=1, threshold=0, max_delay=1.0)
