"""Calibrate the noise multiplier of a DP task to its (ε, δ) budget.

The same accountant that will enforce the budget does the calibration, so a task calibrated
with PLD is not charged with RDP (which overstates ε by about 15%) and refused early.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import dp_accounting
from dp_accounting import pld, rdp

from fedprivacy.accountants import Accountant
from fedprivacy.accounting import (
    MEANINGLESS_EPSILON,
    PLD_VALUE_DISCRETIZATION_INTERVAL,
    GaussianRelease,
    epsilon_subsampled_gaussian,
)

# Calibration aims at ε·(1 − CALIBRATION_MARGIN), not at ε. Why: the service recomputes ε
# from its ledger round by round, and that is not bit-identical to the one-shot composition
# calibrated here: measured on dp-accounting 0.6.0, composing a PLD round by round differs by
# up to 2.5e-8 relative (RDP by 1e-15), and ε is stored and compared as a float. A margin of
# 1e-4 is 4,000 times the largest difference seen, yet moves z by only about 0.01%
# (e.g. q = 0.01, T = 1000, ε = 1: z = 1.51312 → 1.51323), far inside the reference's 0.5%.
CALIBRATION_MARGIN = 1e-4
# The reference computed its z with this bracket and tolerance (README, "Inverse").
_BRACKET = (0.4, 20.0)
_Z_TOLERANCE = 1e-5
_SMALLEST_Z = 1e-3
# The PLD search starts in [0.8·z_rdp, z_rdp]: in the reference, z_pld/z_rdp is 0.92-0.94
# (its inverse table), and `_bracket` halves the lower end if a case needs less noise.
_PLD_LOWER_FRACTION = 0.8
_LARGEST_Z = 1e6


@dataclass(frozen=True, slots=True)
class Calibration:
    """The noise multiplier found, and the ε it spends over the planned steps."""

    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    aimed_epsilon: float
    accountant: Accountant


def _fresh_rdp() -> dp_accounting.PrivacyAccountant:
    return rdp.RdpAccountant()


def _fresh_pld() -> dp_accounting.PrivacyAccountant:
    return pld.PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)


def _fresh_accountant(accountant: Accountant) -> Callable[[], dp_accounting.PrivacyAccountant]:
    if accountant is Accountant.RDP:
        return _fresh_rdp
    if accountant is Accountant.PLD:
        return _fresh_pld
    raise ValueError(f"a budget is calibrated with rdp or pld, not {accountant}")


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
) -> Calibration:
    """Return the smallest noise multiplier whose ε over `steps` rounds stays within budget.

    dp-accounting's `calibrate_dp_mechanism` (Brent's method, tolerance 1e-5 in z) searches
    for ε(z) = target·(1 − CALIBRATION_MARGIN) and guarantees that the z it returns spends no
    more than that: so ε(z) ≤ target, and the last planned round still fits the budget after
    the service recomputes ε from its ledger.

    Raises
    ------
    ValueError
        For a target outside (0, MEANINGLESS_EPSILON], a δ outside (0, 1), an accountant other
        than rdp or pld, or a target no z in [1e-3, 1e6] can meet.
    """
    accountant = Accountant(accountant)
    make_accountant = _fresh_accountant(accountant)
    if not 0 < target_epsilon <= MEANINGLESS_EPSILON:
        raise ValueError(
            f"target_epsilon must be in (0, {MEANINGLESS_EPSILON}], got {target_epsilon}"
        )
    aim = target_epsilon * (1 - CALIBRATION_MARGIN)

    def epsilon(noise_multiplier: float) -> float:
        return epsilon_subsampled_gaussian(
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=steps,
            delta=delta,
            accountant=accountant,
        ).epsilon

    start = _BRACKET
    if accountant is Accountant.PLD:
        # RDP overstates ε (RDP ≥ PLD in every reference entry), so the RDP-calibrated z
        # already meets the budget under PLD and bounds the search from above; `_bracket`
        # checks that and widens if not. Cheap RDP first saves the slow PLD evaluations at
        # small z that the wide (0.4, 20) bracket would cost (about 3× faster measured).
        rdp_z = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=Accountant.RDP,
        ).noise_multiplier
        start = (rdp_z * _PLD_LOWER_FRACTION, rdp_z)
    lower, upper = _bracket(epsilon, aim, start)

    def event(noise_multiplier: float) -> dp_accounting.DpEvent:
        return GaussianRelease(sample_rate, noise_multiplier, steps).event()

    noise_multiplier = float(
        dp_accounting.calibrate_dp_mechanism(
            make_accountant,
            event,
            aim,
            delta,
            dp_accounting.ExplicitBracketInterval(lower, upper),
            tol=_Z_TOLERANCE,
        )
    )
    return Calibration(
        noise_multiplier=noise_multiplier,
        epsilon=epsilon(noise_multiplier),
        target_epsilon=target_epsilon,
        aimed_epsilon=aim,
        accountant=accountant,
    )


def _bracket(
    epsilon: Callable[[float], float], aim: float, start: tuple[float, float]
) -> tuple[float, float]:
    """Find (lower, upper) with aim < ε(lower) < inf and ε(upper) ≤ aim, widening `start`.
    The lower end must have a finite ε: a z so small
       that the guarantee is meaningless has ε = inf (and no PLD is run there), which Brent's
       method cannot interpolate.
    """
    lower, upper = start
    while epsilon(upper) > aim:
        lower, upper = upper, upper * 2
        if upper > _LARGEST_Z:
            raise ValueError(f"no noise multiplier up to {_LARGEST_Z} meets epsilon {aim}")
    while epsilon(lower) <= aim:
        lower, upper = lower / 2, lower
        if lower < _SMALLEST_Z:
            raise ValueError(f"epsilon {aim} is met with less noise than {_SMALLEST_Z}")
    infinite = lower
    for _ in range(60):
        if math.isfinite(epsilon(lower)):
            return lower, upper
        infinite = lower
        lower = (infinite + upper) / 2
        if epsilon(lower) <= aim:
            lower, upper = infinite, lower
    raise ValueError(f"epsilon {aim} is only met near the meaningless region; lower the target")
