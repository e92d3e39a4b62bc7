"""The credentials that prove a person: passwords (argon2id), the pages' session cookies, the
per-user API tokens, and the CSRF token of a session's forms. Pure functions: nothing here
touches the database; only hashes are ever stored.

Passwords are hashed with argon2-cffi's argon2id (RFC 9106's second recommended parameters: 64
MiB, 3 passes, 4 lanes), memory-hard, so a leaked hash of a person's chosen password is costly to
guess on GPUs; verifying costs tens of milliseconds and is run off the event loop, a few at a time.
Session values and API tokens are 256 random bits: nobody guesses them, so their SHA-256 is
hash enough, and a lookup by it needs no slow hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
# A token says what it is, so that one pasted in the wrong place is recognised (and a secret
# scanner can find one committed by mistake).
TOKEN_PREFIX = "rat_"


@cache
def _nobody() -> str:
    """Verified against when the login has no password, so that a wrong login costs what a
    wrong password does (no telling which logins exist by the time an answer takes)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def check_password(password: str) -> str:
    """The password if it may be set; raises ValueError with a sentence otherwise."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"a password must have at most {MAX_PASSWORD} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise ValueError("a password cannot hold control characters")
    return password


def hash_password(password: str) -> str:
    """The argon2id PHC string of ``password`` (``$argon2id$v=19$m=...``): salt and parameters in it."""
    return _hasher.hash(check_password(password))


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; with no stored hash, False after as long a
    wait as a real check. Compared by argon2 in constant time."""
    try:
        return _hasher.verify(stored or _nobody(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with weaker parameters than today's (rehash at sign-in)."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def new_secret() -> str:
    """256 random bits, URL-safe: a session cookie's value."""
    return secrets.token_urlsafe(32)


def new_token() -> str:
    """A new API token: its prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 (hex) of a session value or token: what the database keeps and looks up by."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def csrf_token(session: str) -> str:
    """The CSRF token of a session's forms, derived from its secret cookie value: the same in
    every process and host that sees the cookie, and useless to a page that cannot read it."""
    mac = hmac.new(session.encode("utf-8", "surrogateescape"), b"recording-agi csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))
