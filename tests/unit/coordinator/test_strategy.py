"""The coordinator's part of a strategy: which server optimizer, which μ, and the stored step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from fedcommon.messages import v1
from fedcommon.server_opt import Adam, Momentum
from fedengine_aggregator.core.catalog import make_strategy
from fedengine_coordinator.core.strategy import optimizer_for, proximal_mu, server_step

STRATEGY = TypeAdapter(v1.StrategySpec)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavg", {}),
        ("fedprox", {"mu": 0.3}),
        ("fedavgm", {}),
        ("fedavgm", {"lr": 0.5, "momentum": 0.0}),
        ("fedadam", {}),
        ("fedadam", {"eta": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 0.01}),
        ("fedyogi", {"tau": 0.1}),
        ("fedadagrad", {}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.1}),
        ("krum", {}),
        ("multi_krum", {"m": 2}),
    ],
)
def test_the_coordinator_runs_the_catalogs_optimizer_and_mu(
    name: str, params: dict[str, Any]
) -> None:
    # Prepare
    spec = STRATEGY.validate_python({"name": name, "params": params})

    # Execute
    optimizer, mu = optimizer_for(spec), proximal_mu(spec)

    # Assert
    catalog = make_strategy(name, params)
    assert optimizer == catalog.optimizer
    assert mu == catalog.proximal_mu


MODEL = [np.array([[1.0, -2.0], [0.5, 0.0]], np.float32), np.array([3.0], np.float32)]
DELTAS = [
    [np.array([[0.1, 0.2], [-0.3, 0.0]], np.float32), np.array([-1.0], np.float32)],
    [np.array([[0.0, -0.2], [0.3, 0.4]], np.float32), np.array([0.5], np.float32)],
    [np.array([[0.2, 0.2], [0.2, 0.2]], np.float32), np.array([0.0], np.float32)],
]


@pytest.mark.parametrize("optimizer", [Adam(eta=0.1), Momentum(lr=1.0, momentum=0.9)])
def test_steps_through_stored_bytes_equal_steps_in_memory(optimizer: Adam | Momentum) -> None:
    """A coordinator that restarts between rounds reads the state back from the version it
    stored with: the model it reaches is the one an uninterrupted run reaches."""
    # Prepare: the uninterrupted run keeps the state object.
    state = optimizer.initial_state([list(a.shape) for a in MODEL])
    expected = MODEL
    for delta in DELTAS:
        step = optimizer.step(expected, delta, state)
        expected, state = step.model, step.state

    # Execute: each round starts from the bytes the previous one stored.
    model, stored = MODEL, None
    for delta in DELTAS:
        done = server_step(optimizer, model, delta, stored)
        model, stored = done.model, done.state

    # Assert
    for got, want in zip(model, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert stored == state.to_bytes()
    assert optimizer.load_state(stored, [list(a.shape) for a in MODEL]).step == 3


def test_the_first_step_starts_from_zero_state_and_moves_the_model() -> None:
    # Prepare
    optimizer = Adam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    # Execute
    done = server_step(optimizer, MODEL, DELTAS[0], None)

    # Assert: m = 0.1·Δ, v = 0.01·Δ², step = η·m / (√v + τ) = 0.1·0.1·Δ / (0.1·|Δ| + τ)
    d = DELTAS[0][1].astype(np.float64)
    want = MODEL[1] + 0.1 * 0.1 * d / (0.1 * np.abs(d) + 1e-3)
    np.testing.assert_allclose(done.model[1], want, rtol=1e-6)
    assert all(a.dtype == np.float32 for a in done.model)
    assert all(a is not b for a, b in zip(done.model, MODEL, strict=True))


def test_another_optimizers_state_is_refused() -> None:
    # Prepare
    stored = server_step(Momentum(), MODEL, DELTAS[0], None).state

    # Execute / Assert
    with pytest.raises(ValueError, match="fedadam: optimizer state"):
        server_step(Adam(), MODEL, DELTAS[1], stored)
