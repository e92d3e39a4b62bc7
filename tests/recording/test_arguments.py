"""The argument reader as pure functions: tables of good and malformed query strings and form
bodies, and whatever bytes come, only an HTTPFailure with a 4xx."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recording.doors.arguments import HTTPFailure, form_pairs, multipart_pairs, resolve, urlencoded_pairs
from recording.doors.openapi import OPERATIONS

START = next(op for op in OPERATIONS if op.handler == "start")
BY_TAG = next(op for op in OPERATIONS if op.handler == "by_tag")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "text,pairs",
    [
        ("", []),
        ("a=1&b=2", [("a", "1"), ("b", "2")]),
        ("&&a=1&&", [("a", "1")]),
        ("a", [("a", "")]),
        ("=x", [("", "x")]),
        ("a=1=2", [("a", "1=2")]),
        ("a=x+y%2B%20z", [("a", "x y+ z")]),
        ("t%C3%A4g=%E2%82%AC", [("täg", "€")]),
        ("a=%zz&b=%", [("a", "%zz"), ("b", "%")]),
        ("a=1;b=2", [("a", "1;b=2")]),
    ],
)
def test_urlencoded_pairs_as_browsers_read_them(text, pairs):
    assert urlencoded_pairs(text, "the query string") == pairs


@pytest.mark.parametrize("text", ["a=%ff", "a=%C3", "%ed%a0%80=x", "a=\udcff"])
def test_escapes_that_are_not_utf8_are_a_400(text):
    with pytest.raises(HTTPFailure) as refused:
        urlencoded_pairs(text, "the query string")
    assert refused.value.status == 400
    assert str(refused.value) == "the query string is not UTF-8 text (after percent-decoding)"


def test_form_bodies_are_utf8_only():
    assert form_pairs("tag=Zwölf".encode(), None) == [("tag", "Zwölf")]
    assert form_pairs(b"tag=x", "UTF-8") == [("tag", "x")]
    assert form_pairs(b"tag=x+y\r\n", None) == [("tag", "x y")]
    with pytest.raises(HTTPFailure) as latin:
        form_pairs(b"tag=x", "iso-8859-1")
    assert latin.value.status == 415
    with pytest.raises(HTTPFailure) as raw:
        form_pairs("tag=Zwölf".encode("latin-1"), None)
    assert raw.value.status == 400


def test_multipart_fields():
    body = (b'--b\r\nContent-Disposition: form-data; name="tag"\r\n\r\nZw\xc3\xb6lf\r\n'
            b'--b\r\nContent-Disposition: form-data; name="extenOrUniqueId"\r\nContent-Type: text/plain; charset=utf-8'
            b'\r\n\r\n410\r\n--b--\r\n')
    assert multipart_pairs(body, "multipart/form-data; boundary=b") == [("tag", "Zwölf"), ("extenOrUniqueId", "410")]
    assert multipart_pairs(b"--b--\r\n", 'multipart/form-data; boundary="b"') == []


def test_resolve_matches_names_without_regard_to_case_and_ignores_the_legacy_fields():
    found = resolve(START, [("EXTENORUNIQUEID", "410"), ("extenOrUniqueId", "410"), ("TimeStamp", "1"),
                            ("hash", "x"), ("apikey", "k"), ("tag", "")])
    assert found == {"extenOrUniqueId": "410", "apiKey": "k", "tag": ""}


@pytest.mark.parametrize(
    "operation,pairs,sentence",
    [
        (START, [("tga", "x")], "unknown argument 'tga' (expected extenOrUniqueId, agentLoginName, tag, apiKey)"),
        (BY_TAG, [("extenOrUniqueId", "410")], "unknown argument 'extenOrUniqueId' (expected tag, loginName, apiKey)"),
        (START, [("tag", "a"), ("TAG", "b")], "tag is given twice with different values"),
        (START, [("apiKey", "a"), ("apiKey", "b")], "apiKey is given twice with different values"),
        (START, [("tag", "x" * 256)], "tag is longer than 255 characters"),
        (START, [("agentLoginName", "fr\ted")], "agentLoginName must be UTF-8 text without control characters"),
        (BY_TAG, [("loginName", "\x00")], "loginName must be UTF-8 text without control characters"),
    ],
)
def test_resolve_refuses(operation, pairs, sentence):
    with pytest.raises(HTTPFailure) as refused:
        resolve(operation, pairs)
    assert (refused.value.status, str(refused.value)) == (400, sentence)


PIECES = st.sampled_from([
    b"--b", b"--b--", b"\r\n", b"\n", b"Content-Disposition: ", b"form-data", b"; name=", b'"tag"', b"; filename=x",
    b"Content-Type: ", b"text/plain", b"multipart/mixed; boundary=c", b"--c", b"; charset=", b"utf-16", b"\xff",
    b"Content-Transfer-Encoding: base64", b"=?utf-8?q?x?=", b"name*=utf-8''t%C3%A4g", b":", b" ", b"\x00",
])
BODIES = st.one_of(st.binary(max_size=300), st.lists(PIECES, max_size=40).map(b"".join))
CONTENT_TYPES = st.sampled_from([
    "multipart/form-data; boundary=b", "multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; '
    'boundary="b"', "multipart/form-data; boundary=b; boundary=c", "multipart/form-data; boundary=\udcff",
])


@FUZZ
@given(BODIES, CONTENT_TYPES)
def test_any_multipart_body_gives_fields_or_a_4xx(body, content_type):
    try:
        pairs = multipart_pairs(body, content_type)
    except HTTPFailure as exc:
        assert 400 <= exc.status < 500 and "\n" not in str(exc)
    else:
        assert all(isinstance(name, str) and isinstance(value, str) for name, value in pairs)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, "utf-8", "latin-1", ""]))
def test_any_form_body_gives_pairs_or_a_4xx(body, charset):
    try:
        pairs = form_pairs(body, charset)
    except HTTPFailure as exc:
        assert exc.status in (400, 415)
    else:
        assert all(isinstance(name, str) and isinstance(value, str) for name, value in pairs)
