"""Noise mechanisms and clipping: Gaussian (classic and analytic), Laplace, L2/L1 clipping.

Randomness is always a parameter (`rng: np.random.Generator`): the model builder reseeds
torch's and numpy's global state, so noise drawn from it would be predictable to anyone who
knows the seed. Production code passes `os_entropy_rng()`; tests pass a seeded generator.
"""

import math
import secrets
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

# A model's arrays (the same alias as fedcommon.arrays.NDArrays; numpy alone is needed here).
NDArrays = list[npt.NDArray[np.generic]]


class Mechanism(StrEnum):
    """The noise a release adds.

    `gaussian` uses the classic calibration (only valid for ε < 1), `analytic_gaussian` the
    exact one of Balle & Wang 2018, `laplace` gives pure ε-DP with L1 sensitivity.
    """

    GAUSSIAN = "gaussian"
    ANALYTIC_GAUSSIAN = "analytic_gaussian"
    LAPLACE = "laplace"


def os_entropy_rng() -> np.random.Generator:
    """Return a generator seeded with 128 bits from the operating system, for real releases."""
    return np.random.default_rng(secrets.randbits(128))


def _check_epsilon_delta(epsilon: float, delta: float) -> None:
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _check_sensitivity(sensitivity: float) -> None:
    if not math.isfinite(sensitivity) or sensitivity <= 0:
        raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity}")


def classic_gaussian_sigma_formula(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Return √(2 ln(1.25/δ))·Δ₂/ε without checking that the formula applies.

    Dwork & Roth 2014, Theorem A.1. The bound is proven only for ε < 1; this function exists
    to report the value beside the analytic one. Use `classic_gaussian_sigma` to add noise.
    """
    _check_epsilon_delta(epsilon, delta)
    _check_sensitivity(sensitivity)
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon


def classic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Return the classic Gaussian noise std for an (ε, δ)-DP release.

    Raises
    ------
    ValueError
        If ε ≥ 1, where Theorem A.1 does not hold: use `analytic_gaussian_sigma`.
    """
    if epsilon >= 1:
        raise ValueError(
            f"the classic Gaussian calibration holds only for epsilon < 1, got {epsilon}; "
            "use the analytic Gaussian"
        )
    return classic_gaussian_sigma_formula(epsilon=epsilon, delta=delta, sensitivity=sensitivity)


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Return the smallest Gaussian noise std that makes one release (ε, δ)-DP.

    Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy"
    (arXiv:1805.06530, Thm 8), through `dp_accounting.get_sigma_gaussian`. Valid for every ε,
    and smaller than the classic σ (3.73 against 4.84 at ε = 1, δ = 1e-5).
    """
    _check_epsilon_delta(epsilon, delta)
    _check_sensitivity(sensitivity)
    # Imported here: dp-accounting (with scipy) costs about a second of start-up, and the
    # aggregator, which imports this module for its noise step, never calls this function.
    import dp_accounting

    return float(dp_accounting.get_sigma_gaussian(epsilon, delta)) * sensitivity


def laplace_scale(*, epsilon: float, sensitivity: float) -> float:
    """Return the Laplace scale b = Δ₁/ε of an ε-DP release (Dwork & Roth 2014, Thm 3.6)."""
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    _check_sensitivity(sensitivity)
    return sensitivity / epsilon


def _check_arrays(arrays: NDArrays) -> None:
    if not arrays:
        raise ValueError("arrays must not be empty")
    for array in arrays:
        if not np.all(np.isfinite(array)):
            raise ValueError("arrays must hold finite values only")


def global_norm(arrays: NDArrays, *, order: int = 2) -> float:
    """Return the L1 or L2 norm of all arrays taken together as one vector."""
    if order == 2:
        return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))
    if order == 1:
        return sum(float(np.sum(np.abs(a), dtype=np.float64)) for a in arrays)
    raise ValueError(f"order must be 1 or 2, got {order}")


def clip_by_norm(arrays: NDArrays, *, clip_norm: float, order: int = 2) -> NDArrays:
    """Return copies of `arrays` scaled so that their joint norm is at most `clip_norm`.

    The norm is over all arrays together (the whole update), as DP-FedAvg's sensitivity
    assumes (McMahan et al. 2018, arXiv:1710.06963); arrays inside the bound are copied
    unchanged. The inputs are never modified.
    """
    _check_arrays(arrays)
    if not math.isfinite(clip_norm) or clip_norm <= 0:
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    norm = global_norm(arrays, order=order)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.multiply(a, factor).astype(a.dtype, copy=False) for a in arrays]


def clipped_sum(updates: list[NDArrays], *, clip_norm: float) -> NDArrays:
    """Return the sum of updates, each first clipped to L2 norm `clip_norm`.

    One device changes this sum by at most `clip_norm` in L2, whatever it sends and however
    many examples it claims: that bound is the sensitivity the Gaussian noise is scaled to.
    """
    if not updates:
        raise ValueError("updates must not be empty")
    clipped = [clip_by_norm(update, clip_norm=clip_norm) for update in updates]
    return [np.sum([update[i] for update in clipped], axis=0) for i in range(len(clipped[0]))]


def add_gaussian_noise(arrays: NDArrays, *, std: float, rng: np.random.Generator) -> NDArrays:
    """Return arrays plus independent N(0, std²) noise in every coordinate (float64 draws)."""
    _check_arrays(arrays)
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"std must be a finite number >= 0, got {std}")
    return [np.add(a, rng.normal(0.0, std, size=a.shape)).astype(a.dtype) for a in arrays]


def add_laplace_noise(arrays: NDArrays, *, scale: float, rng: np.random.Generator) -> NDArrays:
    """Return arrays plus independent Laplace(0, scale) noise in every coordinate."""
    _check_arrays(arrays)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale}")
    return [np.add(a, rng.laplace(0.0, scale, size=a.shape)).astype(a.dtype) for a in arrays]


def noise_sum(
    summed: NDArrays, *, noise_multiplier: float, clip_norm: float, rng: np.random.Generator
) -> NDArrays:
    """Return a clipped sum with the DP-FedAvg noise N(0, (z·C)²) added.

    Paper: McMahan et al. 2018, arXiv:1710.06963 (Algorithm 1). The noise is added to the
    sum, not to each update, so it can run after secure aggregation has unmasked the sum.
    """
    if not math.isfinite(noise_multiplier) or noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
    return add_gaussian_noise(summed, std=noise_multiplier * clip_norm, rng=rng)


@dataclass(frozen=True, slots=True)
class NoiseScale:
    """The noise of one release: the std (Gaussian) or scale (Laplace), and its sensitivity."""

    mechanism: Mechanism
    scale: float
    sensitivity: float


class DifferentialPrivacyEngine:
    """Clip and noise one (ε, δ)-DP release of gradients or an update (the original design's API).

    The engine calibrates the noise of *one* release; the composition over rounds is the
    accountant's business (`accounting`). Clipping bounds the sensitivity in the norm the
    mechanism needs: L2 for the Gaussian mechanisms, L1 for Laplace.

    Parameters
    ----------
    epsilon, delta
        The per-release guarantee. δ is ignored by `laplace` (pure ε-DP).
    mechanism
        "gaussian" (classic; ε < 1 only), "analytic_gaussian" or "laplace".
    clip_norm
        The default clipping bound, and therefore the sensitivity the noise is scaled to.
    rng
        The noise source. None means a fresh generator seeded from OS entropy, never the
        global numpy or torch state.
    """

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        mechanism: Mechanism | str = Mechanism.GAUSSIAN,
        clip_norm: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.mechanism = Mechanism(mechanism)
        self.epsilon = epsilon
        self.delta = delta
        self.clip_norm = clip_norm
        self._rng = rng if rng is not None else os_entropy_rng()
        self.noise = self._noise_scale(clip_norm)

    def _noise_scale(self, sensitivity: float) -> NoiseScale:
        if self.mechanism is Mechanism.LAPLACE:
            scale = laplace_scale(epsilon=self.epsilon, sensitivity=sensitivity)
        elif self.mechanism is Mechanism.ANALYTIC_GAUSSIAN:
            scale = analytic_gaussian_sigma(
                epsilon=self.epsilon, delta=self.delta, sensitivity=sensitivity
            )
        else:
            scale = classic_gaussian_sigma(
                epsilon=self.epsilon, delta=self.delta, sensitivity=sensitivity
            )
        return NoiseScale(self.mechanism, scale, sensitivity)

    def clip_gradients(self, gradients: NDArrays, clip_norm: float | None = None) -> NDArrays:
        """Return gradients clipped to `clip_norm` (default: the engine's) in the mechanism's norm.

        Clipping to a bound above the engine's `clip_norm` would exceed the sensitivity the
        noise was calibrated for, so it is refused.
        """
        bound = self.clip_norm if clip_norm is None else clip_norm
        if bound > self.clip_norm:
            raise ValueError(
                f"clip_norm {bound} exceeds the engine's sensitivity {self.clip_norm}; "
                "build an engine with that clip_norm"
            )
        order = 1 if self.mechanism is Mechanism.LAPLACE else 2
        return clip_by_norm(gradients, clip_norm=bound, order=order)

    def add_noise(self, gradients: NDArrays) -> NDArrays:
        """Return gradients plus the mechanism's noise, scaled to the engine's `clip_norm`."""
        if self.mechanism is Mechanism.LAPLACE:
            return add_laplace_noise(gradients, scale=self.noise.scale, rng=self._rng)
        return add_gaussian_noise(gradients, std=self.noise.scale, rng=self._rng)
