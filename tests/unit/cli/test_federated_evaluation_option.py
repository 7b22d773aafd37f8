"""``fedengine demo --federated-evaluation K``: the task body asks the whole fleet to evaluate
every K rounds, and the gateway takes it."""

from __future__ import annotations

import pytest

from fedcommon.messages.v1 import TaskSpec
from fedengine.demo import DemoOptions, check_strategy, round_summary, task_body
from fedengine_gateway.schemas import TaskCreate


def _body(options: DemoOptions) -> dict[str, object]:
    return task_body(
        options,
        fleet_name="demo1",
        strategy=check_strategy(options.strategy, options.strategy_params),
        privacy=None,
        secure=None,
    )


def test_off_by_default() -> None:
    body = _body(DemoOptions())

    assert "federated_evaluation" not in body
    assert TaskCreate.model_validate(body).to_spec().federated_evaluation is None


@pytest.mark.parametrize("every", [1, 3])
def test_every_k_rounds_by_the_whole_fleet(every: int) -> None:
    options = DemoOptions(federated_evaluation=every, round_timeout_s=12.0)

    spec: TaskSpec = TaskCreate.model_validate(_body(options)).to_spec()

    assert spec.federated_evaluation is not None
    assert spec.federated_evaluation.every_rounds == every
    assert spec.federated_evaluation.fraction == 1.0
    assert spec.federated_evaluation.timeout_s == 12.0
    assert spec.dataset == "digits"  # central evaluation stays beside it


def test_a_round_summary_carries_the_devices_verdict() -> None:
    row = {
        "round_number": 2,
        "attempt": 0,
        "accuracy": 0.9,
        "loss": 0.3,
        "fed_accuracy": 0.88,
        "fed_loss": 0.35,
        "fed_devices": 20,
        "aggregated": ["a"],
        "dropped": [],
        "rejected": {},
        "duration_s": 0.2,
        "bytes_up": 1,
        "bytes_down": 2,
    }

    summary = round_summary(row)

    assert (summary["fed_accuracy"], summary["fed_loss"], summary["fed_devices"]) == (
        0.88,
        0.35,
        20,
    )
