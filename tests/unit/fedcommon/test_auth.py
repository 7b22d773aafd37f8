from __future__ import annotations

import pytest

from fedcommon import auth

SECRET = "s" * 40


def test_token_round_trip_carries_subject_and_role() -> None:
    token = auth.issue_token(secret=SECRET, subject="alice", role=auth.Role.OPERATOR)

    assert auth.verify_token(token, secret=SECRET) == ("alice", auth.Role.OPERATOR)


@pytest.mark.parametrize(
    ("token_secret", "ttl"), [("t" * 40, 60), (SECRET, -10)], ids=["wrong-secret", "expired"]
)
def test_bad_tokens_raise_token_error(token_secret: str, ttl: int) -> None:
    token = auth.issue_token(secret=token_secret, subject="a", role=auth.Role.ADMIN, ttl_s=ttl)

    with pytest.raises(auth.TokenError):
        auth.verify_token(token, secret=SECRET)


def test_roles_are_ranked_admin_operator_viewer() -> None:
    assert auth.allows(auth.Role.ADMIN, auth.Role.OPERATOR)
    assert auth.allows(auth.Role.OPERATOR, auth.Role.VIEWER)
    assert not auth.allows(auth.Role.VIEWER, auth.Role.OPERATOR)
    assert not auth.allows(auth.Role.OPERATOR, auth.Role.ADMIN)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        auth.issue_token(secret="short", subject="a", role=auth.Role.VIEWER)
