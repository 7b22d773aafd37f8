from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from fedcommon import arrays, codec, models, signing
from fedcommon.messages.v1 import ModelArchitecture, TrainRequested, UpdateSubmitted
from feddevice import answer
from feddevice.client import FitResult
from feddevice.state import load_or_create_identity


@pytest.fixture
def model() -> answer.GlobalModel:
    built = models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0)
    return answer.GlobalModel(models.to_safetensors(built))


def _request(device_id: str) -> TrainRequested:
    return TrainRequested(
        producer="coordinator",
        round_id=uuid4(),
        task_id=uuid4(),
        device_id=device_id,
        round_number=3,
        model_version=2,
        model_sha256="0" * 64,
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        model_architecture=ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.1,
        local_epochs=1,
        batch_size=8,
        seed=7,
    )


def test_the_update_is_the_change_in_the_wire_order_signed_by_the_device(
    model: answer.GlobalModel, tmp_path: Path
) -> None:
    identity = load_or_create_identity(tmp_path, "dev-1")
    trained = {name: value + 1 for name, value in reversed(list(model.parameters.items()))}
    result = FitResult(trained, 12, {"train_loss": 0.5, "train_accuracy": 0.75})
    delta = answer.delta_of(model, result)
    assert [d.shape for d in delta] == [model.parameters[n].shape for n in model.order]
    assert all(np.allclose(d, 1.0) for d in delta)
    request = _request("dev-1")
    update = answer.signed_update(request, identity, delta, result, duration_s=1.5)
    decoded = codec.decode(codec.encode(update))
    assert isinstance(decoded, UpdateSubmitted)
    assert decoded.correlation_id == request.message_id and decoded.num_examples == 12
    assert decoded.metrics.train_loss == 0.5 and decoded.metrics.train_accuracy == 0.75
    assert [a.shape for a in arrays.from_bytes(decoded.update)] == [d.shape for d in delta]
    signing.verify(
        public_key=identity.public_key,
        signature=decoded.signature,
        payload=signing.update_payload(
            task_id=request.task_id,
            round_id=request.round_id,  # type: ignore[arg-type]
            device_id="dev-1",
            round_number=3,
            model_version=2,
            num_examples=12,
            update=decoded.update,
        ),
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: {k: v for k, v in list(p.items())[:-1]}, "missing net.3.bias"),
        (lambda p: {**p, "extra": p["net.1.bias"]}, "unexpected extra"),
        (lambda p: {**p, "net.1.bias": np.zeros(3, np.float32)}, "net.1.bias with shape \\[3\\]"),
        (lambda p: {**p, "net.1.bias": np.full(64, np.nan, np.float32)}, "not finite"),
        (lambda p: {**p, "net.1.bias": np.array(["x"] * 64)}, "not real numbers"),
    ],
)
def test_what_the_model_does_not_hold_is_refused_naming_the_tensor(
    model: answer.GlobalModel, change: object, reason: str
) -> None:
    parameters = change(dict(model.parameters))  # type: ignore[operator]
    with pytest.raises(answer.FitRefused, match=reason):
        answer.delta_of(model, FitResult(parameters, 5))


@pytest.mark.parametrize("examples", [0, -1, 2**31, 2**64, True, 1.5])
def test_an_impossible_example_count_is_refused(
    model: answer.GlobalModel, examples: object
) -> None:
    with pytest.raises(answer.FitRefused, match="num_examples"):
        answer.delta_of(model, FitResult(dict(model.parameters), examples))  # type: ignore[arg-type]


def test_metrics_outside_the_wire_bounds_are_left_out(
    model: answer.GlobalModel, tmp_path: Path
) -> None:
    identity = load_or_create_identity(tmp_path, "dev-2")
    result = FitResult(dict(model.parameters), 3, {"train_loss": float("nan"), "train_accuracy": 7})
    delta = answer.delta_of(model, result)
    update = answer.signed_update(_request("dev-2"), identity, delta, result, duration_s=-1)
    assert update.metrics.train_loss == 0.0 and update.metrics.train_accuracy == 1.0
    assert update.metrics.duration_s == 0.0


def test_the_config_gives_each_device_its_own_reproducible_seed() -> None:
    first, again, other = (answer.config_for(_request(d)) for d in ("a", "a", "b"))
    assert first["seed"] == again["seed"] != other["seed"]
    assert first["learning_rate"] == 0.1 and first["round_number"] == 3


def test_the_global_models_arrays_are_read_only(model: answer.GlobalModel) -> None:
    with pytest.raises(ValueError, match="read-only"):
        model.parameters["net.1.bias"] += 1


def test_a_model_file_whose_offsets_lie_is_a_bad_model_file() -> None:
    built = models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0)
    data = models.to_safetensors(built)
    with pytest.raises(ValueError, match="does not load"):
        answer.GlobalModel(data[:-100])


def test_complex_tensors_are_refused(model: answer.GlobalModel) -> None:
    parameters = {**model.parameters, "net.1.bias": np.zeros(64, np.complex64)}
    with pytest.raises(answer.FitRefused, match="not real numbers"):
        answer.delta_of(model, FitResult(parameters, 5))
