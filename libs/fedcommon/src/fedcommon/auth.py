"""JWT bearer tokens with roles: issued by the CLI (or an identity provider), checked by the API."""

from __future__ import annotations

import time
from enum import StrEnum

import jwt

ALGORITHM = "HS256"
AUDIENCE = "fedengine"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


# What each role may do, by the least role an action needs.
_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def allows(role: Role, needed: Role) -> bool:
    """Whether ``role`` is at least ``needed`` (admin > operator > viewer)."""
    return _RANK[role] >= _RANK[needed]


def issue_token(*, secret: str, subject: str, role: Role, ttl_s: int = 3600) -> str:
    """Return a signed token for ``subject`` with ``role``, valid for ``ttl_s`` seconds."""
    if len(secret) < 32:
        raise ValueError("issue_token: secret must be at least 32 characters")
    now = int(time.time())
    claims = {"sub": subject, "role": role.value, "iat": now, "exp": now + ttl_s, "aud": AUDIENCE}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class TokenError(Exception):
    """The token is missing, malformed, expired or carries no known role."""


def verify_token(token: str, *, secret: str) -> tuple[str, Role]:
    """Return ``(subject, role)`` of a valid token; raise ``TokenError`` otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "role"]},
        )
        return str(claims["sub"]), Role(claims["role"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise TokenError(str(exc)) from exc
