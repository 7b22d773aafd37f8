"""Charge a device's local DP-SGD: its ε per task and over its lifetime, from plain numbers.

A device of privacy level low, medium or high trains every round it is asked for with DP-SGD at
settings the coordinator chose (fedcommon.local_dp). The coordinator tells the privacy service
which devices it asked with which settings; each such ask is one release of the
Poisson-subsampled Gaussian mechanism repeated ``steps`` times (Abadi et al. 2016, the moments
accountant; here dp-accounting's RDP), charged when asked whether or not the device answers.
ε is recomputed from the device's rows every time (style.md, rule 14), per task and over all
its tasks, at the device's δ.

Pure: the shell loads the device's history under a lock and stores what :func:`charge` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from fedcommon import local_dp
from fedcommon.messages.v1 import LocalDp
from fedengine_privacy.core.ledger import Release, epsilon_spent
from fedprivacy.accountants import Accountant

# Local budgets are enforced by the accountant the coordinator calibrates with (RDP).
LOCAL_ACCOUNTANT = Accountant(local_dp.LOCAL_ACCOUNTANT)


@dataclass(frozen=True, slots=True)
class DeviceRelease:
    """One device-ledger row's numbers: a try of a task's round, trained at these settings."""

    task_id: UUID
    release: Release


@dataclass(frozen=True, slots=True)
class DeviceCharge:
    """What one ask costs the device: its ε after it, and whether it may be asked again."""

    device_id: str
    task_id: UUID
    settings: LocalDp
    release: Release
    epsilon_task_budget: float
    epsilon_lifetime_budget: float
    epsilon_task_after: float
    epsilon_lifetime_after: float
    task_exhausted: bool
    lifetime_exhausted: bool


def charge(
    device_id: str,
    settings: LocalDp,
    history: Sequence[DeviceRelease],
    *,
    task_id: UUID,
    round_number: int,
    attempt: int,
) -> DeviceCharge | None:
    """Charge ``device_id`` for one try of ``task_id``'s round at ``settings``.

    ``history`` is every release the device was charged before (all tasks). The per-task
    budget is the level's (fedcommon.local_dp.TASK_EPSILON), the lifetime budget
    ``LIFETIME_TASKS`` times it, both at δ = ``LOCAL_DP_DELTA`` (the service's number, not the
    message's); a flag is set when one more release at these settings would pass the budget.

    The lifetime flag is also set once less than one task's budget of the lifetime is left:
    the next release may be another task's, at settings of its own that cost more than these
    (a task of fewer rounds spends its ε in fewer, costlier releases), and no single release
    costs more than a whole task's ε. This keeps every device within its lifetime budget
    whatever tasks come next, at the price of up to one task's worth of it left unused.
    Returns None for a (task, round, attempt) charged before.
    """
    key = (task_id, round_number, attempt)
    if any((h.task_id, h.release.round_number, h.release.attempt) == key for h in history):
        return None
    release = Release(
        round_number=round_number,
        attempt=attempt,
        sample_rate=settings.sample_rate,
        noise_multiplier=settings.noise_multiplier,
        steps=settings.steps,
    )
    task_releases = [h.release for h in history if h.task_id == task_id]
    all_releases = [h.release for h in history]
    task_budget = local_dp.task_epsilon(settings.level)
    lifetime_budget = local_dp.lifetime_epsilon(settings.level)

    def epsilon(releases: Sequence[Release]) -> float:
        return epsilon_spent(releases, delta=local_dp.LOCAL_DP_DELTA, accountant=LOCAL_ACCOUNTANT)

    lifetime_after = epsilon([*all_releases, release])
    return DeviceCharge(
        device_id=device_id,
        task_id=task_id,
        settings=settings,
        release=release,
        epsilon_task_budget=task_budget,
        epsilon_lifetime_budget=lifetime_budget,
        epsilon_task_after=epsilon([*task_releases, release]),
        epsilon_lifetime_after=lifetime_after,
        task_exhausted=epsilon([*task_releases, release, release]) > task_budget,
        lifetime_exhausted=lifetime_budget - lifetime_after < task_budget
        or epsilon([*all_releases, release, release]) > lifetime_budget,
    )
