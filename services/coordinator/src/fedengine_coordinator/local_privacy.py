"""Calibrate local DP-SGD settings for a task's devices, once per (task shape, level).

The numbers are the privacy core's (``calibrate_noise_multiplier``, RDP, the accountant the
privacy service charges devices with): z such that the task's planned rounds, each
``steps_per_round(local_epochs)`` DP-SGD steps at rate ``LOCAL_SAMPLE_RATE``, spend at most the
level's per-task ε at δ = ``LOCAL_DP_DELTA``. A calibration costs about a second, and the
result depends only on (level, rounds, local_epochs), so it is cached for the process; a
restarted coordinator computes the same numbers again (RDP is deterministic).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable

from fedcommon import local_dp
from fedcommon.messages.v1 import LocalDp, PrivacyLevel, TaskSpec

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def calibrated(level: PrivacyLevel, *, rounds: int, local_epochs: int) -> LocalDp:
    """Return the DP-SGD settings of a ``level`` device for a task of ``rounds`` rounds."""
    # Imported on first use: dp-accounting (with scipy) adds about a second to every
    # coordinator start, and most tasks never ask for local DP.
    from fedprivacy.accountants import Accountant
    from fedprivacy.calibration import calibrate_noise_multiplier

    steps = local_dp.steps_per_round(local_epochs)
    target = local_dp.task_epsilon(level)
    calibration = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=local_dp.LOCAL_DP_DELTA,
        sample_rate=local_dp.LOCAL_SAMPLE_RATE,
        steps=rounds * steps,
        accountant=Accountant(local_dp.LOCAL_ACCOUNTANT),
    )
    logger.info(
        "local DP %s: noise multiplier %.4g spends epsilon %.4g of %g over %d rounds of %d steps",
        level.value,
        calibration.noise_multiplier,
        calibration.epsilon,
        target,
        rounds,
        steps,
    )
    return LocalDp(
        level=level,
        noise_multiplier=calibration.noise_multiplier,
        sample_rate=local_dp.LOCAL_SAMPLE_RATE,
        steps=steps,
        max_grad_norm=local_dp.LOCAL_MAX_GRAD_NORM,
        epsilon_budget=target,
        delta=local_dp.LOCAL_DP_DELTA,
    )


async def settings_for(
    spec: TaskSpec, levels: Iterable[PrivacyLevel]
) -> dict[PrivacyLevel, LocalDp]:
    """The settings of each level in ``levels`` that uses local DP (calibrated off the loop)."""
    wanted = sorted({level for level in levels if local_dp.uses_local_dp(level)})
    return {
        level: await asyncio.to_thread(
            calibrated, level, rounds=spec.rounds, local_epochs=spec.local_epochs
        )
        for level in wanted
    }
