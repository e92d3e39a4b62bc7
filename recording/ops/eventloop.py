"""Which asyncio event loop the service runs on (RECORDING_EVENT_LOOP).

uvloop runs the same asyncio code with its sockets, transports and timers in C (libuv): in A/B
runs of one server it took 5-10% off the CPU a call costs (bench/README.md). The standard loop
stays one setting away, for a platform without uvloop or to rule it out when chasing a bug.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ..errors import ConfigError

log = logging.getLogger("recording.app")


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The factory for ``choice`` (auto, uvloop or asyncio) and a name for the log. Raises
    ConfigError when uvloop is asked for by name and cannot be imported."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError as exc:
            if choice == "uvloop":
                raise ConfigError(f"RECORDING_EVENT_LOOP=uvloop, but uvloop cannot be imported: {exc}") from None
        else:
            return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
    return asyncio.new_event_loop, "asyncio"


def run(main: Callable[[], Awaitable[None]], loop: tuple[Callable[[], asyncio.AbstractEventLoop], str]) -> None:
    """Runs ``main()`` to the end on ``loop``, a :func:`loop_factory` result."""
    factory, name = loop
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
