"""The list's filters, read from the query string (so every search is a URL that can be
bookmarked and sent), strictly: a name the list does not know, a value given twice, or a value
it cannot read is one sentence, never a list that silently ignores it. Empty values (an empty
field of the form) count as not given."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from urllib.parse import parse_qsl, urlencode

from agi.protocol import is_clean_text

from ...domain import LEG_STATES, UserRef
from ...storage.browse import Filters
from ..arguments import HTTPFailure
from . import keyset

PAGE = 50
MAX_PAGE = 200
# Name in the URL -> (field of Filters, longest value).
TEXT = {"tag": ("tag", 255), "uniqueId": ("unique_id", 150), "extension": ("extension", 80), "owner": ("owner", 128)}
NAMES = ("since", "until", *TEXT, "state", "held", "next", "size")


def read_query(raw_query: str, user: UserRef) -> tuple[Filters, tuple[datetime, str] | None, int, dict[str, str]]:
    """The filters, the keyset position and the page size a list URL asks for, and the filters
    as given (for the form and the links). Raises HTTPFailure 400 with a sentence."""
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HTTPFailure(400, "the query string is not UTF-8 text") from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in NAMES:
            raise HTTPFailure(400, f"the list has no filter {name[:40]!r}: {', '.join(NAMES)}")
        value = value.strip()
        if not is_clean_text(value):
            raise HTTPFailure(400, f"{name} must be text without control characters")
        if name in given and given[name] != value:
            raise HTTPFailure(400, f"{name} is given twice with different values")
        if value:
            given[name] = value
    values: dict = {}
    for name, (field, longest) in TEXT.items():
        if name in given:
            if len(given[name]) > longest:
                raise HTTPFailure(400, f"{name} is longer than {longest} characters")
            values[field] = given[name]
    if "owner" in values and not user.is_manager:
        raise HTTPFailure(400, "only a Recording Manager filters by owner (you see your own legs)")
    if "since" in given:
        values["since"] = _when(given["since"], "since")
    if "until" in given:
        values["until"] = _when(given["until"], "until", end_of_day=True)
    if "state" in given:
        if given["state"] not in LEG_STATES:
            raise HTTPFailure(400, f"state must be one of {', '.join(LEG_STATES)}")
        values["state"] = given["state"]
    if "held" in given:
        if given["held"] not in ("yes", "no"):
            raise HTTPFailure(400, "held must be yes or no")
        values["held"] = given["held"] == "yes"
    after = None
    if "next" in given:
        try:
            after = keyset.decode(given["next"])
        except keyset.BadToken as exc:
            raise HTTPFailure(400, str(exc)) from None
    size = PAGE
    if "size" in given:
        if not given["size"].isdigit() or not 1 <= int(given["size"]) <= MAX_PAGE:
            raise HTTPFailure(400, f"size must be a whole number from 1 to {MAX_PAGE}")
        size = int(given["size"])
    return Filters(**values), after, size, given


def _when(text: str, name: str, *, end_of_day: bool = False) -> datetime:
    """A date (2026-11-28) or a time (2026-11-28T09:30), UTC unless it says otherwise. A date
    as ``until`` means the end of that day."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPFailure(400, f"{name} {text[:40]!r} is not a date (2026-11-28) or a time (2026-11-28T09:30)") from None
    if end_of_day and len(text) == 10:
        when = datetime.combine(when.date() + timedelta(days=1), time())
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def link(path: str, given: dict[str, str], **changes: str | None) -> str:
    """The list's URL with the filters ``given`` and ``changes`` (None removes one)."""
    query = {**given, **changes}
    query = {name: value for name, value in query.items() if value}
    return f"{path}?{urlencode(query)}" if query else path
