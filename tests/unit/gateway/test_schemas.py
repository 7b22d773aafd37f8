from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from fedengine_gateway.schemas import DeviceCreate, TaskCreate
from fedengine_gateway.settings import Settings


def test_devices_per_round_defaults_to_the_participant_list() -> None:
    assert TaskCreate(task_name="t", participating_devices=["a", "b", "c"]).devices_per_round == 3
    assert TaskCreate(task_name="t").devices_per_round == 10


def test_task_body_becomes_a_bus_spec_and_cross_field_errors_are_value_errors() -> None:
    spec = TaskCreate(task_name="t", devices_per_round=4, min_devices=2).to_spec()
    assert (spec.devices_per_round, spec.min_devices, spec.dataset) == (4, 2, "digits")
    with pytest.raises(ValueError, match="min_devices"):
        TaskCreate(task_name="t", devices_per_round=1, min_devices=2).to_spec()


def test_unknown_fields_and_bad_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        TaskCreate(task_name="t", surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="64 hex"):
        DeviceCreate(device_name="d", device_type="iot", public_key="ab")  # type: ignore[arg-type]


def test_weak_or_placeholder_secrets_are_refused() -> None:
    base = {"DATABASE_URL": "postgresql://x"}
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(FEDENGINE_JWT_SECRET=SecretStr("short"), postgres=base)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(
            FEDENGINE_JWT_SECRET=SecretStr("change-me-please-change-me-please"),
            FEDENGINE_ENVIRONMENT="production",
            postgres=base,
        )  # type: ignore[arg-type]
