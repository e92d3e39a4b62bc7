"""The few ways a FastAGI exchange can fail.

Each is raised by the protocol layer and caught by whoever owns the session; none of them
carries anything but protocol facts (the application decides what a failure means to it).
"""

from __future__ import annotations


class AGIError(Exception):
    """Base of every error raised by :mod:`agi`."""


class HangupError(AGIError):
    """Asterisk closed the connection, so no further command can be sent.

    A ``HANGUP`` line alone is *not* this error: after it Asterisk keeps the session open in
    dead-channel mode (see :attr:`agi.session.Session.hung_up`).
    """


class ProtocolError(AGIError):
    """The peer sent bytes that are not FastAGI: a malformed environment or reply, a line
    over the size limit, or nothing at all within the time limit."""


class AGITimeout(ProtocolError):
    """The peer did not send what was expected within the time limit."""


class Overloaded(AGIError):
    """The server is at its limit of sessions; this one is only told so and closed."""


class UnknownRoute(AGIError):
    """No handler is registered for the script path the dialplan asked for."""

    def __init__(self, script: str, known: tuple[str, ...]):
        self.script = script
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown FastAGI route {script!r} (known routes: {listing})")


class CommandRejected(AGIError):
    """Asterisk answered a command with a non-200 code.

    ``code`` is 510 (unknown command), 511 (not permitted on a dead channel), 520 (usage
    error) or 503 (Asterisk out of memory); ``reply`` is the parsed :class:`agi.protocol.Reply`.
    """

    def __init__(self, command: str, reply):
        self.command = command
        self.reply = reply
        self.code = reply.code
        super().__init__(f"{command.split(' ', 1)[0]} rejected with {reply.code}: {reply.text}")
