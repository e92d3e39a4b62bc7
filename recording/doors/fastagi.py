"""The FastAGI front door: routes the dialplan calls, reads their arguments, and tells the
dialplan the outcome in channel variables before the connection closes.

    same => n,AGI(agi://127.0.0.1:4573/recording/start?tag=${CRM_REF}&apiKey=${KEY})
    same => n,GotoIf($["${RECORDING_STATUS}" = "STARTED"]?talk)
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from agi import (
    AGIError,
    AGITimeout,
    CommandRejected,
    HangupError,
    Overloaded,
    Router,
    Session,
    UnknownRoute,
    app_argument,
    is_clean_text,
    quote,
)

from ..domain import Channel, MixMonitorStart, StartRequest, channel_extension
from ..errors import AsteriskFailure, Invalid, RecordingFailure, WrongKey
from ..ops.gate import Gate
from ..asterisk.manager import Manager
from ..service import LegRequest, RecordingService

log = logging.getLogger("recording.fastagi")
audit = logging.getLogger("recording.audit")

# The seed's argument names, matched without regard to case.
ARGUMENTS = {name.lower(): name for name in ("extenOrUniqueId", "agentLoginName", "tag", "apiKey")}
# Every FastAGI route, as the dialplan names it; build_router registers exactly these (metrics
# and `check --dialplan` read them here).
ROUTES = ("recording/start", "recording/stop", "recording/pause", "recording/resume", "recording/hangup", "health")
RESULT_VARIABLES = ("RECORDING_STATUS", "RECORDING_ERROR", "RECORDING_ID", "RECORDING_FILE", "RECORDING_DEFERRED")
_UNSAYABLE = re.compile("[\x00-\x1f\x7f\ufffd]")


def parse_arguments(env) -> dict[str, str]:
    """The seed's arguments from the URL-encoded query of ``agi_network_script`` and from
    ``key=value`` extra ``AGI()`` arguments (``agi_arg_N``), by canonical name.

    Raises Invalid for an unknown name, an argument that is not ``key=value``, or the same
    argument given twice with different values.
    """
    pairs: list[tuple[str, str, str]] = []
    try:
        for key, value in parse_qsl(env.query, keep_blank_values=True, errors="surrogateescape"):
            pairs.append((key, value, "the URL"))
    except ValueError as exc:
        raise Invalid(f"the AGI URL's query string cannot be read: {exc}") from None
    for number, arg in enumerate(env.args, 1):
        if arg == "":
            continue
        key, sep, value = arg.partition("=")
        if not sep:
            raise Invalid(f"AGI argument {number} is not key=value (one of {', '.join(ARGUMENTS.values())})")
        pairs.append((key.strip(), value, f"AGI argument {number}"))
    found: dict[str, str] = {}
    for key, value, origin in pairs:
        name = ARGUMENTS.get(key.lower())
        if name is None:
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise Invalid(f"unknown argument {shown!r} in {origin} (expected {', '.join(ARGUMENTS.values())})")
        if name in found and found[name] != value:
            raise Invalid(f"{name} is given twice with different values")
        found[name] = value
    return found


class AGIChannel:
    """The channel running the AGI, as the service sees it."""

    def __init__(self, session: Session):
        self._session = session
        self.unique_id = session.env.uniqueid
        self.name = session.env.channel

    async def start_mixmonitor(self, file: str, options: str, id_variable: str) -> MixMonitorStart:
        data = f"{app_argument(file)},{options}i({id_variable})"
        session = self._session
        try:
            (started,) = await session.send(f"EXEC MixMonitor {quote(data)}")
        except HangupError:
            # The command was sent; whether it ran is unknown, and the channel is gone.
            return MixMonitorStart(None, hung_up=True)
        except AGIError as exc:
            # Sent, but not answered as it should be (no reply in time, a garbled one): the
            # recording may well exist, so its leg is kept, without a MixMonitor id.
            log.warning("MixMonitor on %s sent but not answered properly (%s); its leg is kept", self.name, exc)
            return MixMonitorStart(None)
        if started.code != 200:
            raise AsteriskFailure(f"Asterisk rejected MixMonitor ({started.code} {started.text})")
        if started.value == -2:
            raise AsteriskFailure("Asterisk has no MixMonitor application (is app_mixmonitor loaded?)")
        if started.value != 0 and not session.hung_up:
            raise AsteriskFailure(f"MixMonitor failed to start (result {started.result})")
        # NOTE: MixMonitor answers 0 even when its thread did not start (app_mixmonitor.c); the
        # id in the leg's own variable, which nothing else sets, is what says it runs.
        try:
            (variable,) = await session.send(f"GET VARIABLE {id_variable}")
        except HangupError:
            return MixMonitorStart(None, hung_up=True)
        except AGIError as exc:
            log.warning("MixMonitor on %s started but its id was not read (%s); its leg is kept", self.name, exc)
            return MixMonitorStart(None, hung_up=session.hung_up)
        mixmonitor_id = variable.data if variable.ok and variable.value == 1 and variable.data else None
        if mixmonitor_id is None and not session.hung_up:
            raise AsteriskFailure("MixMonitor did not start: Asterisk gave no MixMonitor id")
        return MixMonitorStart(mixmonitor_id, hung_up=session.hung_up)

    async def read_variable(self, name: str) -> str | None:
        try:
            return await self._session.get_variable(name)
        except CommandRejected as exc:
            raise AsteriskFailure(f"Asterisk could not read {name}: {exc}") from exc

    def hold(self):
        return self._session.hold()

    async def stop_mixmonitor(self, mixmonitor_id: str) -> None:
        try:
            result = await self._session.exec("StopMixMonitor", mixmonitor_id)
        except CommandRejected as exc:
            raise AsteriskFailure(f"Asterisk rejected StopMixMonitor: {exc}") from exc
        if result == -2:
            raise AsteriskFailure("Asterisk has no StopMixMonitor application (is app_mixmonitor loaded?)")


async def report(session: Session, values: Mapping[str, str]) -> None:
    """Sets the result variables in one command (an error sentence too long for one AGI line
    is cut), and half-closes: the outcome is the last thing a route says, and the channel goes
    back to the dialplan while the log line and the metrics are written. A channel that is gone
    is only logged. Held: an outcome reached is told, even if the session's deadline came
    meanwhile."""
    with session.hold():
        try:
            await session.set_variables(values, shorten="RECORDING_ERROR")
        except (AGIError, ValueError) as exc:
            log.warning("could not tell the dialplan of %s (%s): %s", session.env.uniqueid,
                        values.get("RECORDING_STATUS"), exc)
        await session.half_close()


def outcome(status: str, error: str = "", leg_id: str = "", file: str = "", deferred: bool = False) -> dict[str, str]:
    """The result variables; all of them are always set, so none is left over from an earlier
    AGI() on the same channel."""
    return dict(zip(RESULT_VARIABLES, (status, sayable(error), leg_id, file, "1" if deferred else "0")))


def sayable(text: str) -> str:
    """``text`` as a channel variable can hold it: a control character (from a caller's input
    quoted in an error sentence) or a byte that was not UTF-8 becomes ``?``."""
    return text if is_clean_text(text) else _UNSAYABLE.sub("?", text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def told(result) -> dict[str, str]:
    """The result variables of a service outcome (StartOutcome or LegOutcome)."""
    return outcome(result.status, "", result.leg_id, result.file, result.deferred)


Route = Callable[[Session, dict[str, str]], Awaitable[dict[str, str]]]


@dataclass
class Hooks:
    """What the FastAGI door reports to the rest of the service: each session's outcome
    (``observe(route, status, seconds)``, for metrics), wrong keys (``gate``), and the
    service's health for the ``health`` route (``health() -> (ok, sentence)``)."""

    observe: Callable[[str, str, float], None] | None = None
    gate: Gate | None = None
    health: Callable[[], tuple[bool, str]] | None = None


def build_router(
    service: RecordingService, api_key_variable: str, manager: Manager | None = None, hooks: Hooks | None = None,
) -> Router:
    """The FastAGI routes of the recording service: ``recording/start``, ``stop``, ``pause``,
    ``resume`` and ``hangup`` (for the ``h`` extension), and ``health``."""
    hooks = hooks or Hooks()

    async def api_key(session: Session, args: dict[str, str]) -> None:
        key = args.get("apiKey")
        if key is None:
            # NOTE: reading the key from a channel variable keeps it out of agi_request,
            # which Asterisk writes to its own logs and to the CDR.
            key = await session.get_variable(api_key_variable)
        await service.authorize(key)

    async def start(session: Session, args: dict[str, str]) -> dict[str, str]:
        env = session.env
        if not env.uniqueid or not env.channel:
            raise Invalid("the AGI environment has no agi_uniqueid or agi_channel")
        target = args.get("extenOrUniqueId")
        if target and target not in (env.uniqueid, channel_extension(env.channel)):
            raise Invalid(
                f"extenOrUniqueId {target!r} is not this channel ({env.channel}, {env.uniqueid}); "
                "to record another channel use the HTTP API"
            )
        request = StartRequest(
            unique_id=env.uniqueid, channel=env.channel, agent_login=args.get("agentLoginName"),
            tag=args.get("tag"), source="agi",
        )
        return told(await service.start(request, AGIChannel(session)))

    async def target(session: Session, args: dict[str, str]) -> Channel:
        """The channel stop/pause/resume act on: this one unless extenOrUniqueId names another
        (which only the manager interface can reach)."""
        env = session.env
        wanted = args.get("extenOrUniqueId")
        if not wanted or wanted in (env.uniqueid, channel_extension(env.channel)):
            return AGIChannel(session)
        if manager is None:
            raise Invalid(f"extenOrUniqueId {wanted!r} is another channel; reaching it needs RECORDING_AMI_URL")
        return await manager.find(wanted)

    def change(operation, verb: str) -> Route:
        async def route(session: Session, args: dict[str, str]) -> dict[str, str]:
            channel = await target(session, args)
            actor = args.get("agentLoginName") or None
            if "tag" in args:
                raise Invalid(f"tag is for recording/start, not recording/{verb}")
            return told(await operation(LegRequest(channel.unique_id, channel.name, actor, actor or "dialplan"), channel))

        return route

    async def hangup(session: Session, args: dict[str, str]) -> dict[str, str]:
        return told(await service.channel_gone(session.env.uniqueid, by="hangup"))

    routes: dict[str, Route] = {
        "recording/start": start,
        "recording/stop": change(service.stop, "stop"),
        "recording/pause": change(service.pause, "pause"),
        "recording/resume": change(service.resume, "resume"),
        "recording/hangup": hangup,
    }

    def serve(name: str, route: Route):
        async def handler(session: Session) -> None:
            await run(session, name, route, api_key, hooks)

        return handler

    async def health(session: Session) -> None:
        # NOTE: no apiKey: it tells nothing but whether a recording can start now.
        ok, sentence = hooks.health() if hooks.health else (True, "")
        await report(session, outcome("OK" if ok else "ERROR", "" if ok else sentence))
        log.info("health %s status=%s%s", session.env.uniqueid or "-", "OK" if ok else "ERROR",
                 "" if ok else f" error={sentence!r}")

    async def on_error(session: Session, error: AGIError) -> None:
        if isinstance(error, UnknownRoute):
            values = outcome("INVALID", str(error))
        elif isinstance(error, (Overloaded, AGITimeout)):
            values = outcome("ERROR", f"the recording service could not serve this request: {error}")
        else:
            values = outcome("INVALID", f"the AGI request is malformed: {error}")
        await report(session, values)

    handlers = {name: serve(name, route) for name, route in routes.items()} | {"health": health}
    router = Router(on_error=on_error)
    for name in ROUTES:
        # NOTE: a KeyError here means ROUTES and the handlers above disagree.
        router.add(name, handlers[name])
    return router


async def run(session: Session, name: str, route: Route, api_key, hooks: Hooks) -> None:
    """Runs one route and always reports: every failure becomes a status and one sentence in
    RECORDING_ERROR, and one log line per session says what happened."""
    started = time.monotonic()
    env = session.env
    try:
        args = parse_arguments(env)
        if hooks.gate is not None:
            # NOTE: before the key is hashed: an address sending wrong keys waits first.
            await hooks.gate.hold_back(session.peer_address)
        await api_key(session, args)
        if hooks.gate is not None:
            hooks.gate.right_key(session.peer_address)
        values = await route(session, args)
    except RecordingFailure as exc:
        values = outcome(exc.status, str(exc))
        if exc.status == "DENIED":
            audit.warning("denied %s for %s on %s from %s: %s", name, env.uniqueid, env.channel, session.peer, exc)
        if isinstance(exc, WrongKey) and hooks.gate is not None:
            await hooks.gate.wrong_key(session.peer_address, "FastAGI")
    except HangupError:
        log.info("%s %s: Asterisk closed the connection", name, env.uniqueid)
        return
    except CommandRejected as exc:
        values = outcome("ERROR", f"Asterisk rejected a command: {exc}")
    except AGIError as exc:
        values = outcome("ERROR", f"the conversation with Asterisk failed: {exc}")
    except Exception:
        log.exception("%s %s failed", name, env.uniqueid)
        values = outcome("ERROR", "internal error in the recording service (see its log)")
    await report(session, values)
    seconds = time.monotonic() - started
    if hooks.observe is not None:
        hooks.observe(name, values["RECORDING_STATUS"], seconds)
    log.info(
        "%s %s status=%s leg=%s %.1fms%s%s",
        name, env.uniqueid, values["RECORDING_STATUS"], values["RECORDING_ID"] or "-",
        seconds * 1000,
        " hungup" if session.hung_up else "",
        f" error={values['RECORDING_ERROR']!r}" if values["RECORDING_ERROR"] else "",
    )
