"""Who may talk to the service, and what a wrong apiKey costs: the allow lists of Asterisk hosts
(FastAGI) and HTTP clients, and the slowing down of an address that keeps sending wrong keys,
logged once per window rather than once per attempt."""

from __future__ import annotations

import asyncio
import logging

from .access import AddressAllowList, FailureLimiter
from .config import Settings

audit = logging.getLogger("recording.audit")


class Gate:
    def __init__(self, settings: Settings, on_failure=None):
        self._on_failure = on_failure
        self._refused_logged: set[str] = set()
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        """Takes new allow lists and limits (SIGHUP); what the limiter counted is kept when its
        limits did not change."""
        self.agi = AddressAllowList(settings.agi_allow, "RECORDING_AGI_ALLOW")
        self.http = AddressAllowList(settings.http_allow, "RECORDING_HTTP_ALLOW")
        limits = (settings.apikey_failure_window, settings.apikey_failure_threshold,
                  settings.apikey_failure_max_delay)
        if getattr(self, "_limits", None) != limits:
            self._limits = limits
            self.limiter = FailureLimiter(*limits)
            # Wrong passwords at the recordings pages' sign-in, counted apart, with the same limits.
            self.passwords = FailureLimiter(*limits)
        self._refused_logged.clear()

    def admits(self, allow_list: AddressAllowList, address: str | None, door: str) -> bool:
        """True if ``address`` is on the door's allow list; a refusal is logged once per
        address (until the next reload), not per connection."""
        if allow_list.allows(address):
            return True
        key = f"{door} {address}"
        if key not in self._refused_logged and len(self._refused_logged) < 10_000:
            self._refused_logged.add(key)
            audit.warning("%s connection from %s refused: not on its allow list (%s)", door, address, allow_list)
        return False

    async def hold_back(self, address: str | None, limiter: FailureLimiter | None = None) -> None:
        """Waits as long as the limiter says for ``address`` (0 below its threshold): before a
        presented key, token or password is checked, so that an address guessing them costs no
        hashing until its wait is over."""
        limiter = limiter or self.limiter
        delay = limiter.delay(address) if len(limiter) else 0.0  # NOTE: on every session; usually none
        if delay:
            await asyncio.sleep(delay)

    async def wrong_key(self, address: str | None, door: str) -> None:
        """Counts a wrong or missing apiKey (or API token) from ``address``; logs once per window
        when the address crosses the threshold. Its next requests wait (:meth:`hold_back`)."""
        if self._on_failure is not None:
            self._on_failure()
        if self.limiter.record_failure(address):
            audit.warning(
                "%s: %d wrong apiKeys from %s within %gs; its answers are slowed down (up to %gs)",
                door, self.limiter.threshold, address, self.limiter.window, self.limiter.max_delay,
            )

    def wrong_password(self, address: str | None, login: str) -> None:
        """Counts a wrong password from ``address`` and logs it (the login, never the password);
        once per window, that the address's sign-ins are slowed down."""
        audit.warning("pages: wrong password for %r from %s", login[:128], address)
        if self.passwords.record_failure(address):
            audit.warning("pages: %d wrong passwords from %s within %gs; its sign-ins are slowed down (up to %gs)",
                          self.passwords.threshold, address, self.passwords.window, self.passwords.max_delay)

    def right_key(self, address: str | None) -> None:
        self.limiter.record_success(address)
