from __future__ import annotations

import math
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from fedcommon import signing
from fedcommon.constraints import DEVICE_ID_PATTERN, MAX_DEVICES_PER_ROUND, DeviceId
from fedcommon.messages.v1 import (
    CleanupRequested,
    DatasetName,
    DeviceCapabilities,
    DeviceEnrolled,
    InitialModel,
    ModelArchitecture,
    SecureAggregationSpec,
    TaskSpec,
)
from fedengine_gateway.schemas import (
    CapabilitiesCreate,
    CleanupRequest,
    DeviceCreate,
    EnrolmentTokenCreate,
    InitialModelCreate,
    TaskCreate,
    TaskPublic,
)
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


# A sound key (an all-zero one would be refused as small order: fedcommon.ed25519_keys).
TRUST = {
    "FEDENGINE_SERVICE_KEYS": {
        "coordinator": signing.public_key_bytes(signing.generate_private_key()).hex()
    }
}


def test_weak_or_placeholder_secrets_are_refused() -> None:
    base = {"DATABASE_URL": "postgresql://x"}
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(
            FEDENGINE_JWT_SECRET=SecretStr("short"),
            postgres=base,  # type: ignore[arg-type]
            trust=TRUST,  # type: ignore[arg-type]
        )
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(
            FEDENGINE_JWT_SECRET=SecretStr("change-me-please-change-me-please"),
            FEDENGINE_ENVIRONMENT="production",
            postgres=base,
            trust=TRUST,
        )  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="coordinator"):
        Settings(
            FEDENGINE_JWT_SECRET=SecretStr("s" * 40),
            postgres=base,  # type: ignore[arg-type]
            trust={"FEDENGINE_SERVICE_KEYS": {}},  # type: ignore[arg-type]
        )


# --- the gateway accepts exactly what the bus accepts ----------------------------------------


def test_task_fields_carry_the_bus_specs_bounds_and_defaults() -> None:
    for name, spec_field in TaskSpec.model_fields.items():
        field = TaskCreate.model_fields[name]
        assert field.metadata == spec_field.metadata, name
        if name == "initial_model":  # the bus model refusing unknown fields, as input does
            assert field.annotation == InitialModelCreate | None
            assert issubclass(InitialModelCreate, InitialModel)
            ours, bus = InitialModelCreate.model_fields, InitialModel.model_fields
            assert {k: (f.annotation, f.metadata) for k, f in ours.items()} == {
                k: (f.annotation, f.metadata) for k, f in bus.items()
            }
        elif name != "devices_per_round":  # optional here: it defaults from the participants
            assert field.annotation == spec_field.annotation, name
            assert field.get_default(call_default_factory=True) == spec_field.get_default(
                call_default_factory=True
            ), name
    assert set(TaskCreate.model_fields) == set(TaskSpec.model_fields)


def test_device_and_cleanup_fields_carry_the_bus_messages_bounds() -> None:
    assert DeviceCreate.model_fields["device_id"].annotation == DeviceId | None
    for name in ("device_name", "device_type", "privacy_level"):
        assert (
            DeviceCreate.model_fields[name].metadata == DeviceEnrolled.model_fields[name].metadata
        ), name
    for name, field in DeviceCapabilities.model_fields.items():
        assert CapabilitiesCreate.model_fields[name].metadata == field.metadata, name
    assert (
        CleanupRequest.model_fields["retention_s"].metadata
        == CleanupRequested.model_fields["retention_s"].metadata
    )


def test_the_default_round_size_stays_inside_its_bound() -> None:
    many = [f"d{i}" for i in range(MAX_DEVICES_PER_ROUND + 5)]
    task = TaskCreate(task_name="t", participating_devices=many)
    assert task.devices_per_round == MAX_DEVICES_PER_ROUND
    assert task.to_spec().participating_devices == many


@pytest.mark.parametrize(
    "body",
    [
        {"device_name": "d", "device_type": "iot", "capabilities": {"unknown": 1}},
        {"device_name": "d", "device_type": "iot", "capabilities": {"compute_gflops": math.inf}},
        {"device_name": "d", "device_type": "iot", "capabilities": {"memory_mb": 2**64}},
        {"device_name": "d\x00", "device_type": "iot"},
        {"device_name": "d", "device_type": "iot", "device_id": "x" * 201},
        {"device_name": "", "device_type": "iot"},
    ],
)
def test_device_bodies_the_registry_would_refuse_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeviceCreate.model_validate({**body, "generate_key": True})


# A sound key whose private half nobody here holds.
STRANGER = signing.public_key_bytes(signing.generate_private_key()).hex()


def _own_key(device_id: str = "d1") -> dict[str, Any]:
    key = signing.generate_private_key()
    public = signing.public_key_bytes(key)
    proof = key.sign(signing.possession_payload(device_id=device_id, public_key=public))
    return {"device_id": device_id, "public_key": public.hex(), "key_signature": proof.hex()}


@pytest.mark.parametrize(
    ("key_fields", "reason"),
    [
        ({}, "or set generate_key"),
        ({"public_key": STRANGER}, "needs device_id and key_signature"),
        ({"public_key": STRANGER, "device_id": "d1"}, "needs device_id and key_signature"),
        ({**_own_key(), "device_id": "d2"}, "does not verify"),  # another device's proof
        ({**_own_key(), "key_signature": "00" * 64}, "does not verify"),
        ({**_own_key(), "public_key": STRANGER}, "does not verify"),
        ({**_own_key(), "generate_key": True}, "excludes public_key"),
        ({**_own_key(), "key_signature": "ab"}, "128 hex"),
    ],
)
def test_a_device_key_comes_with_its_signature_or_is_generated_on_request(
    key_fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        DeviceCreate.model_validate({"device_name": "d", "device_type": "iot", **key_fields})


# The identity point (whose R = identity, S = 0 signature OpenSSL verifies for any payload),
# the all-zero key, a point of order 8 and a non-canonical encoding of the identity.
WEAK_KEYS = [
    "01" + "00" * 31,
    "00" * 32,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "ee" + "ff" * 30 + "7f",
]


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_a_key_that_proves_nothing_is_refused_on_its_field_without_echoing_it(weak: str) -> None:
    # Even with a "signature" that OpenSSL would believe for it.
    forged = ("01" + "00" * 31) + "00" * 32
    body = {"device_name": "d", "device_type": "iot", "device_id": "d1"}
    with pytest.raises(ValidationError) as refused:
        DeviceCreate.model_validate({**body, "public_key": weak, "key_signature": forged})
    (error,) = refused.value.errors()
    assert error["loc"] == ("public_key",)
    assert error["msg"].startswith("Value error, public_key ")
    assert weak not in error["msg"]


def test_a_signed_own_key_or_an_explicit_generate_key_is_accepted() -> None:
    own = DeviceCreate.model_validate({"device_name": "d", "device_type": "iot", **_own_key()})
    assert own.public_key is not None and not own.generate_key
    generated = DeviceCreate.model_validate(
        {"device_name": "d", "device_type": "iot", "generate_key": True}
    )
    assert generated.public_key is None


@pytest.mark.parametrize(
    "body",
    [
        {"fleet": "bad fleet"},
        {"fleet": "f\x00"},
        {"fleet": "f", "max_devices": 0},
        {"fleet": "f", "max_devices": 2**64},
        {"fleet": "f", "expires_in_s": math.inf},
        {"fleet": "f", "expires_in_s": 10},
        {"fleet": "f", "token": "mine"},
    ],
)
def test_token_bodies_outside_the_bus_bounds_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EnrolmentTokenCreate.model_validate(body)


def _bounds(field: Any) -> dict[str, float]:
    return {
        attr: getattr(item, attr)
        for item in field.metadata
        for attr in ("ge", "gt", "le", "lt")
        if hasattr(item, attr)
    }


def _is_int(field: Any) -> bool:
    return bool(field.annotation is int or field.annotation == int | None)


def _inside(field: Any) -> st.SearchStrategy[Any]:
    """Values inside ``field``'s bounds."""
    bounds = _bounds(field)
    if _is_int(field):
        low = bounds.get("ge", bounds.get("gt", -(2**63) - 1) + 1)
        high = bounds.get("le", bounds.get("lt", 2**63) - 1)
        return st.integers(min_value=int(low), max_value=int(high))
    return st.floats(
        min_value=bounds.get("ge", bounds.get("gt")),
        max_value=bounds.get("le", bounds.get("lt")),
        exclude_min="gt" in bounds,
        exclude_max="lt" in bounds,
        allow_nan=False,
    )


def _near(bound: float, *, integer: bool) -> st.SearchStrategy[Any]:
    if integer:
        return st.integers(min_value=int(bound) - 2, max_value=int(bound) + 2)
    return st.sampled_from(
        [bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)]
    )


def _edges(field: Any) -> st.SearchStrategy[Any]:
    """Values near and past ``field``'s bounds, and wrong in other ways (NaN, 2**64, None)."""
    integer = _is_int(field)
    numbers = [_near(bound, integer=integer) for bound in _bounds(field).values()]
    if integer:
        numbers += [st.integers(), st.sampled_from([-(2**63) - 1, 2**63, 2**64])]
    else:
        numbers += [st.floats(), st.integers(min_value=-(2**70), max_value=2**70)]
    return st.one_of(*numbers, st.none())


_NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=200
)
_IDS = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
_UPLOADED = {"model_id": "6f1c2a3e-0000-4000-8000-00000000f00d", "sha256": "ab" * 32}
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "task_name": _NAMES,
    "model_architecture": st.sampled_from([*ModelArchitecture, None]),
    "dataset": st.sampled_from([*get_args(DatasetName), None]),
    "initial_model": st.sampled_from([None, _UPLOADED]),
    "federated_evaluation": st.sampled_from(
        [
            None,
            {},
            {"every_rounds": 2, "fraction": 0.5, "min_devices": 2, "timeout_s": 5.0},
        ]
    ),
    "participating_devices": st.none() | st.lists(_IDS, min_size=1, max_size=6),
    "strategy": st.sampled_from(
        [
            {"name": "fedavg"},
            {"name": "fedprox", "params": {"mu": 0.5}},
            {"name": "fedadam", "params": {"eta": 0.1, "tau": 1e-6}},
            {"name": "median"},
            {"name": "krum", "params": {"f": 0}},
            {"name": "multi_krum", "params": {"f": 0, "m": 2}},
        ]
    ),
    "secure_aggregation": st.sampled_from(
        [
            None,
            {},
            {"bits": 8, "weight_cap": 255},
            {"neighbours": 4, "threshold": 3},
            {"threshold": 2, "stage_timeout_s": 5.0, "clip_norm": 1.0},
        ]
    ),
}
_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "task_name": st.sampled_from(["", "a\x00b", "x" * 201, 7]),
    "model_architecture": st.just("transformer"),
    "dataset": st.just("cifar10"),
    "initial_model": st.sampled_from(
        [
            {"model_id": "not-a-uuid", "sha256": "ab" * 32},
            {"model_id": _UPLOADED["model_id"], "sha256": "AB" * 32},
            {"model_id": _UPLOADED["model_id"]},
            "a model",
        ]
    ),
    "federated_evaluation": st.sampled_from(
        [
            {"every_rounds": 0},
            {"fraction": 0},
            {"fraction": 1.5},
            {"min_devices": 0},
            {"timeout_s": math.inf},
            {"every_rounds": "2"},
            {"evry_rounds": 2},
            True,
        ]
    ),
    "participating_devices": st.sampled_from([[], ["a\x00"], ["x" * 201], ["ok", ""]]),
    "strategy": st.sampled_from(
        [
            {"name": "fedsgd"},
            {"name": "fedadam", "params": {"etaa": 0.1}},
            {"name": "fedavgm", "params": {"momentum": 1.0}},
            {"name": "krum", "params": {"f": True}},
            {"name": "krum"},
            {"name": "median", "extra": 1},
            "fedavg",
        ]
    ),
    "secure_aggregation": st.sampled_from(
        [
            {"bits": 1},
            {"bits": 33},
            {"neighbours": 3},
            {"neighbours": 4, "threshold": 2},
            {"bits": 8, "weight_cap": 256},
            {"clip_norm": 0},
            {"stage_timeout_s": math.inf},
            {"bitz": 16},
            {"bits": "16"},
            "on",
            True,
        ]
    ),
}


def _with_one_edge(body: dict[str, Any], edge: tuple[str, Any] | None) -> dict[str, Any]:
    return body if edge is None else {**body, edge[0]: edge[1]}


def _task_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Bodies inside every bound, or with one field at or past an edge."""
    fields = TaskSpec.model_fields
    valid = st.fixed_dictionaries(
        {},
        optional={
            name: _VALID[name] if name in _VALID else _inside(field)
            for name, field in fields.items()
        },
    )
    edge = st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(
            st.just(name), _WRONG[name] if name in _WRONG else _edges(fields[name])
        )
    )
    return st.builds(_with_one_edge, valid, st.none() | edge)


@settings(max_examples=600, deadline=None)
@given(_task_bodies())
def test_a_task_body_is_accepted_exactly_when_the_bus_spec_is(body: dict[str, Any]) -> None:
    # Prepare: the spec the coordinator would get, with the gateway's one default filled in.
    spec_body = dict(body)
    if spec_body.get("devices_per_round") is None:
        devices = spec_body.get("participating_devices")
        spec_body["devices_per_round"] = min(len(devices), MAX_DEVICES_PER_ROUND) if devices else 10
    # Execute
    try:
        task: TaskCreate | None = TaskCreate.model_validate(body)
    except ValidationError:
        task = None
    try:
        spec: TaskSpec | None = TaskSpec.model_validate(spec_body)
    except ValidationError:
        spec = None
    # Assert
    assert (task is None) == (spec is None), (body, task, spec)
    if task is not None:
        assert task.to_spec() == spec


@pytest.mark.parametrize(
    ("stored", "name"),
    [
        ({"task_name": "t"}, "fedavg"),
        ({"task_name": "t", "strategy": {"name": "fedyogi", "params": {"eta": 0.02}}}, "fedyogi"),
    ],
    ids=["older spec", "with strategy"],
)
def test_a_task_answer_shows_its_strategy(stored: dict[str, Any], name: str) -> None:
    # Prepare: a projection row as the gateway reads it.
    row = {
        "task_id": "11111111-1111-4111-8111-111111111111",
        "task_name": "t",
        "state": "created",
        "stop_reason": None,
        "current_round": 0,
        "model_version": 0,
        "spec": stored,
        "created_by": "op",
        "created_at": "2026-11-29T12:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "latest_accuracy": None,
    }

    # Execute
    task = TaskPublic(**row)

    # Assert
    assert task.strategy.name == name
    assert task.model_dump(mode="json")["strategy"]["params"] == (
        TaskSpec.model_validate(stored).strategy.params.model_dump(mode="json")
    )


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"task_name": "t"}, None),
        ({"task_name": "t", "secure_aggregation": None}, None),
        (
            {
                "task_name": "t",
                "min_devices": 3,
                "secure_aggregation": SecureAggregationSpec(bits=12).model_dump(mode="json"),
            },
            SecureAggregationSpec(bits=12),
        ),
    ],
    ids=["older spec", "plain", "secure"],
)
def test_a_task_answer_shows_its_secure_aggregation(
    stored: dict[str, Any], expected: SecureAggregationSpec | None
) -> None:
    # Prepare: a projection row as the gateway reads it.
    row = {
        "task_id": "11111111-1111-4111-8111-111111111111",
        "task_name": "t",
        "state": "created",
        "stop_reason": None,
        "current_round": 0,
        "model_version": 0,
        "spec": stored,
        "created_by": "op",
        "created_at": "2026-11-29T12:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "latest_accuracy": None,
    }

    # Execute
    task = TaskPublic(**row)

    # Assert
    assert task.secure_aggregation == expected
    assert task.strategy.name == "fedavg"
