"""Who may see the dashboard: the holder of `IOBOT_ADMIN_TOKEN`, by a form or as a bearer token.

* The token is compared in constant time (`hmac.compare_digest` of both digests, so not even its length
  shows in the timing), and never logged: it stays a `SecretStr` until the comparison.
* A session is a cookie `<expiry>.<nonce>.<mac>`, signed with HMAC-SHA256 under a key derived from the
  token: the server keeps no session table, every replica accepts the others' sessions, and changing
  the token ends every session.
* Wrong tokens are throttled per client address: after MAX_FAILURES in FAILURE_WINDOW seconds the
  address is refused (429) without its token being looked at, until the oldest failure is old enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from pydantic import SecretStr

SESSION_COOKIE = "iobot_dashboard"
SESSION_SECONDS = 12 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
MAX_ADDRESSES = 10_000  # addresses with recent failures remembered; the oldest are forgotten first
KEY_PURPOSE = b"iobot dashboard session v1"


class AdminAccess:
    """Checks the admin token, signs and checks session cookies, and throttles wrong tokens."""

    def __init__(self, token: SecretStr, clock: Callable[[], float] = time.time) -> None:
        secret = token.get_secret_value().encode()
        self._token_digest = hashlib.sha256(secret).digest()
        self._session_key = hmac.new(secret, KEY_PURPOSE, hashlib.sha256).digest()
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def is_token(self, given: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._token_digest)

    def new_session(self) -> str:
        """A cookie value good for SESSION_SECONDS."""
        expires = int(self._clock()) + SESSION_SECONDS
        payload = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}"

    def is_session(self, cookie: str | None) -> bool:
        """True for a cookie this token signed that has not expired."""
        if not cookie or cookie.count(".") != 2:
            return False
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._sign(payload).encode()):
            return False
        expires = payload.partition(".")[0]
        return expires.isdigit() and int(expires) > self._clock()

    def wait_needed(self, address: str) -> float:
        """0 if `address` may try a token now, else the seconds until it may."""
        failures = self._recent_failures(address)
        if len(failures) < MAX_FAILURES:
            return 0.0
        return failures[0] + FAILURE_WINDOW - self._clock()

    def failed(self, address: str) -> None:
        """Count a wrong token from `address`."""
        failures = self._recent_failures(address)
        failures.append(self._clock())
        self._failures[address] = failures
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent_failures(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= self._clock() - FAILURE_WINDOW:
            failures.popleft()
        return failures

    def _sign(self, payload: str) -> str:
        return hmac.new(self._session_key, payload.encode(), hashlib.sha256).hexdigest()
