"""The simulator enrols with its fleet's token and trusts the service keys the token carries."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from fedcommon import enrolment_tokens, signing
from fedengine_simulator.settings import Settings

COORDINATOR = signing.public_key_bytes(signing.generate_private_key())
AGGREGATOR = signing.public_key_bytes(signing.generate_private_key())
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


def test_it_trusts_the_aggregator_key_when_its_token_carries_one() -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR, aggregator_key=AGGREGATOR)
    settings = _settings(fleet="f", enrolment_token=SecretStr(token.encode()))

    verifier = settings.trust.verifier(prefix="", window_s=60)

    assert dict(verifier.public_keys) == {"coordinator": COORDINATOR, "aggregator": AGGREGATOR}


def test_secure_round_dropout_is_off_by_default_and_read_from_text() -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR).encode()

    default = _settings(fleet="f", enrolment_token=SecretStr(token))
    chosen = _settings(
        fleet="f",
        enrolment_token=SecretStr(token),
        secagg_dropout=0.25,
        secagg_drop_stages="3, 4",
        seed=9,
    )

    assert default.secagg_drop_policy.probability == 0
    assert default.secagg_drop_policy.stages == frozenset({2, 3, 4})
    policy = chosen.secagg_drop_policy
    assert (policy.probability, policy.stages, policy.seed) == (0.25, frozenset({3, 4}), 9)


@pytest.mark.parametrize(
    "values",
    [
        {"secagg_dropout": 1.0},
        {"secagg_dropout": -0.5},
        {"secagg_drop_stages": "2,5"},
        {"secagg_drop_stages": "two"},
    ],
)
def test_secure_round_dropout_out_of_range_is_refused(values: dict[str, object]) -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR).encode()
    with pytest.raises(ValidationError):
        _settings(fleet="f", enrolment_token=SecretStr(token), **values)
