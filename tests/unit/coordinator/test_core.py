from __future__ import annotations

from uuid import uuid4

import numpy as np
import pytest

from fedcommon import lifecycle, models
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    InitialModel,
    ModelArchitecture,
    StopReason,
    TaskSpec,
    TaskState,
)
from fedengine_coordinator.core import evaluation, selection, stopping


@pytest.mark.parametrize(
    ("state", "command", "expected"),
    [
        (TaskState.CREATED, Command.START, TaskState.RUNNING),
        (TaskState.RUNNING, Command.PAUSE, TaskState.PAUSED),
        (TaskState.PAUSED, Command.RESUME, TaskState.RUNNING),
        (TaskState.PAUSED, Command.CANCEL, TaskState.CANCELLED),
        (TaskState.RUNNING, Command.START, None),
        (TaskState.CREATED, Command.PAUSE, None),
        (TaskState.COMPLETED, Command.RESUME, None),
        (TaskState.CANCELLED, Command.CANCEL, None),
    ],
)
def test_lifecycle_transitions(
    state: TaskState, command: Command, expected: TaskState | None
) -> None:
    assert lifecycle.next_state(state, command) == expected


def test_only_running_tasks_open_rounds() -> None:
    assert [s for s in TaskState if lifecycle.opens_round(s)] == [TaskState.RUNNING]


CANDIDATES = [
    selection.Candidate(f"d{i}", b"k" * 32, battery)
    for i, battery in enumerate([90.0, 10.0, None, 50.0, 80.0])
]


def test_eligibility_drops_busy_disallowed_and_low_battery_devices() -> None:
    kept = selection.eligible(CANDIDATES, busy={"d3"}, allowed={"d0", "d1", "d2", "d3"})

    assert [c.device_id for c in kept] == ["d0", "d2"]


def test_selection_is_reproducible_per_round_and_attempt() -> None:
    def pick(round_number: int, attempt: int) -> list[str]:
        rng = selection.round_rng(seed=7, round_number=round_number, attempt=attempt)
        return [c.device_id for c in selection.select(CANDIDATES, count=2, rng=rng)]

    assert pick(1, 0) == pick(1, 0)
    assert len(set(pick(1, 0))) == 2
    assert {tuple(pick(r, 0)) for r in range(1, 20)} != {tuple(pick(1, 0))}
    assert [
        c.device_id for c in selection.select(CANDIDATES, count=9, rng=np.random.default_rng())
    ] == ["d0", "d1", "d2", "d3", "d4"]


def spec(**fields: object) -> TaskSpec:
    return TaskSpec(task_name="t", devices_per_round=2, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "done", "accuracies", "expected"),
    [
        (spec(rounds=3), 2, [0.5, 0.6], None),
        (spec(rounds=3), 3, [0.5, 0.6, 0.7], StopReason.MAX_ROUNDS),
        (spec(rounds=9, target_accuracy=0.9), 2, [0.8, 0.91], StopReason.TARGET_ACCURACY),
        (spec(rounds=9, patience=2), 4, [0.5, 0.8, 0.79, 0.8], StopReason.CONVERGED),
        (spec(rounds=9, patience=2), 4, [0.5, 0.8, 0.79, 0.85], None),
        (spec(rounds=9, patience=2), 2, [0.5, 0.5], None),
    ],
)
def test_stop_reasons(
    task: TaskSpec, done: int, accuracies: list[float], expected: StopReason | None
) -> None:
    assert stopping.stop_reason(task, rounds_done=done, accuracies=accuracies) == expected


@pytest.mark.parametrize(
    ("task", "reason", "accuracies", "expected"),
    [
        (
            spec(rounds=3),
            StopReason.MAX_ROUNDS,
            [0.5, 0.6, 0.7],
            "3 of 3 rounds done, accuracy 0.7000",
        ),
        (
            spec(rounds=9, target_accuracy=0.9),
            StopReason.TARGET_ACCURACY,
            [0.8, 0.91, 0.93],
            "accuracy 0.9300 reached the target 0.9 in round 3",
        ),
        (
            spec(rounds=9, patience=2),
            StopReason.CONVERGED,
            [0.5, 0.8, 0.8],
            "no gain over 0.001 in the last 2 rounds; accuracy 0.8000 after round 3",
        ),
    ],
)
def test_the_reason_a_task_completed_is_said_with_its_numbers(
    task: TaskSpec, reason: StopReason, accuracies: list[float], expected: str
) -> None:
    assert stopping.explain(task, reason, rounds_done=3, accuracies=accuracies) == expected


def test_a_task_ending_names_its_stop_reason_first() -> None:
    assert stopping.end_detail(StopReason.CANCELLED, None) == "cancelled"
    assert (
        stopping.end_detail(StopReason.TOO_FEW_DEVICES, "0 eligible")
        == "too_few_devices: 0 eligible"
    )
    assert stopping.end_detail(None, "how") == "how"


def test_apply_delta_adds_and_rejects_wrong_shapes() -> None:
    before = models.get_arrays(evaluation.new_model(ModelArchitecture.MLP, "digits", seed=0))

    after = evaluation.apply_delta(before, [np.ones_like(b) for b in before])

    for new, old in zip(after, before, strict=True):
        np.testing.assert_allclose(new, old + 1)
        assert new.dtype == np.float32
    with pytest.raises(ValueError, match="shapes"):
        evaluation.apply_delta(before, [np.ones(3, np.float32)] * len(before))


def test_evaluation_of_an_untrained_model_is_near_chance() -> None:
    result = evaluation.evaluate(
        evaluation.new_model(ModelArchitecture.CNN, "digits", seed=0), "digits"
    )

    assert 0.0 <= result.accuracy < 0.3
    assert result.loss == pytest.approx(np.log(10), rel=0.2)


def test_a_task_on_an_uploaded_model_has_no_central_evaluation() -> None:
    spec = TaskSpec(task_name="t", initial_model=InitialModel(model_id=uuid4(), sha256="ab" * 32))

    assert evaluation.evaluate_central(spec, [np.zeros(3, np.float32)]) is None
    with pytest.raises(ValueError, match="no built-in model"):
        evaluation.built_in(spec, seed=0)
