"""When a task stops after a round: rounds done, target accuracy, or no progress."""

from __future__ import annotations

from collections.abc import Sequence

from fedcommon.messages.v1 import StopReason, TaskSpec


def stop_reason(
    spec: TaskSpec, *, rounds_done: int, accuracies: Sequence[float]
) -> StopReason | None:
    """Return why the task stops after ``rounds_done`` rounds, or None to go on.

    Convergence: the best accuracy of the last ``patience`` rounds did not beat the best before
    them by more than ``min_improvement``.
    """
    if spec.target_accuracy is not None and accuracies and accuracies[-1] >= spec.target_accuracy:
        return StopReason.TARGET_ACCURACY
    if rounds_done >= spec.rounds:
        return StopReason.MAX_ROUNDS
    if spec.patience is not None and len(accuracies) > spec.patience:
        before = max(accuracies[: -spec.patience])
        recent = max(accuracies[-spec.patience :])
        if recent - before <= spec.min_improvement:
            return StopReason.CONVERGED
    return None


def explain(
    spec: TaskSpec, reason: StopReason, *, rounds_done: int, accuracies: Sequence[float]
) -> str:
    """Say why ``reason`` stopped the task, for its event log: the rule and the numbers."""
    last = f"accuracy {accuracies[-1]:.4f}" if accuracies else "no accuracy"
    if reason == StopReason.TARGET_ACCURACY:
        return f"{last} reached the target {spec.target_accuracy:g} in round {rounds_done}"
    if reason == StopReason.CONVERGED:
        return (
            f"no gain over {spec.min_improvement:g} in the last {spec.patience} rounds; "
            f"{last} after round {rounds_done}"
        )
    return f"{rounds_done} of {spec.rounds} rounds done, {last}"


def end_detail(reason: StopReason | None, detail: str | None) -> str | None:
    """The detail of a task's last event: why it ended (its stop reason first), and how."""
    if reason is None:
        return detail
    return reason.value if not detail else f"{reason.value}: {detail}"
