"""FastAGI for asyncio: the protocol, a session, and a server that routes by script path.

This package knows the protocol Asterisk speaks and nothing about what a route does with it;
it imports nothing from the rest of the project (``tests/agi/test_imports.py`` checks).
"""

from .errors import (
    AGIError,
    AGITimeout,
    CommandRejected,
    HangupError,
    Overloaded,
    ProtocolError,
    UnknownRoute,
)
from .protocol import Environment, Reply, app_argument, is_clean_text, parse_environment, parse_reply, quote
from .server import Limits, Router, Server
from .session import LineTooLong, Session

__all__ = [
    "AGIError",
    "AGITimeout",
    "CommandRejected",
    "Environment",
    "HangupError",
    "Limits",
    "Overloaded",
    "LineTooLong",
    "ProtocolError",
    "Reply",
    "Router",
    "Server",
    "Session",
    "UnknownRoute",
    "app_argument",
    "is_clean_text",
    "parse_environment",
    "parse_reply",
    "quote",
]
