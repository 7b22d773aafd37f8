"""`fedengine privacy ...` driven through typer's CliRunner, checked against the DP reference.

One reference entry of every kind goes through the command line with --json; the full
grids are checked on the library (tests/unit/fedprivacy), which the commands call.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from fedengine.cli import app
from tests.unit.fedprivacy import reference as ref
from tests.unit.fedprivacy.reference import Entry

runner = CliRunner()


def _run_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["privacy", *args, "--json"])
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def _grid_entry(q: float, noise_multiplier: float, steps: int, delta: float) -> Entry:
    for entry in ref.entries("subsampled_gaussian"):
        if (entry["q"], entry["noise_multiplier"], entry["steps"], entry["delta"]) == (
            q,
            noise_multiplier,
            steps,
            delta,
        ):
            return entry
    raise LookupError((q, noise_multiplier, steps, delta))


@ref.NEEDS_REFERENCE
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(
    "key", [(0.01, 1.1, 1000, 1e-5), (1.0, 4.0, 100, 1e-6), (0.05, 2.0, 10000, 1e-6)]
)
def test_epsilon_command_matches_the_reference(
    key: tuple[float, float, int, float], accountant: str
) -> None:
    # Prepare
    entry = _grid_entry(*key)
    assert entry["status"] == "ok"

    # Execute
    payload = _run_json(
        "epsilon",
        f"--q={entry['q']}",
        f"--noise-multiplier={entry['noise_multiplier']}",
        f"--steps={entry['steps']}",
        f"--delta={entry['delta']}",
        f"--accountant={accountant}",
    )

    # Assert
    assert payload["accountant"] == accountant
    assert (payload["q"], payload["noise_multiplier"], payload["steps"]) == key[:3]
    assert payload["status"] == "ok"
    epsilon = payload["epsilon"]
    assert ref.rule1_sound(epsilon, entry["epsilon_pld"])
    if accountant == "rdp":
        assert ref.rule2_rdp(epsilon, entry["epsilon_rdp"])
    else:
        assert ref.rule5_tight(epsilon, entry["epsilon_pld"])


@ref.NEEDS_REFERENCE
def test_epsilon_command_refuses_a_meaningless_entry() -> None:
    # Prepare
    entry = _grid_entry(1.0, 1.0, 100, 1e-5)
    assert entry["status"] == "skipped_meaningless"

    # Execute
    payload = _run_json(
        "epsilon",
        "--q=1",
        "--noise-multiplier=1",
        "--steps=100",
        "--delta=1e-5",
        "--accountant=pld",
    )

    # Assert
    assert payload["epsilon"] == "inf"
    assert payload["status"] == "skipped_meaningless"


def test_plain_output_is_the_number() -> None:
    # Execute
    result = runner.invoke(
        app,
        ["privacy", "epsilon", "--q=1", "--noise-multiplier=4", "--steps=1", "--delta=1e-5"],
    )

    # Assert
    assert result.exit_code == 0
    assert float(result.stdout) > 0


@ref.NEEDS_REFERENCE
def test_calibrate_command_matches_the_reference() -> None:
    # Prepare
    entry = ref.entries("subsampled_gaussian_inverse")[0]

    # Execute
    payload = _run_json(
        "calibrate",
        f"--epsilon={entry['target_epsilon']}",
        f"--delta={entry['delta']}",
        f"--q={entry['q']}",
        f"--steps={entry['steps']}",
        "--accountant=rdp",
    )

    # Assert
    assert ref.relative_error(payload["noise_multiplier"], entry["noise_multiplier_rdp"]) <= 0.005
    assert payload["epsilon"] <= entry["target_epsilon"]
    assert payload["accountant"] == "rdp"


def test_calibrate_refuses_a_non_enforcing_accountant() -> None:
    # Prepare
    arguments = ["calibrate", "--epsilon=1", "--delta=1e-5", "--q=1", "--steps=3"]

    # Execute
    result = runner.invoke(app, ["privacy", *arguments, "--accountant=exact"])

    # Assert
    assert result.exit_code == 2
    assert "rdp or pld" in result.stderr


@ref.NEEDS_REFERENCE
def test_max_steps_command_reproduces_abadi_mnist_epochs() -> None:
    # Prepare
    entry = next(e for e in ref.entries("paper_crosscheck") if "max_epochs_rdp" in e)

    # Execute
    payload = _run_json(
        "max-steps",
        f"--q={entry['q']}",
        f"--noise-multiplier={entry['noise_multiplier']}",
        f"--delta={entry['delta']}",
        f"--epsilon={entry['published_epsilon']}",
        "--steps-per-unit=100",
        "--accountant=moments",
    )

    # Assert
    assert payload["units"] == entry["max_epochs_moments_accountant"]


@ref.NEEDS_REFERENCE
def test_laplace_command_matches_the_reference() -> None:
    # Prepare
    entry = ref.entries("laplace_composition")[4]

    # Execute
    payload = _run_json(
        "laplace",
        f"--epsilon0={entry['epsilon0']}",
        f"--k={entry['k']}",
        f"--delta={entry['delta']}",
    )

    # Assert
    for field in ("epsilon_basic", "epsilon_advanced", "epsilon_advanced_or_basic"):
        assert ref.relative_error(payload[field], entry[field]) <= 1e-9
    optimal = payload["epsilon_optimal_composition"]
    assert ref.relative_error(optimal, entry["epsilon_optimal_composition"]) <= 1e-6
    assert ref.relative_error(payload["epsilon_pld"], entry["epsilon_pld"]) <= 1e-3
    assert ref.relative_error(payload["epsilon_rdp"], entry["epsilon_rdp"]) <= 0.01
    assert payload["laplace_scale"] == entry["laplace_scale"]


@ref.NEEDS_REFERENCE
def test_gaussian_sigma_command_matches_the_reference() -> None:
    # Prepare
    entry = ref.entries("gaussian_analytic_single")[0]

    # Execute
    payload = _run_json(
        "gaussian-sigma", f"--epsilon={entry['epsilon']}", f"--delta={entry['delta']}"
    )

    # Assert
    assert ref.relative_error(payload["sigma_analytic"], entry["sigma_analytic"]) <= 1e-6
    assert ref.relative_error(payload["sigma_classical"], entry["sigma_classical"]) <= 1e-9
    assert payload["sigma_classical_valid"] == entry["sigma_classical_valid"]
    pld = payload["epsilon_pld_at_sigma_analytic"]
    assert ref.rule5_tight(pld, entry["epsilon_pld_at_sigma_analytic"])
    rdp = payload["epsilon_rdp_at_sigma_analytic"]
    assert ref.relative_error(rdp, entry["epsilon_rdp_at_sigma_analytic"]) <= 1e-9


@ref.NEEDS_REFERENCE
def test_gaussian_composition_command_matches_the_reference() -> None:
    # Prepare
    entry = ref.entries("gaussian_composition")[0]

    # Execute
    payload = _run_json(
        "gaussian-composition",
        f"--epsilon0={entry['epsilon0']}",
        f"--delta0={entry['delta0']}",
        f"--k={entry['k']}",
    )

    # Assert
    for field in ("epsilon_basic", "delta_basic", "epsilon_advanced", "delta_advanced"):
        assert ref.relative_error(payload[field], entry[field]) <= 1e-9
    exact = entry["epsilon_exact_at_delta_advanced"]
    assert ref.relative_error(payload["epsilon_exact_at_delta_advanced"], exact) <= 1e-9
    assert ref.rule5_tight(payload["epsilon_pld_at_delta_advanced"], exact)
    rdp = entry["epsilon_rdp_at_delta_advanced"]
    assert ref.relative_error(payload["epsilon_rdp_at_delta_advanced"], rdp) <= 1e-9
