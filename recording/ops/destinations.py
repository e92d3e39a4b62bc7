"""Where webhooks may be sent: the destination rules of RECORDING_WEBHOOK_DENY and
RECORDING_WEBHOOK_ALLOW, checked against each address a receiver's name resolves to (pure logic,
no I/O)."""

from __future__ import annotations

from .access import AddressAllowList, parse_address

# What RECORDING_WEBHOOK_DENY=internal stands for: loopback, private, link-local, shared
# (CGNAT), multicast and reserved ranges, IPv4 and IPv6.
INTERNAL = ("127.0.0.0/8 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 100.64.0.0/10 0.0.0.0/8 "
            "224.0.0.0/4 240.0.0.0/4 ::1/128 ::/128 fc00::/7 fe80::/10 ff00::/8")


class Destinations:
    """Which addresses deliveries may go to: none in RECORDING_WEBHOOK_DENY (CIDRs, or
    ``internal``) unless also in RECORDING_WEBHOOK_ALLOW. Both empty: any address."""

    def __init__(self, deny: str = "", allow: str = ""):
        words = deny.replace("internal", INTERNAL)
        self.deny = AddressAllowList(words, "RECORDING_WEBHOOK_DENY")
        self.allow = AddressAllowList(allow, "RECORDING_WEBHOOK_ALLOW")

    def refusal(self, address: str) -> str | None:
        """Why a delivery may not go to ``address`` (an IP address), or None if it may."""
        parsed = parse_address(address)
        if parsed is None:
            return f"{address} is not an IP address"
        if self.deny.allows_all:
            return None
        if self.deny.allows(str(parsed)) and (self.allow.allows_all or not self.allow.allows(str(parsed))):
            return f"{parsed} is in RECORDING_WEBHOOK_DENY"
        return None
