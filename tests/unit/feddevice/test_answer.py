from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from fedcommon import arrays, codec, models, signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    EvaluateRequested,
    EvaluationSubmitted,
    ModelArchitecture,
    TrainRequested,
    UpdateSubmitted,
)
from feddevice import answer
from feddevice.client import EvaluateResult, FitResult
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


def _evaluate_request(
    device_id: str, *, architecture: ModelArchitecture | None = ModelArchitecture.MLP
) -> EvaluateRequested:
    return EvaluateRequested(
        producer="coordinator",
        task_id=uuid4(),
        evaluation_id=uuid4(),
        device_id=device_id,
        round_number=4,
        model_version=4,
        model_sha256="0" * 64,
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        model_architecture=architecture,
        dataset="digits" if architecture is not None else None,
        batch_size=16,
        seed=7,
    )


def test_a_good_evaluation_is_signed_by_the_device_over_every_number_it_reports(
    tmp_path: Path,
) -> None:
    identity = load_or_create_identity(tmp_path, "dev-1")
    request = _evaluate_request("dev-1")
    result = EvaluateResult(np.float32(0.25), 40, {"accuracy": 0.75, "f1.macro": np.float64(0.5)})

    evaluation = answer.signed_evaluation(request, identity, result)

    decoded = codec.decode(codec.encode(evaluation))
    assert isinstance(decoded, EvaluationSubmitted)
    assert decoded.correlation_id == request.message_id
    assert decoded.evaluation_id == request.evaluation_id and decoded.device_id == "dev-1"
    assert (decoded.round_number, decoded.model_version) == (4, 4)
    assert decoded.num_examples == 40 and decoded.loss == 0.25
    assert decoded.metrics == {"accuracy": 0.75, "f1.macro": 0.5}

    def payload(accuracy: float) -> bytes:
        return signing.evaluation_payload(
            task_id=request.task_id,
            evaluation_id=request.evaluation_id,
            device_id="dev-1",
            round_number=4,
            model_version=4,
            num_examples=40,
            loss=0.25,
            metrics={"f1.macro": 0.5, "accuracy": accuracy},
        )

    signing.verify(
        public_key=identity.public_key, signature=decoded.signature, payload=payload(0.75)
    )
    with pytest.raises(ProtocolViolation):  # another number: the signature no longer holds
        signing.verify(
            public_key=identity.public_key, signature=decoded.signature, payload=payload(0.8)
        )


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (EvaluateResult(float("nan"), 10), "loss nan, not finite"),
        (EvaluateResult(float("inf"), 10), "loss inf, not finite"),
        (EvaluateResult(2e9, 10), "beyond"),
        (EvaluateResult("0.1", 10), "loss as str"),  # type: ignore[arg-type]
        (EvaluateResult(0.1, 10, {"bad name": 0.5}), "a metric named 'bad name'"),
        (EvaluateResult(0.1, 10, {"": 0.5}), "a metric named ''"),
        (EvaluateResult(0.1, 10, {"x" * 65: 0.5}), "a metric named"),
        (EvaluateResult(0.1, 10, {"accuracy": 1.5}), "accuracy 1.5, not in \\[0, 1\\]"),
        (EvaluateResult(0.1, 10, {"accuracy": -0.1}), "accuracy -0.1"),
        (EvaluateResult(0.1, 10, {f"m{i}": 0.0 for i in range(17)}), "17 metrics"),
        (EvaluateResult(0.1, 10, {"auc": float("nan")}), "metric auc nan"),
        (EvaluateResult(0.1, 10, {"auc": True}), "metric auc as bool"),  # type: ignore[dict-item]
        (EvaluateResult(0.1, 10, None), "metrics as NoneType"),  # type: ignore[arg-type]
        (EvaluateResult(0.1, 0), "num_examples 0"),
        (EvaluateResult(0.1, -3), "num_examples -3"),
        (EvaluateResult(0.1, 10**9), "num_examples 1000000000"),
        (EvaluateResult(0.1, 2.0), "not an integer"),  # type: ignore[arg-type]
        (EvaluateResult(0.1, True), "not an integer"),
        ((0.1, 10, {}), "a tuple, not an EvaluateResult"),  # Flower's shape
    ],
    ids=[
        "nan-loss",
        "inf-loss",
        "huge-loss",
        "text-loss",
        "space-in-name",
        "empty-name",
        "long-name",
        "accuracy-1.5",
        "accuracy-negative",
        "17-metrics",
        "nan-metric",
        "bool-metric",
        "metrics-none",
        "no-examples",
        "negative-examples",
        "too-many-examples",
        "float-examples",
        "bool-examples",
        "tuple",
    ],
)
def test_an_evaluation_the_wire_cannot_carry_is_refused_saying_why(
    tmp_path: Path, result: object, reason: str
) -> None:
    identity = load_or_create_identity(tmp_path, "dev-1")
    with pytest.raises(answer.EvaluationRefused, match=reason):
        answer.signed_evaluation(_evaluate_request("dev-1"), identity, result)


def test_sixteen_metrics_and_the_bounds_themselves_are_sent(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path, "dev-1")
    metrics = {f"m{i}": -1e9 for i in range(15)} | {"accuracy": 1.0}
    result = EvaluateResult(1e9, 100_000_000, metrics)
    evaluation = answer.signed_evaluation(_evaluate_request("dev-1"), identity, result)
    assert len(evaluation.metrics) == 16 and evaluation.num_examples == 100_000_000


def test_the_evaluation_config_names_the_version_and_the_built_ins_where_the_task_has_them() -> (
    None
):
    built_in = answer.config_for_evaluation(_evaluate_request("a"))
    uploaded = answer.config_for_evaluation(_evaluate_request("a", architecture=None))
    assert set(built_in) == {
        "task_id",
        "round_number",
        "model_version",
        "batch_size",
        "seed",
        "dataset",
        "model_architecture",
    }
    assert built_in["dataset"] == "digits" and built_in["model_architecture"] == "mlp"
    assert built_in["batch_size"] == 16 and built_in["model_version"] == 4
    assert set(uploaded) == set(built_in) - {"dataset", "model_architecture"}
    other = answer.config_for_evaluation(_evaluate_request("b"))
    assert built_in["seed"] == uploaded["seed"] != other["seed"]


def test_a_train_request_on_an_uploaded_model_gives_fit_no_built_in_names() -> None:
    request = _request("a").model_copy(update={"model_architecture": None, "dataset": None})
    config = answer.config_for(request)
    assert "dataset" not in config and "model_architecture" not in config
    assert config["learning_rate"] == 0.1
