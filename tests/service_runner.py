"""Runs the real service (FastAGI server, writer, directory) on a loopback port in a thread of
its own, the way uvicorn's tests run a real server, so tests talk to it over real sockets."""

from __future__ import annotations

import asyncio
import threading

from recording.app import Application
from recording.ops.config import Settings
from recording.ops.eventloop import loop_factory


class RunningService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.app: Application | None = None
        self.loop = loop_factory(settings.event_loop)[0]()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="service-under-test", daemon=True)

    @property
    def port(self) -> int:
        return self.app.agi_port

    def __enter__(self) -> "RunningService":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the service did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            assert not self._thread.is_alive(), "the service did not stop within 30 s"

    def run(self, coroutine, timeout: float = 30):
        """Runs a coroutine on the service's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.app = Application(self.settings)
            await self.app.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.app.stop(grace=5)
