"""Asterisk's manager interface as the recording service needs it: finding the live channel an
HTTP caller means, recording it, muting a recording, and hearing of hangups. Translates the AMI
client's failures into the service's own errors, once, here."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

from .ami import AMIClient, AMIError, AMIFailure
from ..domain import MixMonitorStart, channel_extension
from ..errors import AmbiguousChannel, AsteriskFailure, AsteriskUnavailable, NoSuchChannel

log = logging.getLogger("recording.manager")


@dataclass(frozen=True)
class LiveChannel:
    name: str
    unique_id: str
    bridge_id: str = ""
    linked_id: str = ""


def _unavailable(exc: AMIFailure) -> AsteriskUnavailable:
    return AsteriskUnavailable(f"Asterisk's manager interface is unavailable: {exc}")


class AMIChannel:
    """A live channel reached over AMI, as the service sees it (see domain.Channel)."""

    def __init__(self, client: AMIClient, live: LiveChannel):
        self._client = client
        self.name = live.name
        self.unique_id = live.unique_id

    async def start_mixmonitor(self, file: str, options: str, id_variable: str) -> MixMonitorStart:
        try:
            mixmonitor_id = await self._client.mixmonitor(self.name, file, options, id_variable)
        except AMIError as exc:
            raise AsteriskFailure(f"Asterisk refused MixMonitor on {self.name}: {exc}") from exc
        except AMIFailure as exc:
            raise _unavailable(exc) from exc
        if mixmonitor_id is None:
            raise AsteriskFailure("MixMonitor did not start: Asterisk gave no MixMonitorID")
        return MixMonitorStart(mixmonitor_id)

    async def read_variable(self, name: str) -> str | None:
        try:
            return await self._client.getvar(self.name, name)
        except AMIError as exc:
            raise AsteriskFailure(f"Asterisk could not read {name} on {self.name}: {exc}") from exc
        except AMIFailure as exc:
            raise _unavailable(exc) from exc

    def hold(self):
        # An HTTP request has no deadline of its own to defer.
        return nullcontext()

    async def stop_mixmonitor(self, mixmonitor_id: str) -> None:
        try:
            await self._client.stop_mixmonitor(self.name, mixmonitor_id)
        except AMIError as exc:
            raise AsteriskFailure(f"Asterisk could not stop MixMonitor {mixmonitor_id} on {self.name}: {exc}") from exc
        except AMIFailure as exc:
            raise _unavailable(exc) from exc


class Manager:
    def __init__(self, client: AMIClient):
        self.client = client

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def mute(self, channel: str, mixmonitor_id: str, state: bool) -> None:
        try:
            await self.client.mixmonitor_mute(channel, mixmonitor_id, state)
        except AMIError as exc:
            raise AsteriskFailure(f"Asterisk refused to {'mute' if state else 'unmute'} the recording: {exc}") from exc
        except AMIFailure as exc:
            raise _unavailable(exc) from exc

    async def system_name(self) -> str:
        """The Asterisk's system name ('' without one); raises AsteriskUnavailable."""
        try:
            return await self.client.system_name()
        except AMIFailure as exc:
            raise _unavailable(exc) from exc

    async def channels(self) -> list[LiveChannel]:
        """Every live channel; raises AsteriskUnavailable."""
        try:
            events = await self.client.core_show_channels()
        except AMIFailure as exc:
            raise _unavailable(exc) from exc
        return [
            LiveChannel(e.get("Channel", ""), e.get("Uniqueid", ""), e.get("BridgeId", ""), e.get("Linkedid", ""))
            for e in events
        ]

    async def find(self, target: str) -> AMIChannel:
        """The live channel ``target`` names: the one with that unique id, else the one whose
        extension it is. Among several with that extension the one in a bridge (the call the
        agent is on) is taken; if that does not decide, AmbiguousChannel names them all."""
        live = await self.channels()
        by_id = [c for c in live if c.unique_id == target]
        if by_id:
            return AMIChannel(self.client, by_id[0])
        matches = [c for c in live if channel_extension(c.name) == target]
        if not matches:
            raise NoSuchChannel(f"no live channel has the unique id or extension {target!r}")
        bridged = [c for c in matches if c.bridge_id]
        chosen = bridged if bridged else matches
        if len(chosen) > 1:
            names = ", ".join(sorted(c.name for c in chosen))
            raise AmbiguousChannel(
                f"extension {target!r} has {len(chosen)} live channels ({names}); give the unique id instead"
            )
        return AMIChannel(self.client, chosen[0])
