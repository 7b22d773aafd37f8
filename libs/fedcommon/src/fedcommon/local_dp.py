"""Local DP-SGD on devices (issue 9): what each privacy level spends, and the fixed schedule.

A device enrolled with a privacy level other than ``none`` trains every round of every task it
joins with DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy",
https://arxiv.org/abs/1607.00133): Poisson-sampled batches at rate q, each example's gradient
clipped to C, Gaussian noise of std z·C on the batch's sum. The coordinator chooses z per
(task, level) so that the task's planned rounds spend the level's per-task ε, and sends the
settings with each train request; the privacy service accounts every request it was told of,
per device, per task and over the device's lifetime. Both sides read the numbers here, so the
device's ε is computed from settings the server chose, never from what a device reports.

The schedule is fixed, not data-dependent, so that the server knows every number without
knowing a device's example count: q = LOCAL_SAMPLE_RATE (each example joins a step's batch
with probability 0.1, Opacus's ``DPDataLoader``), and a round is ``ceil(local_epochs / q)``
steps, i.e. ``local_epochs`` passes over the data in expectation. The task's ``batch_size``
is not used by a DP-SGD device: its expected batch is q·n.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from fedcommon.messages.v1 import PrivacyLevel

# δ of every device's guarantee (per task and lifetime).
LOCAL_DP_DELTA = 1e-5
# The ε a device of each level may spend on one task.
TASK_EPSILON: dict[PrivacyLevel, float] = {
    PrivacyLevel.LOW: 8.0,
    PrivacyLevel.MEDIUM: 3.0,
    PrivacyLevel.HIGH: 1.0,
}
# Its lifetime budget, over every task it joins: this many tasks' worth (RDP composes them to
# well below the sum, so a device fully spends more tasks than this before it is retired).
LIFETIME_TASKS = 10
# The per-example Poisson rate of a DP-SGD step, and the per-example gradient clip norm C.
LOCAL_SAMPLE_RATE = 0.1
LOCAL_MAX_GRAD_NORM = 1.0
# The accountant of local budgets (fedprivacy.accountants.Accountant): the coordinator
# calibrates z with it and the privacy service charges devices with it, so the two agree.
LOCAL_ACCOUNTANT: Final[Literal["rdp"]] = "rdp"


def uses_local_dp(level: PrivacyLevel) -> bool:
    """Whether a device of ``level`` trains with DP-SGD."""
    return level in TASK_EPSILON


def task_epsilon(level: PrivacyLevel) -> float:
    """Return the ε a device of ``level`` may spend on one task.

    Raises ``ValueError`` for ``none``, which spends nothing because it promises nothing.
    """
    if level not in TASK_EPSILON:
        raise ValueError(f"privacy level {level.value!r} does not use local DP")
    return TASK_EPSILON[level]


def lifetime_epsilon(level: PrivacyLevel) -> float:
    """Return the ε a device of ``level`` may spend over all its tasks."""
    return LIFETIME_TASKS * task_epsilon(level)


def steps_per_round(local_epochs: int) -> int:
    """Return the DP-SGD steps of one round: ``local_epochs`` expected passes at rate q."""
    if local_epochs < 1:
        raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
    return math.ceil(local_epochs / LOCAL_SAMPLE_RATE - 1e-9)
