"""Pure functions over FastAGI bytes: the environment block, replies and command quoting.

Nothing here does I/O, so every rule can be tested with tables of good and malformed input.
Facts this module relies on were captured from Asterisk 22 (see ``../shared/asterisk``) and
read in ``res_agi.c``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from .errors import ProtocolError

# NOTE: res_agi sends keys as "agi_<name>: <value>", the value possibly empty with the space
# kept ("agi_accountcode: "). We accept a missing space too, which some AGI proxies produce.
_ARG_KEY = re.compile(r"^arg_([1-9][0-9]{0,2})$")
# One whole line of the block, as parse_environment_line reads it: the name is ASCII letters,
# digits and "_" with at least one letter or digit; one space after the colon is dropped (a
# trailing "\r" is dropped after the match).
_ENVIRONMENT_LINE = re.compile(r"^agi_([A-Za-z0-9_]*[A-Za-z0-9][A-Za-z0-9_]*):[ ]?(.*)$", re.MULTILINE)
_REPLY = re.compile(r"^([1-5][0-9][0-9])([ -])(.*)$", re.DOTALL)
# "(data)" then optional "key=value" words, e.g. "(timeout) endpos=1234". The greedy data
# group keeps parentheses that belong to a value, as in "(a) b)".
_DATA_AND_EXTRA = re.compile(r"^\((.*)\)((?:\s+[A-Za-z_]+=\S*)*)\s*$", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# NOTE: inside a quoted word res_agi keeps a tab as it is (captured: MSet values with tabs were
# stored exactly); a line break would end the command, and other control bytes were never seen.
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def decode(raw: bytes) -> str:
    """Bytes from the wire as text; bytes that are not UTF-8 survive as surrogates so that
    nothing is lost, and whoever needs clean text can check with :func:`is_clean_text`."""
    return raw.decode("utf-8", "surrogateescape")


def is_clean_text(value: str) -> bool:
    """True when ``value`` came from valid UTF-8 and holds no control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(value) is None


@dataclass(frozen=True)
class Environment:
    """The ``agi_*`` block Asterisk sends before the first command.

    ``variables`` maps each key without its ``agi_`` prefix (``uniqueid``, ``channel``...) to
    its value; ``args`` holds ``agi_arg_1..N`` in order: the extra ``AGI()`` arguments.
    """

    variables: Mapping[str, str]
    args: tuple[str, ...] = ()

    def get(self, name: str, default: str = "") -> str:
        return self.variables.get(name, default)

    @property
    def network_script(self) -> str:
        """The URL path after ``host[:port]/`` with its raw query: no leading ``/``, not
        URL-decoded (``recording/start?tag=22``)."""
        return self.get("network_script")

    @property
    def script(self) -> str:
        """The route: ``network_script`` before ``?``, without surrounding slashes."""
        return self.network_script.split("?", 1)[0].strip("/")

    @property
    def query(self) -> str:
        """The raw (still URL-encoded) query string of ``network_script``; empty if none."""
        parts = self.network_script.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    @property
    def uniqueid(self) -> str:
        return self.get("uniqueid")

    @property
    def channel(self) -> str:
        return self.get("channel")


def parse_environment_line(line: bytes) -> tuple[str, str]:
    """One environment line (without its ``\\n``) as ``(key, value)``; the key keeps its
    ``agi_`` prefix. Raises :class:`ProtocolError` for anything else."""
    if line[-1:] == b"\r":
        line = line[:-1]
    # NOTE: partition and byte tests, not a regex: this runs ~25 times per session.
    key, colon, value = line.partition(b":")
    if not colon or key[:4] != b"agi_" or not key.isascii() or not key[4:].replace(b"_", b"").isalnum():
        shown = line[:60].decode("ascii", "backslashreplace")
        raise ProtocolError(f"malformed AGI environment line: {shown!r}")
    if value[:1] == b" ":
        value = value[1:]
    return key.decode("ascii"), decode(value)


def parse_environment(lines: Iterable[bytes]) -> Environment:
    """The environment from its lines (the closing empty line excluded).

    Raises :class:`ProtocolError` on a malformed line, a repeated key, a gap in the
    ``agi_arg_N`` numbering, or a block without ``agi_network_script``.
    """
    return parse_environment_block(b"\n".join(lines))


def parse_environment_block(block: bytes) -> Environment:
    """:func:`parse_environment` of the block's lines joined by ``\n``, as it came off the
    wire. One decode and one regex pass over the whole block: done per line, this was the
    largest single cost of a session."""
    text = decode(block)
    pairs = _ENVIRONMENT_LINE.findall(text)
    if len(pairs) != (block.count(b"\n") + 1 if block else 0):
        for line in block.split(b"\n"):
            parse_environment_line(line)
        raise ProtocolError("malformed AGI environment")
    if "\r" in text:
        # NOTE: values are matched greedily (a lazy match before an optional "\r" was a
        # third of the parse); the rare CRLF block loses its "\r" here.
        pairs = [(key, value[:-1] if value[-1:] == "\r" else value) for key, value in pairs]
    variables = dict(pairs)
    if len(variables) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(f"AGI environment repeats agi_{key}")
            seen.add(key)
    if "network_script" not in variables:
        raise ProtocolError("AGI environment has no agi_network_script: not a FastAGI request")
    args: tuple[str, ...] = ()
    if b"agi_arg_" in block:
        numbered = {int(match.group(1)): value for key, value in variables.items() if (match := _ARG_KEY.match(key))}
        if numbered and sorted(numbered) != list(range(1, len(numbered) + 1)):
            raise ProtocolError("AGI environment has a gap in its agi_arg_N numbering")
        args = tuple(numbered[i] for i in range(1, len(numbered) + 1))
    return Environment(MappingProxyType(variables), args)


@dataclass(slots=True)
class Reply:
    """One reply to one command.

    ``code`` is the status (200 success; 510, 511, 520, 503 rejections). For a 200,
    ``result`` is the text after ``result=`` (``"1"``, ``"-1"``, or ``""`` in
    ``200 result= (timeout)``), ``data`` the text in parentheses or ``None`` when there are
    none, and ``extra`` what follows (``endpos=1234``, ``Gosub complete``). For other codes
    ``text`` is the message and ``usage`` the lines of a multi-line ``520-`` usage reply.
    """

    code: int
    text: str
    result: str | None = None
    data: str | None = None
    extra: str = ""
    usage: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def value(self) -> int | None:
        """``result`` as an integer; ``None`` when it is empty or not a number."""
        try:
            return int(self.result) if self.result else None
        except ValueError:
            return None


def parse_reply_line(line: str) -> tuple[int, bool, str]:
    """``(code, continued, text)`` of one reply line; ``continued`` is True for the ``520-``
    opening line of a multi-line usage reply."""
    match = _REPLY.match(line)
    if match is None:
        raise ProtocolError(f"malformed AGI reply: {line[:80]!r}")
    return int(match.group(1)), match.group(2) == "-", match.group(3)


def parse_reply(line: str, usage: tuple[str, ...] = ()) -> Reply:
    """The :class:`Reply` for a final reply line (``usage`` holds the body of a ``520-``
    reply). Raises :class:`ProtocolError` for a line that is not a reply."""
    if line.startswith("200 result=") and " " not in line[11:]:
        # NOTE: the common case ("200 result=1"), without the general parse.
        return Reply(200, line[4:], line[11:])
    code, continued, text = parse_reply_line(line)
    if continued:
        raise ProtocolError(f"AGI reply line {line[:40]!r} announces more lines")
    if not text.startswith("result="):
        if code in (100, 200):
            raise ProtocolError(f"AGI {code} reply without result=: {line[:80]!r}")
        return Reply(code, text, usage=usage)
    body = text[len("result="):]
    result, _, rest = body.partition(" ")
    rest = rest.strip()
    data = None
    extra = rest
    if rest.startswith("("):
        match = _DATA_AND_EXTRA.match(rest)
        if match:
            data, extra = match.group(1), match.group(2).strip()
    return Reply(code, text, result=result, data=data, extra=extra, usage=usage)


def quote(word: str) -> str:
    """``word`` as one AGI command argument.

    res_agi splits a command line on spaces and tabs, groups ``"..."`` into one word with the
    quotes removed and takes ``\\`` as an escape, so the word is wrapped in quotes with ``\\``
    and ``"`` escaped. A line break cannot be sent at all (it would end the command and let
    the rest run as another one), so control characters other than a tab raise
    :class:`ValueError`.
    """
    if _UNSENDABLE.search(word):
        raise ValueError("an AGI argument cannot hold control characters or line breaks")
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


# NOTE: matched with fullmatch(): "$" also matches before a final "\n", which let
# word("NAME\n") through unquoted and put a line break (a second command) on the wire.
_PLAIN = re.compile(r'[^\s"\\\x00-\x1f\x7f]+')


def word(text: str) -> str:
    """``text`` as it is when it is one plain word (a variable or application name, as the
    captures send them), otherwise quoted with :func:`quote`."""
    return text if _PLAIN.fullmatch(text) else quote(text)


# res_agi reads a command into an 8,192-byte buffer (AGI_BUF_LEN) with fgets(): a longer line is
# cut there and its rest runs as the next command. So a line, "\n" included, is at most this.
MAX_COMMAND_BYTES = 8191
# NOTE: MSet splits its data with Asterisk's application-argument parser, which does not split
# inside (...) or [...] (counted even inside quotes), removes '"' and takes '\' as "the next
# character is literal": each of these in a value is escaped with a backslash (captured on
# Asterisk 22 with 331 values, fastagi-mset-values.jsonl).
_MSET_ESCAPES = str.maketrans({char: "\\" + char for char in '\\",()[]'})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def app_argument(value: str) -> str:
    """``value`` as one argument of an application's data (MixMonitor's file name, an MSet
    value): each of ``\\ " , ( ) [ ]`` escaped with a backslash, so that Asterisk's argument
    parser gives it back exactly. Unescaped, a comma would end the argument and an unbalanced
    ``(`` would swallow every argument after it (MixMonitor's options, its ``i()``)."""
    return value.translate(_MSET_ESCAPES)


def mset_data(values: Mapping[str, str]) -> str:
    """The data word of ``EXEC MSet`` that sets every variable of ``values`` to its value
    exactly (before the AGI quoting that :func:`quote` adds). Names must be plain variable
    names; a value may hold anything but control characters."""
    pairs = []
    for name, value in values.items():
        if not _VARIABLE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a plain channel variable name")
        pairs.append(name + "=" + app_argument(value))
    return ",".join(pairs)


def mset_command(values: Mapping[str, str]) -> str:
    """The whole ``EXEC MSet`` command line (without its ``\n``) for ``values``."""
    return f"EXEC MSet {quote(mset_data(values))}"


def command_bytes(command: str) -> int:
    """The bytes ``command`` takes on the wire, its ``\n`` included (compare with
    :data:`MAX_COMMAND_BYTES`)."""
    return len(command.encode("utf-8", "surrogateescape")) + 1


def split_command(line: str, max_args: int = 128) -> list[str]:
    """How res_agi's ``parse_args()`` splits a command line into words (the inverse of
    :func:`quote`); used by tests and fake peers to read what a server sent."""
    words: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    in_word = False
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and not in_word:
                words.append("")
                in_word = True
            continue
        if char in " \t" and not quoted and not escaped:
            if in_word:
                words[-1] = "".join(current)
                current = []
            in_word = False
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        escaped = False
        if not in_word:
            if len(words) >= max_args - 1:
                continue
            words.append("")
            in_word = True
        current.append(char)
    if in_word:
        words[-1] = "".join(current)
    return words
