"""Sign-in for the clinicians' page: which methods secrets.toml configures, password hashes, back-off.

Two methods, either or both, configured in `.streamlit/secrets.toml`:

- Streamlit's own OIDC login (`st.login`) for hospital single sign-on: an `[auth]` table with `redirect_uri`,
  `cookie_secret`, and `client_id` / `client_secret` / `server_metadata_url` at its top level (one provider) or in
  `[auth.NAME]` sub-tables (one button each).
- A shared password for a practice without SSO: `[lungcnn] password_hash`, made by `lungcnn-app-password`
  (scrypt, salted; the password itself is never stored).

With neither, the page is open only to this computer (see `access`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lungcnn.errors import LungCNNInputError

log = logging.getLogger(__name__)

SECTION = "lungcnn"
# scrypt cost: N=2**15, r=8, p=1 takes 32 MiB and 0.2-0.3 s per check on 2 shared cores. OWASP's minimum for a password
# store is N=2**17; one shared password behind a back-off is a smaller target. Stored with the hash, so it can rise.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_SCRYPT_N, MAX_SCRYPT_N = 2**14, 2**20
SALT_BYTES, KEY_BYTES = 16, 32
MIN_PASSWORD_CHARS = 12
OIDC_SHARED = ("redirect_uri", "cookie_secret")
OIDC_PROVIDER = ("client_id", "client_secret", "server_metadata_url")
PROXY_HEADERS = ("X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "X-Real-Ip")


# -- password hashes ---------------------------------------------------------------------------------------
def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt:N:r:p$salt$key` (base64), from a random 16-byte salt.

    Args:
        password: at least MIN_PASSWORD_CHARS characters.
        n, r, p: scrypt cost parameters (N a power of two in [2**14, 2**20]).
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise LungCNNInputError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    _check_cost(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, n, r, p)
    return f"scrypt:{n}:{r}:{p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (from hash_password); the comparison takes constant time."""
    n, r, p, salt, key = parse_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, key) of a stored hash; LungCNNInputError naming what is wrong."""
    try:
        head, salt, key = str(stored).split("$")
        scheme, n, r, p = head.split(":")
        if scheme != "scrypt":
            raise ValueError
        n, r, p = int(n), int(r), int(p)
        salt, key = base64.b64decode(salt, validate=True), base64.b64decode(key, validate=True)
    except ValueError:
        raise LungCNNInputError(f"[{SECTION}] password_hash in .streamlit/secrets.toml is not a hash from "
                                "lungcnn-app-password (expected scrypt:N:r:p$salt$key)") from None
    _check_cost(n, r, p)
    if len(salt) < SALT_BYTES or len(key) < KEY_BYTES:
        raise LungCNNInputError(f"[{SECTION}] password_hash has a salt or key shorter than {SALT_BYTES}/{KEY_BYTES} bytes")
    return n, r, p, salt, key


def _check_cost(n: int, r: int, p: int) -> None:
    if not (MIN_SCRYPT_N <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise LungCNNInputError(f"scrypt cost N={n}, r={r}, p={p} is outside N = 2**14..2**20 (a power of two), "
                                "r = 1..32, p = 1..16")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * r * n * p + 2**20)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- what secrets.toml configures ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthSettings:
    """The sign-in methods configured; `providers` are OIDC provider names ("default" = the unnamed one)."""

    password_hash: str | None = None
    providers: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.password_hash or self.providers)

    @classmethod
    def from_secrets(cls, secrets_: Mapping[str, Any]) -> AuthSettings:
        """Read and check `[lungcnn]` and `[auth]`; an incomplete table is an error, never "no sign-in"."""
        ours = secrets_.get(SECTION) or {}
        password_hash = ours.get("password_hash") if isinstance(ours, Mapping) else None
        if password_hash is not None:
            parse_hash(password_hash)
        return cls(password_hash, _oidc_providers(secrets_.get("auth")))


def _oidc_providers(auth: Any) -> tuple[str, ...]:
    if auth is None:
        return ()
    if not isinstance(auth, Mapping):
        raise LungCNNInputError("[auth] in .streamlit/secrets.toml must be a table")
    missing = [k for k in OIDC_SHARED if not auth.get(k)]
    if missing:
        raise LungCNNInputError(f"[auth] in .streamlit/secrets.toml lacks {', '.join(missing)}")
    named = {k: v for k, v in auth.items() if isinstance(v, Mapping) and k != "client_kwargs"}
    candidates = ({"default": auth} if any(k in auth for k in OIDC_PROVIDER) else {}) | named
    if not candidates:
        raise LungCNNInputError("[auth] in .streamlit/secrets.toml names no provider (client_id, client_secret, "
                                "server_metadata_url, at its top level or in an [auth.NAME] table)")
    for name, table in candidates.items():
        missing = [k for k in OIDC_PROVIDER if not table.get(k)]
        if missing:
            where = "[auth]" if name == "default" else f"[auth.{name}]"
            raise LungCNNInputError(f"{where} in .streamlit/secrets.toml lacks {', '.join(missing)}")
    return tuple(candidates)


# -- who may see the page without signing in ---------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP literals; False for names, wildcards ("", 0.0.0.0, ::) and the rest."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Access(Enum):
    OPEN = "open"  # no sign-in configured, and only this computer can reach the page
    SIGN_IN = "sign-in"
    REFUSED = "refused"


def access(settings: AuthSettings, address: str | None, headers: Mapping[str, str]) -> Access:
    """Sign-in when configured; else open only on a loopback address with no proxy in between.

    Args:
        address: the server's `server.address` (None or "" means every interface).
        headers: the request's headers; a forwarding header means a proxy may bring in other machines.
    """
    if settings.configured:
        return Access.SIGN_IN
    proxied = any(h.lower() in {k.lower() for k in headers} for h in PROXY_HEADERS)
    return Access.OPEN if is_loopback(address or "") and not proxied else Access.REFUSED


# -- slowing down wrong passwords --------------------------------------------------------------------------------
@dataclass
class Backoff:
    """After more than `free` failures within `window` seconds, each next attempt waits base * 2**k seconds
    (k = failures beyond `free`, minus one) after the last failure, at most `cap`. Thread-safe."""

    free: int
    base: float = 1.0
    cap: float = 60.0
    window: float = math.inf
    clock: Callable[[], float] = time.monotonic
    _failures: deque = field(default_factory=lambda: deque(maxlen=1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self) -> float:
        """Seconds before the next attempt may be checked (0 = now)."""
        with self._lock:
            now = self.clock()
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            extra = len(self._failures) - self.free
            if extra <= 0:
                return 0.0
            return max(0.0, min(self.cap, self.base * 2 ** (extra - 1)) - (now - self._failures[-1]))

    def failed(self) -> None:
        with self._lock:
            self._failures.append(self.clock())

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()

    @property
    def failures(self) -> int:
        return len(self._failures)


def session_backoff() -> Backoff:
    """One per browser session: a typo is free, then 1, 2, 4 ... 60 s."""
    return Backoff(free=1)


# Process-wide, so opening new sessions does not dodge the per-session delay: 20 wrong passwords in 15 minutes
# from anywhere, then 1, 2, 4 ... 60 s for everyone. A delay, never a lock-out.
SHARED_BACKOFF = Backoff(free=20, window=15 * 60)


@dataclass(frozen=True)
class SignInResult:
    ok: bool
    message: str = ""  # for the page when not ok


def try_password(settings: AuthSettings, password: str, session: Backoff, *, who: str,
                 shared: Backoff = SHARED_BACKOFF) -> SignInResult:
    """Check one password attempt, honouring both back-offs, and log the outcome (never the password).

    Args:
        who: the session tag and client address, for the log.
    """
    if not settings.password_hash:
        raise LungCNNInputError("no password is configured ([lungcnn] password_hash in .streamlit/secrets.toml)")
    wait = max(session.wait(), shared.wait())
    if wait > 0:
        log.warning("sign-in attempt refused: too soon after %d failures (%s)", session.failures, who)
        return SignInResult(False, f"Too many wrong passwords: please wait {math.ceil(wait)} seconds and try again.")
    if verify_password(password, settings.password_hash):
        session.reset()
        log.info("sign-in succeeded: password (%s)", who)
        return SignInResult(True)
    session.failed()
    shared.failed()
    log.warning("sign-in failed: wrong password, %d in a row (%s)", session.failures, who)
    return SignInResult(False, "Wrong password.")


def secrets_lines(password_hash: str) -> str:
    """The lines `lungcnn-app-password` prints for .streamlit/secrets.toml (the hash and how it was made)."""
    return (f"# lungcnn-app-password: scrypt N={SCRYPT_N}, r={SCRYPT_R}, p={SCRYPT_P}, 16-byte random salt\n"
            f"[{SECTION}]\npassword_hash = \"{password_hash}\"\n")
