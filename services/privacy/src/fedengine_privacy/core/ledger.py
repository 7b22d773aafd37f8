"""Decide a spend request against a task's ledger: approve, refuse, or recognise a duplicate.

The privacy service keeps plain numbers per task (the budget fixed by its first request, and
one row per approved release) and recomputes ε from them for every request (style.md, rule
14): nothing is cached, so a restarted service charges exactly what the ledger says. A request
is approved iff ε of the ledger plus this release stays within the task's ε; it is charged at
approval, once per (task, round, attempt).

Pure: the shell loads the budget, the releases and the earlier refusals in the request's
transaction, passes a fresh approval id, and stores what :func:`decide` returns.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from fedcommon.messages.v1 import (
    CALIBRATE,
    AdaptiveClipping,
    PrivacySpec,
    PrivacySpendRequested,
)
from fedprivacy import adaptive_clipping
from fedprivacy.accountants import Accountant

if TYPE_CHECKING:
    from fedprivacy.accounting import GaussianRelease

# fedprivacy.accounting and .calibration import dp-accounting (with scipy: about 1.4 s and
# 90 MB): each is imported where ε is first computed, so that a stack whose tasks use no
# central DP never loads it, and the service's start-up does not wait for it.

# The mechanisms a round releases: DP-FedAvg's noised sum (Poisson sampling, then Gaussian
# noise of std z·C on the sum of updates clipped to C), and the same with adaptive clipping,
# whose noised unclipped count shares z with the sum (core/adaptive_clipping.py). Both are
# accounted as the Poisson-subsampled Gaussian mechanism at z.
SUBSAMPLED_GAUSSIAN = "subsampled_gaussian"
ADAPTIVE_CLIP_GAUSSIAN = "subsampled_gaussian_adaptive_clip"

RefusalReason = Literal["budget_exhausted", "invalid"]
# How much of an accountant's error message a refusal quotes.
_MAX_QUOTED = 200


@dataclass(frozen=True, slots=True)
class Budget:
    """A task's budget, fixed by its first request: (ε, δ), the accountant that enforces it,
    and the noise every release of the task uses (the spec's, or calibrated once)."""

    epsilon: float
    delta: float
    accountant: Accountant
    clip_norm: float
    noise_multiplier: float
    calibrated: bool
    planned_rounds: int
    # Whether a refusal for exhaustion was announced (once per task).
    exhausted: bool = False
    # Adaptive clipping's settings (None: C is fixed at clip_norm).
    adaptive: AdaptiveClipping | None = None

    def matches(self, spec: PrivacySpec) -> bool:
        """Whether ``spec`` asks for this budget: a later request may not change it."""
        asked_z = spec.noise_multiplier
        same_noise = asked_z == CALIBRATE if self.calibrated else asked_z == self.noise_multiplier
        return (
            same_noise
            and spec.epsilon == self.epsilon
            and spec.delta == self.delta
            and spec.accountant == self.accountant
            and spec.clip_norm == self.clip_norm
            and spec.adaptive_clipping == self.adaptive
        )


@dataclass(frozen=True, slots=True)
class Release:
    """One ledger row: a round's try, released with noise z at sampling rate q.

    ``clip_norm`` is the round's C; with adaptive clipping, ``update_noise_multiplier`` and
    ``count_noise_std`` are how z was split (the ledger accounts z alone: they cost the same).
    """

    round_number: int
    attempt: int
    sample_rate: float
    noise_multiplier: float
    steps: int = 1
    clip_norm: float | None = None
    update_noise_multiplier: float | None = None
    count_noise_std: float | None = None

    @property
    def mechanism(self) -> str:
        return SUBSAMPLED_GAUSSIAN if self.count_noise_std is None else ADAPTIVE_CLIP_GAUSSIAN


@dataclass(frozen=True, slots=True)
class Approve:
    """Charge ``release`` under ``approval_id``; store ``budget`` first when ``new_budget``."""

    budget: Budget
    new_budget: bool
    approval_id: UUID
    release: Release
    epsilon_before: float
    epsilon_after: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the request with ``reason``.

    ``budget`` is the task's budget after the decision (None: none could be fixed, as when
    the first request's calibration fails); store it when ``new_budget``. ``announce`` is
    True for the first refusal that exhausts the budget: the task's one budget-exhausted
    event. ``epsilon_after`` is what approval would have made ε (None: not computable).
    """

    budget: Budget | None
    new_budget: bool
    reason: RefusalReason
    detail: str
    epsilon_budget: float
    epsilon_before: float
    epsilon_after: float | None
    announce: bool = False


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The (task, round, attempt) was answered before: no second answer, no second charge."""

    epsilon_before: float


Decision = Approve | Refuse | Duplicate


def grouped(releases: Iterable[Release]) -> list[GaussianRelease]:
    """Group identical (q, z) releases into one composed release of their summed steps.

    Composition commutes, so the grouping changes nothing but the work; the order is fixed
    (sorted) so that the same ledger always gives bit-identical ε.
    """
    from fedprivacy.accounting import GaussianRelease

    steps: Counter[tuple[float, float]] = Counter()
    for release in releases:
        steps[release.sample_rate, release.noise_multiplier] += release.steps
    return [GaussianRelease(q, z, count) for (q, z), count in sorted(steps.items())]


def epsilon_spent(releases: Sequence[Release], *, delta: float, accountant: Accountant) -> float:
    """Return ε at ``delta`` of ``releases`` (0 for none; inf beyond any meaningful ε)."""
    if not releases:
        return 0.0
    from fedprivacy.accounting import epsilon_for_releases

    return epsilon_for_releases(grouped(releases), delta=delta, accountant=accountant).epsilon


def fix_budget(request: PrivacySpendRequested) -> Budget:
    """Return the budget a task's first request fixes; calibrate z when the spec asks.

    Calibration spreads ε over the planned rounds at this first request's sampling rate, with
    the accountant that will enforce the budget.

    Raises
    ------
    ValueError
        When no noise multiplier meets the budget (calibrate_noise_multiplier says why).
    """
    spec = request.budget
    accountant = Accountant(spec.accountant)
    if isinstance(spec.noise_multiplier, str):
        from fedprivacy.calibration import calibrate_noise_multiplier

        noise_multiplier = calibrate_noise_multiplier(
            target_epsilon=spec.epsilon,
            delta=spec.delta,
            sample_rate=request.sample_rate,
            steps=request.planned_rounds,
            accountant=accountant,
        ).noise_multiplier
        calibrated = True
    else:
        noise_multiplier = spec.noise_multiplier
        calibrated = False
    return Budget(
        epsilon=spec.epsilon,
        delta=spec.delta,
        accountant=accountant,
        clip_norm=spec.clip_norm,
        noise_multiplier=noise_multiplier,
        calibrated=calibrated,
        planned_rounds=request.planned_rounds,
        adaptive=spec.adaptive_clipping,
    )


def release_for(budget: Budget, request: PrivacySpendRequested) -> Release:
    """The release ``request`` asks for under ``budget``: its C, and with adaptive clipping
    the split of z between the updates and the count.

    Raises ``ValueError`` when the request cannot be released as asked: a C other than the
    budget's for fixed clipping, no expected participants to choose the count's noise from,
    or a count noise too small for z (adaptive_clipping.update_noise_multiplier).
    """
    clip_norm = budget.clip_norm if request.clip_norm is None else request.clip_norm
    release = Release(
        round_number=request.round_number,
        attempt=request.attempt,
        sample_rate=request.sample_rate,
        noise_multiplier=budget.noise_multiplier,
        clip_norm=clip_norm,
    )
    if budget.adaptive is None:
        if clip_norm != budget.clip_norm:
            raise ValueError(
                f"clip_norm {clip_norm:g} is not the task's {budget.clip_norm:g} (its clipping "
                "is not adaptive)"
            )
        return release
    if request.expected_participants is None:
        raise ValueError("adaptive clipping needs the round's expected participants")
    count_std = adaptive_clipping.count_noise_std(
        budget.adaptive.count_noise_std,
        expected_participants=request.expected_participants,
        noise_multiplier=budget.noise_multiplier,
    )
    update_z = adaptive_clipping.update_noise_multiplier(budget.noise_multiplier, count_std)
    return replace(release, update_noise_multiplier=update_z, count_noise_std=count_std)


def _describe(epsilon: float) -> str:
    if math.isinf(epsilon):
        from fedprivacy.accounting import MEANINGLESS_EPSILON

        return f"an epsilon beyond {MEANINGLESS_EPSILON:g} (no meaningful guarantee)"
    return f"epsilon {epsilon:.6g}"


def decide(
    budget: Budget | None,
    releases: Sequence[Release],
    request: PrivacySpendRequested,
    *,
    approval_id: UUID,
    refused: Collection[tuple[int, int]] = (),
) -> Decision:
    """Decide ``request`` against the task's ``budget`` (None before its first request) and
    ledger ``releases``; ``refused`` holds the (round, attempt) pairs refused before.

    Returns
    -------
    Duplicate
        The (round, attempt) was approved or refused before.
    Approve
        ε of the ledger plus this release (z of the budget, q of the request) is within the
        budget's ε.
    Refuse
        ``invalid`` when the request's budget differs from the stored one, calibration fails,
        or the accountant cannot evaluate the request; ``budget_exhausted`` when approving
        would pass the budget.
    """
    try:
        return _decide(budget, releases, request, approval_id=approval_id, refused=refused)
    except Exception as exc:
        # dp-accounting raises what it likes on values it cannot evaluate (ZeroDivisionError
        # at z = 1e-300, issue 15). The schema refuses the values measured to do that; any
        # other one still ends as a refusal the coordinator fails the task with, never as an
        # unhandled error that leaves the round waiting for an answer.
        return Refuse(
            budget=budget,
            new_budget=False,
            reason="invalid",
            detail=(
                f"round {request.round_number}: the accountant cannot evaluate this request "
                f"({type(exc).__name__}: {_quoted(exc)})"
            ),
            epsilon_budget=budget.epsilon if budget is not None else request.budget.epsilon,
            epsilon_before=0.0,
            epsilon_after=None,
        )


def _quoted(exc: Exception) -> str:
    """The exception's text as a refusal can carry it: short, without NUL bytes."""
    return str(exc).replace("\x00", "")[:_MAX_QUOTED]


def _decide(
    budget: Budget | None,
    releases: Sequence[Release],
    request: PrivacySpendRequested,
    *,
    approval_id: UUID,
    refused: Collection[tuple[int, int]],
) -> Decision:
    key = (request.round_number, request.attempt)
    if key in refused or any((r.round_number, r.attempt) == key for r in releases):
        before = 0.0
        if budget is not None:
            before = epsilon_spent(releases, delta=budget.delta, accountant=budget.accountant)
        return Duplicate(before)
    new_budget = budget is None
    if budget is None:
        try:
            budget = fix_budget(request)
        except ValueError as exc:
            return Refuse(
                budget=None,
                new_budget=False,
                reason="invalid",
                detail=f"round {request.round_number}: calibration failed: {exc}",
                epsilon_budget=request.budget.epsilon,
                epsilon_before=0.0,
                epsilon_after=None,
            )
    before = epsilon_spent(releases, delta=budget.delta, accountant=budget.accountant)
    if not new_budget and not budget.matches(request.budget):
        return Refuse(
            budget=budget,
            new_budget=False,
            reason="invalid",
            detail=(
                f"round {request.round_number} asks for another privacy budget than the "
                "task's first request fixed"
            ),
            epsilon_budget=budget.epsilon,
            epsilon_before=before,
            epsilon_after=None,
        )
    try:
        release = release_for(budget, request)
    except ValueError as exc:
        return Refuse(
            budget=budget,
            new_budget=new_budget,
            reason="invalid",
            detail=f"round {request.round_number}: {exc}",
            epsilon_budget=budget.epsilon,
            epsilon_before=before,
            epsilon_after=None,
        )
    after = epsilon_spent([*releases, release], delta=budget.delta, accountant=budget.accountant)
    if after <= budget.epsilon:
        return Approve(budget, new_budget, approval_id, release, before, after)
    return Refuse(
        budget=replace(budget, exhausted=True),
        new_budget=new_budget,
        reason="budget_exhausted",
        detail=(
            f"round {request.round_number} would spend {_describe(after)} of {budget.epsilon:g}"
        ),
        epsilon_budget=budget.epsilon,
        epsilon_before=before,
        epsilon_after=after if math.isfinite(after) else None,
        announce=not budget.exhausted,
    )
