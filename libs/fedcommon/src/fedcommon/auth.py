"""JWT bearer tokens with roles: issued by the CLI (or an identity provider), checked by the API."""

from __future__ import annotations

import hashlib
import re
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


def key_id(secret: str) -> str:
    """Return the fingerprint (``kid``) of a signing secret: a token says which secret signed it,
    so that a token made with another secret is refused with a message that says so."""
    return hashlib.sha256(b"fedengine/jwt-kid/v1\x00" + secret.encode()).hexdigest()[:16]


def issue_token(*, secret: str, subject: str, role: Role, ttl_s: int = 3600) -> str:
    """Return a signed token for ``subject`` with ``role``, valid for ``ttl_s`` seconds."""
    if len(secret) < 32:
        raise ValueError("issue_token: secret must be at least 32 characters")
    now = int(time.time())
    claims = {"sub": subject, "role": role.value, "iat": now, "exp": now + ttl_s, "aud": AUDIENCE}
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id(secret)})


class TokenError(Exception):
    """The token is missing, malformed, expired or carries no known role."""


def verify_token(token: str, *, secret: str) -> tuple[str, Role]:
    """Return ``(subject, role)`` of a valid token; raise ``TokenError`` otherwise."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from exc
    expected = key_id(secret)
    if kid != expected:
        named = kid if isinstance(kid, str) and re.fullmatch(r"[0-9a-f]{16}", kid) else None
        raise TokenError(
            f"signed with another secret (kid {named}, this gateway's is {expected})"
            if named
            else f"names no known signing secret (this gateway's kid is {expected})"
        )
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
