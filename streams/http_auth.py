"""Bearer-token authentication of Governor's HTTP endpoints: one pure check for every server.

``GOVERNOR_API_TOKENS`` holds the tokens per role, comma-separated ``role:token`` pairs::

    GOVERNOR_API_TOKENS="admin:3f9c...e1,reader:77ab...02,reader:second-reader-token"

Roles: ``admin`` may call every endpoint, mutating ones included (``POST
/policies/rollback``, incidents and what later issues add); ``reader`` may only read (and only
matters when reads need a token, ``GOVERNOR_API_AUTH_READS=true``). A role may hold several
tokens (rotation: add the new one, move the callers, remove the old one). Tokens are compared
in constant time (``hmac.compare_digest`` over SHA-256 digests, every configured token tried)
and never appear in a repr, a log line or an error.

Answers: **401** with ``WWW-Authenticate: Bearer`` without a token or with a wrong one, **403**
for a valid token whose role may not do it (a reader token on a mutating endpoint).

Secure by default: with no token configured, mutating endpoints answer only when the server
is bound to a loopback address (127.0.0.1, ::1, localhost), where just this machine's users
reach it; bound anywhere else they are refused (403, naming the fix) until tokens are set.
Reads without tokens stay open (health, metrics and answers carry no secret and no power).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

ROLES = ("admin", "reader")
#: roles whose tokens may call mutating endpoints
MUTATING_ROLES = frozenset({"admin"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
REALM = "governor"
#: paths every caller may read even when reads need a token (probes and scrapers)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: POST receivers that change no governance state (Alertmanager's webhook only counts and
#: logs): guarded like reads, so a reader token is enough and no admin token sits in the
#: Alertmanager config
RECEIVER_PATHS = frozenset({"/alerts/webhook"})


class TokenConfigError(ValueError):
    """``GOVERNOR_API_TOKENS`` cannot be parsed; the message names where (never a token)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class ApiTokens:
    """The configured tokens as (role, SHA-256 digest) pairs; no token in its repr."""

    entries: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.entries)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(sorted({role for role, _ in self.entries}))

    @classmethod
    def single(cls, token: str | None, role: str = "admin") -> ApiTokens:
        """One token (a server with a single ``--token`` option), or none."""
        return cls(((role, _digest(token)),)) if token else cls()

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, comparing against every entry in constant time."""
        wanted = _digest(token)
        found: str | None = None
        for role, digest in self.entries:
            if hmac.compare_digest(wanted, digest) and found is None:
                found = role
        return found


def parse_tokens(raw: str, setting: str = "GOVERNOR_API_TOKENS") -> ApiTokens:
    """``admin:<token>,reader:<token>`` -> :class:`ApiTokens`; an empty string: no tokens."""
    entries: list[tuple[str, bytes]] = []
    for number, item in enumerate(raw.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        role, sep, token = item.partition(":")
        role, token = role.strip(), token.strip()
        if not sep or not token:
            raise TokenConfigError(
                f"{setting}: entry {number} is not role:token; write it as "
                f"'admin:<token>,reader:<token>' (roles: {', '.join(ROLES)})"
            )
        if role not in ROLES:
            raise TokenConfigError(
                f"{setting}: entry {number} has the unknown role {role!r}; use one of "
                f"{', '.join(ROLES)}"
            )
        if len(token) < 16:
            raise TokenConfigError(
                f"{setting}: entry {number} ({role}) has a token of {len(token)} characters; "
                "use at least 16 (e.g. `python -c 'import secrets; print(secrets.token_hex(24))'`)"
            )
        entries.append((role, _digest(token)))
    return ApiTokens(tuple(entries))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, None without one."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@dataclass(frozen=True)
class AuthResult:
    """What the server answers: ``ok``, or ``status`` (401/403) with ``error`` and headers."""

    status: int
    role: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
        return {}

    def body(self) -> dict[str, str]:
        return {"error": self.error}


def is_mutating(method: str, path: str = "") -> bool:
    """Any method but GET/HEAD/OPTIONS, except the :data:`RECEIVER_PATHS`."""
    return method.upper() not in ("GET", "HEAD", "OPTIONS") and path not in RECEIVER_PATHS


def check(
    authorization: str | None,
    tokens: ApiTokens,
    *,
    mutating: bool,
    bound_host: str,
    reads_need_token: bool = False,
) -> AuthResult:
    """May a request with this ``Authorization`` header go on? (pure)"""
    if not tokens.configured:
        if not mutating and not reads_need_token:
            return AuthResult(200)
        if bound_host in LOOPBACK_HOSTS:
            return AuthResult(200, role="local")
        what = "mutating endpoints" if mutating else "reads (GOVERNOR_API_AUTH_READS)"
        return AuthResult(
            403,
            error=f"{what} need GOVERNOR_API_TOKENS when the server listens on {bound_host} "
            "(not loopback): set admin and reader tokens, or bind to 127.0.0.1",
        )
    if not mutating and not reads_need_token:
        return AuthResult(200)
    token = bearer_token(authorization)
    if token is None:
        return AuthResult(401, error="a bearer token is needed (Authorization: Bearer <token>)")
    role = tokens.role_of(token)
    if role is None:
        return AuthResult(401, error="the bearer token is not valid here")
    if mutating and role not in MUTATING_ROLES:
        return AuthResult(
            403, role=role, error=f"a {role} token may not do this; it needs an admin token"
        )
    return AuthResult(200, role=role)
