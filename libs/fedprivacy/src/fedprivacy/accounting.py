"""Privacy accounting of Gaussian and Laplace releases with dp-accounting (RDP and PLD).

Every number here comes from Google's dp-accounting 0.6.0, called exactly as the reference
values in ../shared/reference were computed, so that what the privacy service enforces is
what those tables show:

* RDP: `RdpAccountant()` with its DEFAULT_RDP_ORDERS (1.1 … 10.9, 11 … 63, 128 … 1024) and the
  add-or-remove-one relation; ε from Balle et al. 2020 (arXiv:1905.09982, Thm 21).
* PLD: `PLDAccountant(value_discretization_interval=1e-4)`: connect-the-dots, pessimistic
  (an upper estimate of the true ε, within about 0.1% of it).

A release is the Poisson-subsampled Gaussian mechanism (Mironov et al. 2019,
arXiv:1908.10530): each device joins a round with probability q, and noise of std z·C is
added to the sum of updates clipped to C. q = 1 is the plain Gaussian mechanism.

A guarantee weaker than ε = 100 (RDP, at δ = 1e-6) is not computed further: the reference
marks such triples "skipped_meaningless", the PLD takes minutes to hang there, and no budget
could allow them. Such a request returns ε = inf with `meaningful=False`.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from fedprivacy.accountants import Accountant

# dp-accounting's PLD grid width; the reference checked it against 2e-5 (≤ 6.2e-4 relative).
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-4
# Above this ε (RDP at δ = MEANINGLESS_CHECK_DELTA) no guarantee is meaningful: see module doc.
MEANINGLESS_EPSILON = 100.0
MEANINGLESS_CHECK_DELTA = 1e-6
# The 2016 moments accountant (Abadi et al.) used integer orders λ = 1..32, i.e. α = 2..33.
MOMENTS_ORDERS = tuple(float(order) for order in range(2, 34))


@dataclass(frozen=True, slots=True)
class GaussianRelease:
    """One accounted use of the Poisson-subsampled Gaussian mechanism, repeated `steps` times.

    This is the row the privacy ledger keeps: plain numbers from which ε is recomputed.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier <= 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def event(self) -> dp_accounting.DpEvent:
        """Return the dp-accounting event: q = 1 is the Gaussian itself, not a 'sample' of it."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sample_rate == 1:
            return dp_accounting.SelfComposedDpEvent(gaussian, self.steps)
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(self.sample_rate, gaussian), self.steps
        )


@dataclass(frozen=True, slots=True)
class EpsilonResult:
    """ε of a composition at one δ, and how it was obtained.

    `optimal_order` is the Rényi order that gave ε (RDP and moments accountants only).
    `meaningful` is False when ε is inf because the guarantee is beyond MEANINGLESS_EPSILON.
    """

    epsilon: float
    accountant: Accountant
    delta: float
    optimal_order: float | None = None
    meaningful: bool = True


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _compose(releases: Sequence[GaussianRelease]) -> dp_accounting.DpEvent:
    if not releases:
        raise ValueError("releases must not be empty")
    if len(releases) == 1:
        return releases[0].event()
    return dp_accounting.ComposedDpEvent([release.event() for release in releases])


def _rdp_accountant(event: dp_accounting.DpEvent) -> rdp.RdpAccountant:
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return accountant


def _meaningless(accountant: rdp.RdpAccountant, delta: float) -> bool:
    """Apply the reference's skip rule: RDP ε at min(δ, 1e-6) above MEANINGLESS_EPSILON."""
    check = float(accountant.get_epsilon(min(delta, MEANINGLESS_CHECK_DELTA)))
    return not check <= MEANINGLESS_EPSILON


def _enforcing_epsilon(
    event: dp_accounting.DpEvent,
    accountant: Accountant,
    delta: float,
    *,
    rdp_accounting: rdp.RdpAccountant | None = None,
) -> EpsilonResult | None:
    """ε of ``event`` by an accountant that enforces budgets (RDP, PLD); None for the others.
    ``rdp_accounting`` is an RDP accountant that already composed ``event``."""
    if accountant is Accountant.RDP:
        if rdp_accounting is None:
            rdp_accounting = _rdp_accountant(event)
        epsilon, order = rdp_accounting.get_epsilon_and_optimal_order(delta)
        return EpsilonResult(float(epsilon), accountant, delta, optimal_order=float(order))
    if accountant is Accountant.PLD:
        pld_accounting = pld.PLDAccountant(
            value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL
        )
        pld_accounting.compose(event)
        return EpsilonResult(float(pld_accounting.get_epsilon(delta)), accountant, delta)
    return None


def epsilon_for_releases(
    releases: Sequence[GaussianRelease], *, delta: float, accountant: Accountant
) -> EpsilonResult:
    """Return the ε at `delta` of the composition of Gaussian releases.

    Parameters
    ----------
    releases
        The task's releases so far (the ledger), in any order: composition commutes.
    delta
        The task's δ.
    accountant
        `rdp` or `pld` to enforce; `exact` needs every release at q = 1; `moments` and
        `classic` reproduce the 2016 moments accountant's conversion, for comparisons with
        published numbers only.

    Returns
    -------
    EpsilonResult
        ε = inf and `meaningful=False` when the RDP ε at δ = 1e-6 (or the smaller `delta`)
        exceeds MEANINGLESS_EPSILON: the other accountants are then not run.

    Raises
    ------
    ValueError
        For δ outside (0, 1), no releases, or `exact` with a subsampled release.
    """
    _check_delta(delta)
    accountant = Accountant(accountant)
    event = _compose(releases)
    rdp_accounting = _rdp_accountant(event)
    if _meaningless(rdp_accounting, delta):
        return EpsilonResult(math.inf, accountant, delta, meaningful=False)
    enforced = _enforcing_epsilon(event, accountant, delta, rdp_accounting=rdp_accounting)
    if enforced is not None:
        return enforced
    if accountant is Accountant.EXACT:
        return EpsilonResult(_exact_gaussian_epsilon(releases, delta), accountant, delta)
    if accountant is Accountant.MOMENTS:
        epsilon, order = _classic_conversion(
            rdp.RdpAccountant(orders=list(MOMENTS_ORDERS)), event, delta
        )
        return EpsilonResult(epsilon, accountant, delta, optimal_order=order)
    if accountant is Accountant.CLASSIC:
        epsilon, order = _classic_conversion(rdp.RdpAccountant(), event, delta)
        return EpsilonResult(epsilon, accountant, delta, optimal_order=order)
    raise ValueError(f"unknown accountant {accountant!r}")


def epsilon_subsampled_gaussian(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: Accountant,
) -> EpsilonResult:
    """Return ε of `steps` rounds of the Poisson-subsampled Gaussian (q = 1: plain Gaussian).

    A convenience for one ledger row; see `epsilon_for_releases`.
    """
    release = GaussianRelease(sample_rate, noise_multiplier, steps)
    return epsilon_for_releases([release], delta=delta, accountant=accountant)


def _exact_gaussian_epsilon(releases: Sequence[GaussianRelease], delta: float) -> float:
    """Return the exact ε of composed unsampled Gaussians.

    T Gaussians with noise z_i compose exactly to one Gaussian with 1/z² = Σ 1/z_i²
    (Dong, Roth & Su 2019, GDP composition), whose ε at δ is Balle & Wang 2018's formula.
    """
    if any(release.sample_rate != 1 for release in releases):
        raise ValueError("the exact accountant applies only to sample_rate = 1 (no sampling)")
    precision = sum(release.steps / release.noise_multiplier**2 for release in releases)
    return float(dp_accounting.get_epsilon_gaussian(1 / math.sqrt(precision), delta))


def _classic_conversion(
    accountant: rdp.RdpAccountant, event: dp_accounting.DpEvent, delta: float
) -> tuple[float, float]:
    """Return (ε, order) with the 2016 moments accountant's conversion of RDP to (ε, δ).

    Abadi et al. 2016 (arXiv:1607.00133, Thm 2): ε = min_α rdp(α) + ln(1/δ)/(α − 1), with
    dp-accounting's exact RDP of the subsampled Gaussian at the accountant's orders. Looser
    than Balle et al. 2020; kept to reproduce published figures, never to enforce a budget.
    """
    accountant.compose(event)
    orders = np.asarray(accountant.orders, dtype=np.float64)
    epsilons = np.asarray(accountant.rdp, dtype=np.float64) + math.log(1 / delta) / (orders - 1)
    best = int(np.nanargmin(epsilons))
    return float(epsilons[best]), float(orders[best])


def epsilon_laplace(
    *, scale: float, sensitivity: float = 1.0, count: int, delta: float, accountant: Accountant
) -> EpsilonResult:
    """Return ε of `count` releases of the Laplace mechanism with `scale`, through its PLD or RDP.

    The mechanism's own privacy loss is tighter than any composition theorem over generic
    ε0-DP releases (`composition`), because it is the Laplace mechanism and not the worst
    ε0-DP one. Each release is (sensitivity/scale)-DP on its own.

    Raises
    ------
    ValueError
        For an accountant other than `rdp` or `pld`, or non-positive scale or sensitivity.
    """
    _check_delta(delta)
    accountant = Accountant(accountant)
    if scale <= 0 or sensitivity <= 0:
        raise ValueError(f"scale and sensitivity must be > 0, got {scale}, {sensitivity}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.LaplaceDpEvent(scale / sensitivity), count
    )
    enforced = _enforcing_epsilon(event, accountant, delta)
    if enforced is None:
        raise ValueError(f"the Laplace mechanism is accounted with rdp or pld, not {accountant}")
    return enforced


def max_steps_within_budget(
    *,
    sample_rate: float,
    noise_multiplier: float,
    delta: float,
    epsilon_budget: float,
    accountant: Accountant,
    steps_per_unit: int = 1,
    max_units: int = 1_000_000,
) -> int:
    """Return the largest number of units (rounds, or epochs of `steps_per_unit` steps) in budget.

    ε grows with the number of steps, so an integer bisection finds the last unit whose ε is
    still ≤ `epsilon_budget`; 0 when even one unit exceeds it. This is how a task with a fixed
    noise multiplier learns how many rounds it can run, and how Abadi et al.'s MNIST budgets
    translate to epochs.
    """
    if steps_per_unit < 1 or max_units < 1:
        raise ValueError("steps_per_unit and max_units must be >= 1")

    def within(units: int) -> bool:
        result = epsilon_subsampled_gaussian(
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=units * steps_per_unit,
            delta=delta,
            accountant=accountant,
        )
        return result.epsilon <= epsilon_budget

    if not within(1):
        return 0
    low, high = 1, 2
    while high <= max_units and within(high):
        low, high = high, high * 2
    if high > max_units:
        if within(max_units):
            return max_units
        high = max_units
    while high - low > 1:  # invariant: within(low) and not within(high)
        middle = (low + high) // 2
        if within(middle):
            low = middle
        else:
            high = middle
    return low
