"""Waiting, in tests, for something another thread or process does: bounded, and failing with
a sentence saying what never happened."""

from __future__ import annotations

import time


def wait_until(probe, timeout: float, what: str, interval: float = 0.05):
    """``probe()``'s first truthy result within ``timeout`` seconds; AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)
