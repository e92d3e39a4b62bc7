"""The pure FastAGI parsers, against the bytes a real Asterisk 22 sent (``tests/captures``)
and against deliberately malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from agi import ProtocolError
from agi.protocol import (
    MAX_COMMAND_BYTES,
    Environment,
    command_bytes,
    is_clean_text,
    parse_environment,
    parse_environment_line,
    parse_reply,
    parse_reply_line,
    mset_command,
    mset_data,
    quote,
    split_command,
    word,
)
from tests.capture_files import captured_msets

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
RAW = sorted(CAPTURES.glob("fastagi-*.raw.txt"))


def capture(name: str) -> tuple[list[bytes], list[str]]:
    """The environment lines of a raw capture (up to the first empty line) and the lines
    Asterisk sent after it."""
    data = (CAPTURES / name).read_bytes()
    head, _, tail = data.partition(b"\n\n")
    return head.split(b"\n"), tail.decode("utf-8").splitlines()


def env_of(*lines: bytes) -> Environment:
    return parse_environment([b"agi_network_script: recording/start", *lines])


# -- the environment, line by line ---------------------------------------------------------


@pytest.mark.parametrize(
    "line, key, value",
    [
        (b"agi_network: yes", "agi_network", "yes"),
        (b"agi_network_script: recording/start?tag=22", "agi_network_script", "recording/start?tag=22"),
        # NOTE: res_agi keeps the space before an empty value.
        (b"agi_accountcode: ", "agi_accountcode", ""),
        (b"agi_accountcode:", "agi_accountcode", ""),
        (b"agi_callerid:unknown", "agi_callerid", "unknown"),
        (b"agi_channel: Local/100@acceptance-00000001;2", "agi_channel", "Local/100@acceptance-00000001;2"),
        (b"agi_arg_1: first arg", "agi_arg_1", "first arg"),
        (b"agi_arg_3: quoted,with comma", "agi_arg_3", "quoted,with comma"),
        (b"agi_uniqueid: 1795825765.3\r", "agi_uniqueid", "1795825765.3"),
        # Only the one separating space goes; the rest belongs to the value.
        (b"agi_calleridname:   two  spaces ", "agi_calleridname", "  two  spaces "),
        (b"agi_dnid: a: b", "agi_dnid", "a: b"),
        (b"agi_calleridname: J\xc3\xbcrgen", "agi_calleridname", "J\u00fcrgen"),
    ],
)
def test_environment_line_splits_key_and_value(line, key, value):
    assert parse_environment_line(line) == (key, value)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\r",
        b"agi_network yes",
        b"network: yes",
        b"AGI_NETWORK: yes",
        b"agi_: yes",
        b"agi_net work: yes",
        b"agi_net-work: yes",
        b" agi_network: yes",
        b"200 result=1",
        b"HANGUP",
        b"agi_\xff: yes",
        b"agi_network\xc3\xa9: yes",
    ],
)
def test_malformed_environment_line_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_environment_line(line)


def test_non_utf8_value_survives_as_surrogates_and_is_flagged():
    key, value = parse_environment_line(b"agi_calleridname: caf\xe9 \xff")
    assert key == "agi_calleridname"
    assert value == "caf\udce9 \udcff"
    # The original bytes can be had back, so nothing was lost.
    assert value.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"
    assert not is_clean_text(value)


@pytest.mark.parametrize(
    "value, clean",
    [
        ("", True),
        ("recording/start?tag=22", True),
        ("J\u00fcrgen \u260e", True),
        ("caf\udce9", False),
        ("a\tb", False),
        ("a\rb", False),
        ("a\nb", False),
        ("nul\x00", False),
        ("del\x7f", False),
    ],
)
def test_is_clean_text(value, clean):
    assert is_clean_text(value) is clean


# -- the environment block -----------------------------------------------------------------


@pytest.mark.parametrize("path", RAW, ids=lambda p: p.name)
def test_every_captured_environment_parses(path):
    lines, _ = capture(path.name)
    env = parse_environment(lines)
    assert env.get("network") == "yes"
    assert env.get("version") == "22.10.1"
    assert env.get("accountcode") == ""
    assert env.script.startswith("recording/")
    assert env.query.startswith("tag=22")
    # agi_request carries the same path after host:port, so the two must agree.
    assert env.get("request").endswith("/" + env.network_script)
    assert all(is_clean_text(v) for v in env.variables.values())


def test_captured_ext100_environment():
    lines, _ = capture("fastagi-start-ext100.raw.txt")
    env = parse_environment(lines)
    assert env.network_script == "recording/start?tag=22&agentLoginName=Fred&apiKey=k1"
    assert env.script == "recording/start"
    assert env.query == "tag=22&agentLoginName=Fred&apiKey=k1"
    assert env.uniqueid == "1795825765.3"
    assert env.channel == "Local/100@acceptance-00000001;2"
    assert env.get("callerid") == "unknown"
    assert env.get("threadid") == "140521815484096"
    assert env.args == ()
    assert len(env.variables) == 22


def test_captured_ext102_arguments_keep_spaces_and_commas():
    lines, _ = capture("fastagi-start-ext102.raw.txt")
    env = parse_environment(lines)
    assert env.args == ("first arg", "second", "quoted,with comma", "102")
    # The query string never turns into arguments.
    assert env.query == "tag=22&agentLoginName=Fred&apiKey=k1"


def test_crlf_environment_reads_like_lf():
    lines, _ = capture("fastagi-start-ext102.raw.txt")
    assert parse_environment([line + b"\r" for line in lines]) == parse_environment(lines)


def test_environment_variables_cannot_be_changed():
    env = env_of()
    with pytest.raises(TypeError):
        env.variables["network_script"] = "other"


def test_argument_numbering_may_run_past_nine():
    env = env_of(*(b"agi_arg_%d: a%d" % (n, n) for n in range(1, 13)))
    assert env.args == tuple(f"a{n}" for n in range(1, 13))


@pytest.mark.parametrize(
    "lines, why",
    [
        ([b"agi_network: yes"], "no agi_network_script"),
        ([], "no agi_network_script"),
        ([b"agi_network_script: a", b"agi_network_script: b"], "repeats"),
        ([b"agi_network_script: a", b"agi_uniqueid: 1", b"agi_uniqueid: 1"], "repeats"),
        ([b"agi_network_script: a", b"agi_arg_2: x"], "gap"),
        ([b"agi_network_script: a", b"agi_arg_1: x", b"agi_arg_3: y"], "gap"),
        ([b"agi_network_script: a", b"Content-Length: 0"], "malformed"),
        ([b"agi_network_script: a", b"GET / HTTP/1.1"], "malformed"),
        ([b"agi_network_script: a", b""], "malformed"),
    ],
)
def test_malformed_environment_is_a_protocol_error(lines, why):
    with pytest.raises(ProtocolError, match=why):
        parse_environment(lines)


@pytest.mark.parametrize(
    "network_script, script, query",
    [
        ("recording/start?tag=22&agentLoginName=Fred&apiKey=k1", "recording/start",
         "tag=22&agentLoginName=Fred&apiKey=k1"),
        ("recording/start", "recording/start", ""),
        ("recording/start?", "recording/start", ""),
        # Raw, as Asterisk sends it: decoding is the route's business.
        ("recording/st%61rt?name=J%C3%BCrgen&x=a%26b", "recording/st%61rt", "name=J%C3%BCrgen&x=a%26b"),
        ("recording/start?a=1?b=2", "recording/start", "a=1?b=2"),
        ("/recording/start/?tag=1", "recording/start", "tag=1"),
        ("", "", ""),
    ],
)
def test_script_and_query_are_raw_and_without_slashes(network_script, script, query):
    env = Environment({"network_script": network_script})
    assert (env.script, env.query) == (script, query)


# -- replies -------------------------------------------------------------------------------


def captured_replies() -> list[str]:
    found: list[str] = []
    for path in RAW:
        found += [line for line in capture(path.name)[1] if line != "HANGUP"]
    return sorted(set(found))


@pytest.mark.parametrize("line", captured_replies())
def test_every_captured_reply_parses(line):
    reply = parse_reply(line)
    assert str(reply.code) == line[:3]
    if reply.ok:
        assert reply.value in (-1, 0, 1)


@pytest.mark.parametrize(
    "line, code, result, data, extra",
    [
        ("200 result=1 (1795825765.3)", 200, "1", "1795825765.3", ""),
        ("200 result=1 (Local/100@acceptance-00000001;2)", 200, "1", "Local/100@acceptance-00000001;2", ""),
        ("200 result=1", 200, "1", None, ""),
        ("200 result=0", 200, "0", None, ""),
        ("200 result=-1", 200, "-1", None, ""),
        ("200 result=-2", 200, "-2", None, ""),
        ("200 result= (timeout)", 200, "", "timeout", ""),
        ("200 result=0 (timeout) endpos=1234", 200, "0", "timeout", "endpos=1234"),
        ("200 result=0 endpos=24807", 200, "0", None, "endpos=24807"),
        ("200 result=0 Gosub complete", 200, "0", None, "Gosub complete"),
        ("100 result=0 Trying...", 100, "0", None, "Trying..."),
        ("503 result=-2 Memory allocation failure", 503, "-2", None, "Memory allocation failure"),
        ("200 result=1 ()", 200, "1", "", ""),
        ("200 result=1 (has spaces  inside )", 200, "1", "has spaces  inside ", ""),
        # A value may itself hold parentheses; only the last ")" closes the data.
        ("200 result=1 (f(x))", 200, "1", "f(x)", ""),
        ("200 result=1 (a) b)", 200, "1", "a) b", ""),
        # The value "x) endpos=1" of GET VARIABLE, not data "x" followed by "endpos=1)".
        ("200 result=1 (x) endpos=1)", 200, "1", "x) endpos=1", ""),
        ("200 result=1 ((", 200, "1", None, "(("),
        ("200 result=1 (x) endpos=5 other=", 200, "1", "x", "endpos=5 other="),
        ("200 result=1 (a=b)", 200, "1", "a=b", ""),
    ],
)
def test_result_reply(line, code, result, data, extra):
    reply = parse_reply(line)
    assert (reply.code, reply.result, reply.data, reply.extra) == (code, result, data, extra)
    assert reply.text == line[4:]


@pytest.mark.parametrize(
    "line, value",
    [
        ("200 result=1", 1),
        ("200 result=0", 0),
        ("200 result=-1", -1),
        ("200 result=-2", -2),
        ("200 result= (timeout)", None),
        ("200 result=abc", None),
        ("200 result=48 (0)", 48),
    ],
)
def test_reply_value(line, value):
    assert parse_reply(line).value == value


@pytest.mark.parametrize(
    "line, code, text",
    [
        ("510 Invalid or unknown command", 510, "Invalid or unknown command"),
        ("511 Command Not Permitted on a dead channel or intercept routine", 511,
         "Command Not Permitted on a dead channel or intercept routine"),
        ("520 Invalid command syntax.  Proper usage not available.", 520,
         "Invalid command syntax.  Proper usage not available."),
        ("520 End of proper usage.", 520, "End of proper usage."),
    ],
)
def test_rejection_reply(line, code, text):
    reply = parse_reply(line)
    assert (reply.code, reply.text, reply.result, reply.data) == (code, text, None, None)
    assert not reply.ok
    assert reply.value is None


def test_usage_lines_are_kept_on_the_final_reply():
    usage = ("Invalid command syntax.  Proper usage follows:", " Usage: GET VARIABLE <variablename>")
    reply = parse_reply("520 End of proper usage.", usage)
    assert reply.usage == usage


@pytest.mark.parametrize(
    "line, expected",
    [
        ("200 result=1", (200, False, "result=1")),
        ("520-Invalid command syntax.  Proper usage follows:",
         (520, True, "Invalid command syntax.  Proper usage follows:")),
        ("510 ", (510, False, "")),
    ],
)
def test_reply_line(line, expected):
    assert parse_reply_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "HANGUP",
        "200",
        "200result=1",
        "2000 result=1",
        "20 result=1",
        "600 result=1",
        "099 result=1",
        " 200 result=1",
        "abc result=1",
        "200\tresult=1",
        "agi_network: yes",
        # A 200 or 100 reply always carries a result.
        "200 OK",
        "100 Trying...",
        # The opening line of a multi-line reply is not a reply by itself.
        "520-Invalid command syntax.  Proper usage follows:",
    ],
)
def test_malformed_reply_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_reply(line)


# -- quoting commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, words",
    [
        ("GET VARIABLE UNIQUEID", ["GET", "VARIABLE", "UNIQUEID"]),
        ("EXEC MixMonitor /tmp/x.wav b", ["EXEC", "MixMonitor", "/tmp/x.wav", "b"]),
        ('EXEC "MixMonitor" "/tmp/a b.wav,b"', ["EXEC", "MixMonitor", "/tmp/a b.wav,b"]),
        ('SET VARIABLE RECORDING_STATUS "STARTED"', ["SET", "VARIABLE", "RECORDING_STATUS", "STARTED"]),
        ('STREAM FILE beep ""', ["STREAM", "FILE", "beep", ""]),
        ("  a \t b  ", ["a", "b"]),
        ("a\\ b", ["a b"]),
        ('a\\"b', ['a"b']),
        ("a\\\\b", ["a\\b"]),
        ('"a"b"c"', ["abc"]),
        ('ab"c d"', ["abc d"]),
        ('"unterminated quote', ["unterminated quote"]),
        ("trailing\\", ["trailing"]),
        ('"" ""', ["", ""]),
        ("", []),
    ],
)
def test_split_command_follows_res_agi_parse_args(line, words):
    assert split_command(line) == words


def test_split_command_drops_words_past_the_argument_limit():
    assert split_command("a b c d e", max_args=4) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "two words",
        "/tmp/acc-1795825765.3.wav,bi(MIXMON_ID)",
        'say "hi"',
        "back\\slash\\",
        '\\"',
        "${UNIQUEID}",
        " leading and trailing ",
        "tab-free but \u00fcnicode \u260e",
        "a'b",
        # NOTE: a tab inside a quoted word is kept by res_agi (fastagi-mset-ext390).
        "tab\there",
    ],
)
def test_quote_round_trips_through_split_command(text):
    assert split_command(quote(text)) == [text]
    assert split_command(f"SET VARIABLE X {quote(text)}") == ["SET", "VARIABLE", "X", text]


@pytest.mark.parametrize(
    "text",
    ["a\nEXEC System reboot", "a\r\nHANGUP", "ends in newline\n", "nul\x00", "del\x7f", "\x1b[2J"],
)
def test_quote_refuses_control_characters(text):
    # A line break would end the command and let the rest run as a command of its own.
    with pytest.raises(ValueError):
        quote(text)


@pytest.mark.parametrize(
    "text, sent",
    [
        ("UNIQUEID", "UNIQUEID"),
        ("MixMonitor", "MixMonitor"),
        ("RECORDING_STATUS", "RECORDING_STATUS"),
        ("two words", '"two words"'),
        ("", '""'),
        ('q"uote', '"q\\"uote"'),
        ("back\\slash", '"back\\\\slash"'),
    ],
)
def test_word_sends_plain_words_as_they_are(text, sent):
    assert word(text) == sent
    assert split_command(word(text)) == [text]


@pytest.mark.parametrize("text", ["UNIQUEID\n", "A\nB", "A\r", "\n", "A\x01"])
def test_word_refuses_control_characters(text):
    with pytest.raises(ValueError):
        word(text)


# -- MSet: several variables in one command ---------------------------------------------------


def test_the_capture_has_the_msets_it_promises():
    # Guards the comparison below against an empty or misread capture.
    msets = captured_msets()
    assert len(msets) == 7
    assert sum(len(values) for _, values in msets) == 35
    assert msets[4][1]["V24"] == "unknown argument 'foo(' in the URL (expected extenOrUniqueId, agentLoginName, tag, apiKey)"


@pytest.mark.parametrize("line, values", captured_msets(), ids=lambda v: v[:24] if isinstance(v, str) else "")
def test_mset_sends_exactly_the_line_that_asterisk_stored_the_values_from(line, values):
    assert mset_command(values) == line


def test_mset_data_escapes_what_the_argument_parser_would_take():
    assert mset_data({"A": "x", "B": "a,b", "C": "(", "D": "\\", "E": '"', "F": "[]", "G": "y=z"}) == (
        r'A=x,B=a\,b,C=\(,D=\\,E=\",F=\[\],G=y=z'
    )


@pytest.mark.parametrize("name", ["", "1A", "A B", "A,B", "A=B", "A(1)", "A\nB"])
def test_mset_refuses_a_name_that_is_not_a_plain_variable_name(name):
    with pytest.raises(ValueError):
        mset_data({name: "x"})


def test_mset_refuses_a_line_break_in_a_value():
    with pytest.raises(ValueError):
        mset_command({"A": "one\nEXEC System reboot"})


def test_command_bytes_counts_the_newline_and_utf8():
    assert command_bytes("NOOP") == 5
    assert command_bytes("SET VARIABLE A \"\u00e9\"") == len("SET VARIABLE A \"\"") + 2 + 1
    assert MAX_COMMAND_BYTES == 8191
