"""Closed-form composition theorems for releases that are each (ε0, δ0)-DP.

These bounds hold for *any* mechanism with the per-release guarantee, which is what the
privacy service knows about a pure-DP release (a Laplace query, a randomised response). They
are looser than accounting the mechanism itself (`accounting`), so they are reported beside it
and used only where the mechanism is not known to the accountant.
"""

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp

# The bisection of the optimal-composition ε stops at this width; the reference tolerance is
# 1e-6 relative, so this leaves three orders of magnitude for the ε values we see (≥ 1e-3).
_OPTIMAL_XTOL = 1e-12


@dataclass(frozen=True, slots=True)
class PrivacyGuarantee:
    """An (ε, δ) guarantee of a release or of a composition of releases."""

    epsilon: float
    delta: float


def _check_release(*, epsilon0: float, delta0: float, k: int) -> None:
    if not math.isfinite(epsilon0) or epsilon0 < 0:
        raise ValueError(f"epsilon0 must be a finite number >= 0, got {epsilon0}")
    if not 0 <= delta0 < 1:
        raise ValueError(f"delta0 must be in [0, 1), got {delta0}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def basic_composition(*, epsilon0: float, delta0: float, k: int) -> PrivacyGuarantee:
    """Compose k (ε0, δ0)-DP releases by summing: (k·ε0, k·δ0).

    Dwork & Roth 2014, Theorem 3.16. Tight for k pure-DP releases when δ must be 0.
    """
    _check_release(epsilon0=epsilon0, delta0=delta0, k=k)
    return PrivacyGuarantee(epsilon=k * epsilon0, delta=k * delta0)


def advanced_composition(
    *, epsilon0: float, delta0: float, k: int, delta_prime: float
) -> PrivacyGuarantee:
    """Compose k (ε0, δ0)-DP releases with the advanced composition theorem.

    Dwork, Rothblum & Vadhan 2010 (Dwork & Roth 2014, Theorem 3.20):
    ε = √(2k ln(1/δ')) ε0 + k ε0 (e^ε0 − 1), with total δ = k δ0 + δ'.
    It pays off only for many releases of small ε0; `min` with `basic_composition` is what a
    caller should charge.

    Raises
    ------
    ValueError
        If `delta_prime` is not in (0, 1).
    """
    _check_release(epsilon0=epsilon0, delta0=delta0, k=k)
    if not 0 < delta_prime < 1:
        raise ValueError(f"delta_prime must be in (0, 1), got {delta_prime}")
    epsilon = math.sqrt(2 * k * math.log(1 / delta_prime)) * epsilon0 + k * epsilon0 * math.expm1(
        epsilon0
    )
    return PrivacyGuarantee(epsilon=epsilon, delta=k * delta0 + delta_prime)


def _log_optimal_delta(epsilon: float, *, epsilon0: float, k: int) -> float:
    """Return ln δ(ε) of the optimal composition of k ε0-DP mechanisms.

    Murtagh & Vadhan 2016 (Theorem 1.4, homogeneous case, δ0 = 0):
    δ(ε) = Σ_ℓ C(k, ℓ) max(0, e^{ℓ ε0} − e^{ε} e^{(k−ℓ) ε0}) / (1 + e^{ε0})^k.
    Each term is evaluated in log space; e^{ℓ ε0} overflows a float already at k ε0 ≈ 710.
    """
    log_terms = []
    for ell in range(k + 1):
        exponent = epsilon - (2 * ell - k) * epsilon0  # log of e^ε e^{(k-ℓ)ε0} / e^{ℓ ε0}
        if exponent >= 0:
            continue
        log_binomial = gammaln(k + 1) - gammaln(ell + 1) - gammaln(k - ell + 1)
        log_terms.append(log_binomial + ell * epsilon0 + math.log(-math.expm1(exponent)))
    if not log_terms:
        return -math.inf
    return float(logsumexp(log_terms)) - k * math.log1p(math.exp(epsilon0))


def optimal_composition_epsilon(*, epsilon0: float, k: int, delta: float) -> float:
    """Return the smallest ε such that any k-fold composition of ε0-DP mechanisms is (ε, δ)-DP.

    Kairouz, Oh & Viswanath 2015 found the optimum; Murtagh & Vadhan 2016 gave the closed form
    this bisects (`_log_optimal_delta` is decreasing in ε). It is the best bound that holds for
    every ε0-DP mechanism, so a specific mechanism (Laplace) can still do better through its
    own privacy loss distribution.

    Raises
    ------
    ValueError
        If `delta` is not in (0, 1).
    """
    _check_release(epsilon0=epsilon0, delta0=0.0, k=k)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    log_delta = math.log(delta)
    upper = k * epsilon0
    if epsilon0 == 0 or _log_optimal_delta(0.0, epsilon0=epsilon0, k=k) <= log_delta:
        return 0.0

    def gap(epsilon: float) -> float:
        return _log_optimal_delta(epsilon, epsilon0=epsilon0, k=k) - log_delta

    # δ(k ε0) = 0 exactly (ln δ = -inf, which brentq cannot take), so the bracket ends just
    # below it; if even that point needs more than δ, the answer is k ε0 to 12 digits.
    high = upper * (1 - 1e-12)
    if gap(high) > 0:
        return upper
    return float(brentq(gap, 0.0, high, xtol=_OPTIMAL_XTOL, rtol=4 * math.ulp(1.0)))
