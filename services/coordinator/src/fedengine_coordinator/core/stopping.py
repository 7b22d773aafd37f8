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
