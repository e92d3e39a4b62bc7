"""The apiKey: made, hashed and checked. Only the hash is ever stored.

scrypt makes a leaked hash of a short, hand-chosen key (``apikey set k1``) expensive to guess.
It costs tens of milliseconds, so a key that checked out is remembered by a keyed digest (never
the key itself) and later sessions pay one HMAC instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections import OrderedDict

_SCHEME = "scrypt"
_N, _R, _P = 1 << 14, 8, 1


def generate() -> str:
    """A new random key (256 bits, URL-safe, no characters that need quoting in a dialplan)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$digest`` for ``key``; the form stored as the system variable."""
    if not key:
        raise ValueError("an empty apiKey cannot be stored")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(key.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join((_SCHEME, str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def verify(key: str, stored: str) -> bool:
    """True when ``key`` matches the stored hash; compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            key.encode("utf-8", "surrogateescape"),
            salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class KeyCache:
    """Remembers the verdicts on presented keys for one stored hash.

    Entries are keyed by a MAC of the key under a secret made at start-up (keyed BLAKE2b, a
    third of HMAC-SHA256's cost, paid by every session), so the memory of the process holds no
    key; the cache is emptied whenever the stored hash changes.
    """

    def __init__(self, size: int = 1024):
        self._secret = os.urandom(32)
        self._size = size
        self._stored: str | None = None
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()

    def fingerprint(self, key: str) -> bytes:
        """A keyed digest of ``key``: equal for equal keys, useless to anyone without the secret."""
        return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), key=self._secret, digest_size=32).digest()

    def lookup(self, key: str, stored: str) -> bool | None:
        """The remembered verdict on ``key`` against ``stored``, or None if not known."""
        if stored != self._stored:
            self._stored = stored
            self._verdicts.clear()
            return None
        return self._verdicts.get(self.fingerprint(key))

    def remember(self, key: str, stored: str, verdict: bool) -> None:
        if stored != self._stored:
            self._stored = stored
            self._verdicts.clear()
        self._verdicts[self.fingerprint(key)] = verdict
        while len(self._verdicts) > self._size:
            self._verdicts.popitem(last=False)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
