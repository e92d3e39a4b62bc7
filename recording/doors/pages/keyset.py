"""The list's pages by keyset: ``?next=`` carries the (start, id) of the last leg shown, so the
next page is "the legs before that one" (an index range), never "skip N" (OFFSET reads and
throws away every leg before the page). The token is opaque to the person: base64url text that
is only ever made here; a token that does not read back is refused with one sentence.

It carries no rights: the list's query applies the viewer's rules to whatever page it names.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone

_VERSION = "1"
_LEG_ID = re.compile(r"^[0-9a-f]{1,32}$")


class BadToken(ValueError):
    """A ``next`` token that is not one this list made."""


def encode(start: datetime, leg_id: str) -> str:
    """The token of the page after the leg started at ``start`` with id ``leg_id``."""
    text = f"{_VERSION}|{start.astimezone(timezone.utc).isoformat()}|{leg_id}"
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


def decode(token: str) -> tuple[datetime, str]:
    """(start, id) of the last leg of the page before; raises BadToken."""
    try:
        padded = token + "=" * (-len(token) % 4)
        version, start, leg_id = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split("|")
        when = datetime.fromisoformat(start)
    except (ValueError, UnicodeError, binascii.Error):
        raise BadToken("the next token is not one this list gave (follow the list's own Next link)") from None
    if version != _VERSION or when.tzinfo is None or not _LEG_ID.match(leg_id):
        raise BadToken("the next token is not one this list gave (follow the list's own Next link)")
    return when, leg_id
