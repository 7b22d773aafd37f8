from __future__ import annotations

import jwt
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


def test_a_token_names_its_secret_and_one_from_another_secret_says_so() -> None:
    other = "t" * 40
    token = auth.issue_token(secret=other, subject="a", role=auth.Role.ADMIN)

    assert jwt.get_unverified_header(token)["kid"] == auth.key_id(other) != auth.key_id(SECRET)
    with pytest.raises(auth.TokenError, match="another secret") as caught:
        auth.verify_token(token, secret=SECRET)
    assert auth.key_id(other) in str(caught.value) and auth.key_id(SECRET) in str(caught.value)


def test_a_token_without_a_known_kid_is_refused() -> None:
    bare = jwt.encode({"sub": "a", "role": "admin", "exp": 2**40, "aud": "fedengine"}, SECRET)

    with pytest.raises(auth.TokenError, match="no known signing secret"):
        auth.verify_token(bare, secret=SECRET)
