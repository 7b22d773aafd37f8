"""``fedengine privacy``: the privacy accountant's numbers, without a running stack.

Every value in ../shared/reference/dp_reference_public.json can be recomputed here: `epsilon`
(subsampled Gaussian, RDP / PLD / exact / moments), `calibrate` (the inverse), `max-steps`
(rounds or epochs within a budget), `laplace` (Laplace composition), `gaussian-sigma` (one
Gaussian release) and `gaussian-composition`. The math lives in the `fedprivacy` library
(its `[accounting]` extra) and is imported inside each command, so that other commands do not
pay for dp-accounting.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any

import typer

from fedprivacy.accountants import Accountant

privacy_app = typer.Typer(
    help="Differential-privacy accounting: epsilon, calibration, composition.",
    no_args_is_help=True,
)

# A budget is enforced with rdp or pld only; exact and moments check published numbers.
_ENFORCING = (Accountant.RDP, Accountant.PLD)

SampleRate = Annotated[
    float, typer.Option("--q", min=0.0, max=1.0, help="Poisson sampling rate (1 = no sampling)")
]
NoiseMultiplier = Annotated[
    float, typer.Option("--noise-multiplier", min=0.0, help="noise std / clip norm (z)")
]
Delta = Annotated[float, typer.Option("--delta", min=0.0, max=1.0, help="target delta")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _quiet_library_warnings() -> None:
    """Silence absl's per-order warnings: dp-accounting logs one line per excluded RDP order.

    At large ε that is hundreds of lines for one answer; the exclusion itself is documented
    (reference README) and only makes the RDP ε more conservative.
    """
    logging.getLogger("absl").setLevel(logging.ERROR)


def _number(value: float) -> float | str:
    """JSON has no infinity: write it as the string "inf", as the reference file does."""
    return value if math.isfinite(value) else "inf"


def _emit(payload: dict[str, Any], *, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {key: _number(v) if isinstance(v, float) else v for key, v in payload.items()}
            )
        )
    else:
        typer.echo(text)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@privacy_app.command()
def epsilon(
    q: SampleRate,
    noise_multiplier: NoiseMultiplier,
    steps: Annotated[int, typer.Option("--steps", min=1, help="rounds or steps")],
    delta: Delta,
    accountant: Annotated[
        Accountant, typer.Option(help="rdp or pld; exact (q = 1), moments, classic for comparisons")
    ] = Accountant.RDP,
    as_json: AsJson = False,
) -> None:
    """Print the epsilon of STEPS rounds of the Poisson-subsampled Gaussian mechanism."""
    from fedprivacy.accounting import epsilon_subsampled_gaussian

    _quiet_library_warnings()
    try:
        result = epsilon_subsampled_gaussian(
            sample_rate=q,
            noise_multiplier=noise_multiplier,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    payload: dict[str, Any] = {
        "epsilon": result.epsilon,
        "accountant": result.accountant.value,
        "q": q,
        "noise_multiplier": noise_multiplier,
        "steps": steps,
        "delta": delta,
        "status": "ok" if result.meaningful else "skipped_meaningless",
    }
    if result.optimal_order is not None:
        payload["optimal_order"] = result.optimal_order
    text = f"{result.epsilon}"
    if not result.meaningful:
        text += "  (no meaningful guarantee: RDP epsilon above 100 at delta 1e-6)"
    _emit(payload, as_json=as_json, text=text)


@privacy_app.command()
def calibrate(
    target_epsilon: Annotated[float, typer.Option("--epsilon", help="the budget's epsilon")],
    delta: Delta,
    q: SampleRate,
    steps: Annotated[int, typer.Option("--steps", min=1, help="planned rounds or steps")],
    accountant: Annotated[Accountant, typer.Option(help="rdp or pld")] = Accountant.RDP,
    as_json: AsJson = False,
) -> None:
    """Print the noise multiplier that keeps STEPS rounds within the budget (same accountant)."""
    from fedprivacy.calibration import calibrate_noise_multiplier

    _quiet_library_warnings()
    if accountant not in _ENFORCING:
        raise _fail("a budget is calibrated with --accountant rdp or pld")
    try:
        result = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=q,
            steps=steps,
            accountant=accountant,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    payload = {
        "noise_multiplier": result.noise_multiplier,
        "epsilon": result.epsilon,
        "target_epsilon": target_epsilon,
        "aimed_epsilon": result.aimed_epsilon,
        "accountant": result.accountant.value,
        "q": q,
        "steps": steps,
        "delta": delta,
    }
    _emit(payload, as_json=as_json, text=f"{result.noise_multiplier}")


@privacy_app.command("max-steps")
def max_steps(
    q: SampleRate,
    noise_multiplier: NoiseMultiplier,
    delta: Delta,
    budget: Annotated[float, typer.Option("--epsilon", help="the budget's epsilon")],
    steps_per_unit: Annotated[
        int, typer.Option(min=1, help="steps per counted unit, e.g. 100 for epochs of 100")
    ] = 1,
    accountant: Annotated[
        Accountant, typer.Option(help="rdp, pld; moments or classic for comparisons")
    ] = Accountant.RDP,
    as_json: AsJson = False,
) -> None:
    """Print how many rounds (or epochs) fit in the budget with this noise multiplier."""
    from fedprivacy.accounting import max_steps_within_budget

    _quiet_library_warnings()
    try:
        units = max_steps_within_budget(
            sample_rate=q,
            noise_multiplier=noise_multiplier,
            delta=delta,
            epsilon_budget=budget,
            accountant=accountant,
            steps_per_unit=steps_per_unit,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    payload = {
        "units": units,
        "steps": units * steps_per_unit,
        "steps_per_unit": steps_per_unit,
        "accountant": Accountant(accountant).value,
        "epsilon_budget": budget,
        "q": q,
        "noise_multiplier": noise_multiplier,
        "delta": delta,
    }
    _emit(payload, as_json=as_json, text=f"{units}")


@privacy_app.command()
def laplace(
    epsilon0: Annotated[float, typer.Option("--epsilon0", help="each release's epsilon")],
    k: Annotated[int, typer.Option("--k", min=1, help="number of releases")],
    delta: Delta,
    as_json: AsJson = False,
) -> None:
    """Print the epsilon of K Laplace releases (scale 1/EPSILON0): every composition bound."""
    from fedprivacy.accounting import epsilon_laplace
    from fedprivacy.composition import (
        advanced_composition,
        basic_composition,
        optimal_composition_epsilon,
    )
    from fedprivacy.mechanisms import laplace_scale

    _quiet_library_warnings()
    try:
        scale = laplace_scale(epsilon=epsilon0, sensitivity=1.0)
        basic = basic_composition(epsilon0=epsilon0, delta0=0.0, k=k)
        advanced = advanced_composition(epsilon0=epsilon0, delta0=0.0, k=k, delta_prime=delta)
        payload: dict[str, Any] = {
            "epsilon0": epsilon0,
            "laplace_scale": scale,
            "k": k,
            "delta": delta,
            "epsilon_basic": basic.epsilon,
            "delta_basic": basic.delta,
            "epsilon_advanced": advanced.epsilon,
            "delta_advanced": advanced.delta,
            "epsilon_advanced_or_basic": min(basic.epsilon, advanced.epsilon),
            "epsilon_optimal_composition": optimal_composition_epsilon(
                epsilon0=epsilon0, k=k, delta=delta
            ),
        }
        for accountant in _ENFORCING:
            result = epsilon_laplace(scale=scale, count=k, delta=delta, accountant=accountant)
            payload[f"epsilon_{accountant.value}"] = result.epsilon
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    _emit(payload, as_json=as_json, text=_lines(payload))


@privacy_app.command("gaussian-sigma")
def gaussian_sigma(
    target_epsilon: Annotated[float, typer.Option("--epsilon", help="the release's epsilon")],
    delta: Delta,
    sensitivity: Annotated[float, typer.Option(help="L2 sensitivity")] = 1.0,
    as_json: AsJson = False,
) -> None:
    """Print the noise std of one (EPSILON, DELTA) Gaussian release: analytic and classic."""
    from fedprivacy.accounting import epsilon_subsampled_gaussian
    from fedprivacy.mechanisms import (
        analytic_gaussian_sigma,
        classic_gaussian_sigma_formula,
    )

    _quiet_library_warnings()
    try:
        sigma = analytic_gaussian_sigma(
            epsilon=target_epsilon, delta=delta, sensitivity=sensitivity
        )
        payload: dict[str, Any] = {
            "epsilon": target_epsilon,
            "delta": delta,
            "sensitivity": sensitivity,
            "sigma_analytic": sigma,
            "sigma_classical": classic_gaussian_sigma_formula(
                epsilon=target_epsilon, delta=delta, sensitivity=sensitivity
            ),
            "sigma_classical_valid": target_epsilon < 1,
        }
        for accountant in _ENFORCING:
            result = epsilon_subsampled_gaussian(
                sample_rate=1.0,
                noise_multiplier=sigma / sensitivity,
                steps=1,
                delta=delta,
                accountant=accountant,
            )
            payload[f"epsilon_{accountant.value}_at_sigma_analytic"] = result.epsilon
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    _emit(payload, as_json=as_json, text=_lines(payload))


@privacy_app.command("gaussian-composition")
def gaussian_composition(
    epsilon0: Annotated[float, typer.Option("--epsilon0", help="each release's epsilon")],
    delta0: Annotated[float, typer.Option("--delta0", help="each release's delta")],
    k: Annotated[int, typer.Option("--k", min=1, help="number of releases")],
    delta_prime: Annotated[
        float | None, typer.Option("--delta-prime", help="advanced composition's slack (DELTA0)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Print the epsilon of K analytic-Gaussian (EPSILON0, DELTA0) releases, every way."""
    from fedprivacy.accounting import epsilon_subsampled_gaussian
    from fedprivacy.composition import advanced_composition, basic_composition
    from fedprivacy.mechanisms import analytic_gaussian_sigma

    _quiet_library_warnings()
    slack = delta0 if delta_prime is None else delta_prime
    try:
        sigma = analytic_gaussian_sigma(epsilon=epsilon0, delta=delta0, sensitivity=1.0)
        basic = basic_composition(epsilon0=epsilon0, delta0=delta0, k=k)
        advanced = advanced_composition(epsilon0=epsilon0, delta0=delta0, k=k, delta_prime=slack)
        payload: dict[str, Any] = {
            "epsilon0": epsilon0,
            "delta0": delta0,
            "sigma": sigma,
            "k": k,
            "delta_prime": slack,
            "epsilon_basic": basic.epsilon,
            "delta_basic": basic.delta,
            "epsilon_advanced": advanced.epsilon,
            "delta_advanced": advanced.delta,
        }
        for accountant in (Accountant.EXACT, Accountant.PLD, Accountant.RDP):
            result = epsilon_subsampled_gaussian(
                sample_rate=1.0,
                noise_multiplier=sigma,
                steps=k,
                delta=advanced.delta,
                accountant=accountant,
            )
            payload[f"epsilon_{accountant.value}_at_delta_advanced"] = result.epsilon
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    _emit(payload, as_json=as_json, text=_lines(payload))


def _lines(payload: dict[str, Any]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in payload.items())
