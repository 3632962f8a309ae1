"""The console's login: the coordinator's bearer token, then a signed session cookie.

A browser logs in once with the token (a password field; compared with
``hmac.compare_digest``). The console answers with a cookie ``nnmd_session`` that holds
an expiry time and a random nonce, signed with HMAC-SHA256. The signing key is derived
from the token (HMAC of a fixed label with the token as key), so every console that
knows the token accepts the cookie (several replicas behind one Service), and changing
the token logs everybody out; without a token (``--no-auth``) there is no login at all.
The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page can
send it along, which is also what protects the console's POST routes from cross-site
requests), carries Max-Age, and is Secure when the console itself serves HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

COOKIE_NAME = "nnmd_session"
_LABEL = b"nnmd-console-session-v1"
_VERSION = "v1"


class SessionSigner:
    """Issues and checks session cookie values for one token.

    token: the coordinator's bearer token (what a user types in); None means no auth.
    ttl_s: how long a login lasts.
    """

    def __init__(self, token: str | None, ttl_s: float = 12 * 3600.0) -> None:
        if token is not None and not token:
            raise ValueError("token: empty; set NNMD_TOKEN or pass --token-file")
        if ttl_s <= 0:
            raise ValueError(f"session lifetime must be > 0 s, got {ttl_s}")
        self.enabled = token is not None
        self.ttl_s = float(ttl_s)
        self._token = (token or "").encode()
        self._key = hmac.new(self._token, _LABEL, hashlib.sha256).digest() if token \
            else secrets.token_bytes(32)

    def __repr__(self) -> str:  # never show the token or the key
        return f"SessionSigner(auth={'on' if self.enabled else 'off'}, ttl_s={self.ttl_s:g})"

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the token (constant time; False when auth is off)."""
        if not self.enabled or not isinstance(given, str):
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, now: float | None = None) -> str:
        """A fresh cookie value: ``v1.<expiry unix s>.<nonce>.<signature>``."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = f"{_VERSION}.{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether a cookie value was issued here (signature) and has not expired."""
        if not self.enabled:
            return True
        if not value or len(value) > 256:
            return False
        payload, _, signature = value.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit():
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        return int(parts[1]) > (time.time() if now is None else now)
