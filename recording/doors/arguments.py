"""Reading a request's arguments as the description (openapi.py) declares them: the query string
and a form body (urlencoded or multipart), strictly, so that a request that cannot be read gets
a 4xx and one sentence instead of an exception from deep inside a parser. Pure functions over
text and bytes; http.py does the reading from the socket.
"""

from __future__ import annotations

import email.parser
import email.policy
from urllib.parse import unquote_to_bytes

from ..errors import Invalid
from ..service import check_text
from .openapi import KEY, LEGACY, Operation

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# Charset labels read as UTF-8 (ASCII is a subset of it); anything else is refused, not guessed.
UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}
# RFC 7578 4.7: senders must not use Content-Transfer-Encoding; these three mean "as is".
AS_IS = {"7bit", "8bit", "binary"}

Pairs = list[tuple[str, str]]


class HTTPFailure(Exception):
    """An answer other than 200: ``status`` and one sentence. ``close``: the connection is
    closed after it (a body was left unread, and reading it would only cost time)."""

    def __init__(self, status: int, message: str, *, close: bool = False):
        self.status = status
        self.close = close
        super().__init__(message)


def urlencoded_pairs(text: str, what: str) -> Pairs:
    """The name=value pairs of a query string or a urlencoded body, read as browsers read them
    ('&' separates, '+' is a space, a piece without '=' is a name with an empty value, empty
    pieces are skipped), except that percent-escapes must decode to UTF-8: a 400 otherwise."""
    pairs = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((_unquote(name, what), _unquote(value, what)))
    return pairs


def _unquote(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeError:
        # NOTE: surrogates stand for bytes that were not UTF-8 on the wire (aiohttp decodes
        # the request line with surrogateescape); they fail the same way as a bad escape.
        raise HTTPFailure(400, f"{what} is not UTF-8 text (after percent-decoding)") from None


def _check_charset(charset: str | None, what: str) -> None:
    if charset is not None and charset.lower() not in UTF8:
        raise HTTPFailure(415, f"{what} must be UTF-8, not {charset[:40]!r}")


def form_pairs(raw: bytes, charset: str | None) -> Pairs:
    """The pairs of an application/x-www-form-urlencoded body."""
    _check_charset(charset, "a form body")
    try:
        # Trailing white space is no part of a urlencoded value (a space is '+' or %20), but
        # scripts that write a body with echo leave a newline there.
        text = raw.rstrip(b" \t\r\n").decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPFailure(400, "the form body is not UTF-8 text") from None
    return urlencoded_pairs(text, "the form body")


def multipart_pairs(raw: bytes, content_type: str) -> Pairs:
    """The fields of a multipart/form-data body (RFC 7578): plain text fields only, each with a
    name; a file, a nested multipart, a missing boundary or any malformed part is a 400."""
    header = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    # The mail parser reads MIME leniently and notes what it had to repair as defects, where
    # the HTTP stack's own reader raises whatever its parts raise; a defect here is a 400.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
    boundary = message.get_boundary()
    if not boundary:
        raise HTTPFailure(400, "a multipart/form-data body needs the boundary parameter in its Content-Type")
    if raw.strip() == b"--" + boundary.encode("utf-8", "surrogateescape") + b"--":
        return []  # a form without fields: the close delimiter alone
    if message.defects or not message.is_multipart():
        raise HTTPFailure(400, f"the multipart/form-data body is malformed ({_defects(message)})")
    return [_field(part) for part in message.iter_parts()]


def _field(part) -> tuple[str, str]:
    name = part.get_param("name", header="content-disposition")
    if part.defects:
        raise HTTPFailure(400, f"a part of the multipart/form-data body is malformed ({_defects(part)})")
    if part.get_content_disposition() != "form-data" or not isinstance(name, str):
        raise HTTPFailure(400, "each part of a multipart/form-data body needs Content-Disposition: form-data "
                               "with a name")
    if part.get_filename() is not None or part.get_content_type() != "text/plain":
        raise HTTPFailure(400, f"{name[:40]!r} must be a plain text field, not a file or {part.get_content_type()}")
    if str(part.get("content-transfer-encoding", "binary")).lower() not in AS_IS:
        raise HTTPFailure(400, f"{name[:40]!r} has a Content-Transfer-Encoding: multipart/form-data fields are sent "
                               "as they are (RFC 7578)")
    _check_charset(part.get_content_charset(), f"the field {name[:40]!r}")
    try:
        return name, part.get_payload(decode=True).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPFailure(400, f"the field {name[:40]!r} is not UTF-8 text") from None


def _defects(message) -> str:
    return ", ".join(type(defect).__name__ for defect in message.defects) or "no parts"


def resolve(operation: Operation, pairs: Pairs) -> dict[str, str]:
    """The operation's arguments among ``pairs``, under their declared names (matched without
    regard to case); an unknown name, a name given twice with different values, or a value
    that is not clean text within its limit is a 400 (a typo must not silently change who
    owns a recording). The legacy authentication fields are accepted and ignored."""
    declared = {argument.name: argument for argument in operation.arguments}
    wanted = {name.lower(): name for name in operation.names}
    found: dict[str, str] = {}
    for key, value in pairs:
        name = wanted.get(key.lower())
        if name is None:
            expected = ", ".join((*declared, KEY))
            raise HTTPFailure(400, f"unknown argument {key[:40]!r} (expected {expected})")
        if name in LEGACY:
            continue
        if name in found and found[name] != value:
            raise HTTPFailure(400, f"{name} is given twice with different values")
        if name != KEY:
            try:
                check_text(name, value, declared[name].max_length)
            except Invalid as exc:
                raise HTTPFailure(400, str(exc)) from None
        found[name] = value
    return found
