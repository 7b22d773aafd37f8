"""The simulator enrols with its fleet's token and trusts the coordinator key the token carries."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from fedcommon import enrolment_tokens, signing
from fedengine_simulator.settings import Settings

COORDINATOR = signing.public_key_bytes(signing.generate_private_key())
POSTGRES = {"DATABASE_URL": "postgresql://unused"}


def _settings(**values: object) -> Settings:
    return Settings(postgres=POSTGRES, **values)  # type: ignore[arg-type]


def test_without_a_token_it_refuses_to_start_and_says_how_to_get_one() -> None:
    for missing in (None, SecretStr("")):
        with pytest.raises(ValidationError, match="fedengine enrolment-token"):
            _settings(fleet="f", enrolment_token=missing)


def test_a_token_of_another_fleet_or_a_damaged_one_is_refused() -> None:
    other = enrolment_tokens.issue("g", coordinator_key=COORDINATOR).encode()
    with pytest.raises(ValidationError, match="for fleet 'g', not SIMULATOR_FLEET 'f'"):
        _settings(fleet="f", enrolment_token=SecretStr(other))
    with pytest.raises(ValidationError, match="damaged"):
        _settings(fleet="f", enrolment_token=SecretStr(other[:-9]))


def test_it_trusts_only_the_coordinator_key_in_its_token() -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR)
    settings = _settings(fleet="f", enrolment_token=SecretStr(token.encode()))

    verifier = settings.trust.verifier(prefix="", window_s=60)

    assert dict(verifier.public_keys) == {"coordinator": COORDINATOR}
    assert settings.token.token_id == token.token_id
