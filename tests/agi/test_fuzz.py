"""Property tests: whatever a peer sends, the parsers fail only with ProtocolError and the
environment reader always finishes."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi import AGIError, Environment, Limits, ProtocolError
from agi.protocol import (
    parse_environment,
    parse_environment_line,
    parse_reply,
    parse_reply_line,
    quote,
    split_command,
)
from agi.server import read_environment
from agi.wire import LineReader, Wire

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that look enough like the protocol to get past the first checks now and then.
PIECES = st.sampled_from(
    [b"agi_", b"agi_arg_", b"agi_network_script", b":", b": ", b" ", b"\r", b"\n", b"\n\n", b"1", b"0",
     b"200", b"520-", b"result=", b"(", b")", b"\xff", b"\xc3", b"HANGUP", b"x" * 300]
)
WIRE = st.one_of(st.binary(max_size=400), st.lists(PIECES, max_size=40).map(b"".join))
REPLY_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda code, sep, body: f"{code}{sep}{body}",
        st.integers(90, 610),
        st.sampled_from([" ", "-", "", "\t"]),
        st.one_of(
            st.text(max_size=60),
            st.lists(st.sampled_from(["result=", "-1", "0", "1", " ", "(", ")", "x", "endpos=", "12"]), max_size=12)
            .map("".join),
        ),
    ),
)
# Any text except the characters a command line cannot carry, including the surrogates that
# stand for non-UTF-8 bytes of the environment.
COMMAND_TEXT = st.text(
    st.one_of(
        st.characters(exclude_characters=[chr(c) for c in [*range(32), 127]]),
        st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]),
    )
)


def only_protocol_errors(function, *args):
    try:
        return function(*args)
    except ProtocolError:
        return None


@FUZZ
@given(WIRE)
def test_parse_environment_line_raises_only_protocol_error(line):
    parsed = only_protocol_errors(parse_environment_line, line)
    if parsed is not None:
        key, value = parsed
        assert key.startswith("agi_")
        # Nothing is lost: the value's bytes come back out.
        assert value.encode("utf-8", "surrogateescape") in line


@FUZZ
@given(WIRE)
def test_parse_environment_raises_only_protocol_error(block):
    env = only_protocol_errors(parse_environment, block.split(b"\n"))
    if env is not None:
        assert isinstance(env, Environment)
        assert "network_script" in env.variables


def environment_line_by_line(lines):
    """The environment as read one line at a time with parse_environment_line: what the
    one-pass block parser must agree with."""
    variables = {}
    for line in lines:
        key, value = parse_environment_line(line)
        if key[4:] in variables:
            raise ProtocolError("repeated")
        variables[key[4:]] = value
    return variables


ENVIRONMENT_LINES = st.lists(
    st.one_of(
        st.lists(PIECES, max_size=8).map(b"".join).filter(lambda line: b"\n" not in line),
        st.builds(lambda key, value: b"agi_" + key + b": " + value,
                  st.sampled_from([b"network_script", b"uniqueid", b"arg_1", b"arg_2", b"x_", b"_", b"a-b"]),
                  st.binary(max_size=30).filter(lambda v: b"\n" not in v)),
    ),
    max_size=8,
)


@FUZZ
@given(ENVIRONMENT_LINES)
def test_block_parser_agrees_with_the_line_parser(lines):
    expected = only_protocol_errors(environment_line_by_line, lines)
    env = only_protocol_errors(parse_environment, lines)
    if env is not None:
        assert dict(env.variables) == expected
    elif expected is not None:
        # Refused for the block as a whole (no agi_network_script, a gap in agi_arg_N).
        assert "network_script" not in expected or any(key.startswith("arg_") for key in expected)


@FUZZ
@given(REPLY_TEXT)
def test_parse_reply_line_raises_only_protocol_error(line):
    parsed = only_protocol_errors(parse_reply_line, line)
    if parsed is not None:
        assert 100 <= parsed[0] <= 599


@FUZZ
@given(REPLY_TEXT)
def test_parse_reply_raises_only_protocol_error(line):
    reply = only_protocol_errors(parse_reply, line)
    if reply is not None and reply.code in (100, 200):
        assert reply.result is not None


@FUZZ
@given(st.binary(max_size=300))
def test_parse_reply_raises_only_protocol_error_on_decoded_bytes(raw):
    only_protocol_errors(parse_reply, raw.decode("utf-8", "surrogateescape"))


@FUZZ
@given(COMMAND_TEXT)
def test_quote_round_trips_through_split_command(text):
    assert split_command(quote(text)) == [text]


@FUZZ
@given(st.lists(COMMAND_TEXT, min_size=1, max_size=6))
def test_quoted_words_stay_apart(words):
    assert split_command(" ".join(quote(w) for w in words)) == words


class BoundedWire(Wire):
    """A Wire that fails a reader which keeps asking for more past EOF: such a loop never
    suspends, so no asyncio timeout could end it."""

    reads = 0

    async def more(self) -> bool:
        self.reads += 1
        assert self.reads < 100, "more() called again and again: the reader spins at EOF"
        return await super().more()


async def read_stream(data: bytes, cut: int, limits: Limits):
    """read_environment over ``data`` fed in two pieces, then EOF."""
    wire = BoundedWire()
    wire.data_received(data[:cut])
    wire.data_received(data[cut:])
    wire.eof_received()
    async with asyncio.timeout(2):
        return await read_environment(LineReader(wire, limits.max_line_bytes), limits)


@STREAMS
@given(WIRE, st.integers(0, 400), st.sampled_from([Limits(), Limits(max_line_bytes=32, max_environment_bytes=128)]))
def test_read_environment_always_finishes(data, cut, limits):
    try:
        env = asyncio.run(read_stream(data, cut, limits))
    except AGIError as exc:
        # A framed error still carries what could be read, for on_error.
        if getattr(exc, "framed", False):
            assert isinstance(exc.env, Environment)
    else:
        assert isinstance(env, Environment)
        assert b"\n\n" in data or b"\n\r\n" in data
