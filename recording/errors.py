"""The ways a recording request can fail, each with the status the dialplan or the HTTP caller
sees. Raised by the service and the store, translated once at each front door."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting has a value the service cannot run with; the message names the setting."""


class RecordingFailure(Exception):
    """Base of the failures reported to the caller. ``status`` is the RECORDING_STATUS value
    and the message is the one clear sentence put in RECORDING_ERROR."""

    status = "ERROR"


class Denied(RecordingFailure):
    """The apiKey is missing or wrong, or the user may not do this. Nothing was recorded."""

    status = "DENIED"


class WrongKey(Denied):
    """The apiKey is missing or wrong (counted per address, to slow down guessing)."""


class Invalid(RecordingFailure):
    """The request itself is wrong: a bad or missing argument, an unknown agent, a channel
    that is not this one. Nothing was recorded."""

    status = "INVALID"


class AsteriskFailure(RecordingFailure):
    """Asterisk did not do what was asked (MixMonitor missing or refused, the channel gone)."""


class AsteriskUnavailable(AsteriskFailure):
    """Asterisk could not be asked: the manager connection is down or did not answer in time."""


class StorageUnavailable(RecordingFailure):
    """The database (or the journal that stands in for it) cannot be reached or written now;
    the same write may succeed later.

    ``outage`` is False when the database server answered and turned the connection away for
    good reason (a wrong password, an unknown database or role): a setting to fix, not an
    outage to wait out. Starting from the directory snapshot is for outages only.
    """

    def __init__(self, *args, outage: bool = True):
        super().__init__(*args)
        self.outage = outage


class StorageRefused(RecordingFailure):
    """The database is up but refused this very write (a constraint, a trigger, bad data):
    trying again would not help."""


class NoSuchChannel(Invalid):
    """No live channel has the unique id or extension the caller named."""


class AmbiguousChannel(Invalid):
    """Several live channels fit the extension and the rule cannot choose between them."""


class NotFound(Invalid):
    """What the caller named is not there: a leg id nobody has, or a leg's file that is gone.
    The message says which, and where the service looked."""


class Conflict(Invalid):
    """The leg cannot do this in the state it is in: it is still recording, or its audio is
    being or has been purged."""


class MonitorUnavailable(RecordingFailure):
    """The recordings' files cannot be seen from this host (the monitor directory is on the
    Asterisk host and not shared here, or a share is not mounted): nothing was read or changed."""
