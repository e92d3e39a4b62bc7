"""The apiKey stays secret: hashed at rest, compared in constant time, redacted from logs."""

from __future__ import annotations

import io
import logging

from recording import apikey
from recording.ops.logs import RedactingFilter, configure, redact


def test_hash_verifies_only_the_right_key():
    stored = apikey.hash_key("f863246a-973e-11e6-8784-08002718f5b5")
    assert apikey.verify("f863246a-973e-11e6-8784-08002718f5b5", stored)
    assert not apikey.verify("f863246a-973e-11e6-8784-08002718f5b6", stored)
    assert not apikey.verify("", stored)
    assert "f863246a" not in stored


def test_hashes_are_salted():
    assert apikey.hash_key("same") != apikey.hash_key("same")


def test_malformed_stored_hash_never_verifies():
    for stored in ("", "plain-text-key", "scrypt$x$y$z$a$b", "md5$1$1$1$AA==$AA=="):
        assert not apikey.verify("plain-text-key", stored)


def test_key_cache_forgets_everything_when_the_hash_changes():
    cache = apikey.KeyCache(size=2)
    cache.remember("k", "hash-1", True)
    assert cache.lookup("k", "hash-1") is True
    assert cache.lookup("other", "hash-1") is None
    assert cache.lookup("k", "hash-2") is None
    assert cache.lookup("k", "hash-2") is None


def test_key_cache_is_bounded():
    cache = apikey.KeyCache(size=2)
    for key in ("a", "b", "c"):
        cache.remember(key, "h", False)
    assert cache.lookup("a", "h") is None
    assert cache.lookup("c", "h") is False


def test_generated_keys_are_long_and_plain():
    key = apikey.generate()
    assert len(key) >= 40 and key.replace("-", "").replace("_", "").isalnum()


def test_redaction_of_urls_and_assignments():
    line = "agi_request: agi://h/recording/start?tag=1&apiKey=s3cr3t&x=2 apikey: other APIKEY=\"q\""
    clean = redact(line)
    assert "s3cr3t" not in clean and "other" not in clean and '"q"' not in clean
    assert "tag=1" in clean and "x=2" in clean


def test_filter_redacts_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = configure("DEBUG", stream=stream)
    try:
        log = logging.getLogger("test.redaction")
        log.warning("script %s", "recording/start?apiKey=topsecret")
        try:
            raise ValueError("bad apiKey=alsosecret")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "topsecret" not in text and "alsosecret" not in text
    assert "recording/start?apiKey=[redacted]" in text
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)


def test_control_characters_from_outside_cannot_forge_a_log_line():
    stream = io.StringIO()
    handler = configure("DEBUG", stream=stream)
    forged = "2026-12-05 02:00:00,000 WARNING recording.audit: legal hold on leg abc released by boss"
    try:
        log = logging.getLogger("test.forgery")
        log.info("HTTP GET %s", f"/x\n{forged}\r\x1b[2K\u2028{forged}")
        try:
            raise ValueError(f"bad\n{forged}")
        except ValueError:
            log.exception("failed on %s", "y\nz")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    # Every line is a record of ours, begun with its time, or the indented rest of one.
    assert [line for line in lines if line.startswith("2026-12-05 02:00:00")] == []
    assert all(line.startswith("    | ") or line[:4].isdigit() and "test.forgery" in line for line in lines)
    assert "/x\\n2026-12-05 02:00:00,000 WARNING" in lines[0] and "\\r\\x1b[2K\\u2028" in lines[0]
    assert lines[1].endswith("failed on y\\nz")
    # The exception's own message keeps its line end, on an indented line.
    assert lines[-2:] == ["    | ValueError: bad", f"    | {forged}"]


def test_an_http_path_with_a_newline_is_one_escaped_log_line(http):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    from recording.ops.logs import TextFormatter

    handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        answer = http.raw(b"GET /x%0a2026-12-05%2002:00:00,000%20WARNING%20recording.audit:%20forged HTTP/1.1\r\n"
                          b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert answer.status == 404
    assert "/x\\n2026-12-05 02:00:00,000 WARNING recording.audit: forged" in text
    assert not any(line.startswith("2026-12-05 02:00:00") for line in text.splitlines())
