"""Local DP-SGD with Opacus: each example's gradient is clipped, batches are Poisson samples,
the noise is z·C, and the server's ε for the settings matches Opacus's own accounting."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedcommon.messages.v1 import LocalDp, PrivacyLevel
from feddevice.torch_dp import private_loader, train_local_dp
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import epsilon_subsampled_gaussian

logging.getLogger("absl").setLevel(logging.ERROR)


def settings(**fields: object) -> LocalDp:
    values: dict[str, object] = {
        "level": PrivacyLevel.MEDIUM,
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 10,
        "max_grad_norm": 1.0,
        "epsilon_budget": 3.0,
        "delta": 1e-5,
    }
    return LocalDp.model_validate(values | fields)


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def data(n: int, *, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 4)) * scale).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    return x, y


def generators(seed: int = 0) -> dict[str, torch.Generator]:
    return {
        "sampling_generator": torch.Generator().manual_seed(seed),
        "noise_generator": torch.Generator().manual_seed(seed + 1),
    }


def test_per_example_clipping_bounds_one_steps_update() -> None:
    # Prepare: huge inputs, so every example's gradient is far above C = 1; q = 1 and
    # (almost) no noise, so one step moves the weights by lr·Σ clip(g_i) / n.
    x, y = data(50, scale=1e4)
    chosen = settings(sample_rate=1.0, steps=1, noise_multiplier=1e-9, max_grad_norm=1.0)

    # Execute
    result = train_local_dp(
        linear_model(), x, y, settings=chosen, learning_rate=1.0, **generators()
    )

    # Assert: ‖Δ‖ ≤ lr · C (each clipped gradient has norm ≤ C), while plain SGD moves ~1e4.
    norm = float(np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in result.delta)))
    assert 0.0 < norm <= 1.0 + 1e-6
    model = linear_model()
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()  # type: ignore[no-untyped-call]
    plain = float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5)  # type: ignore[union-attr]
    assert plain > 100


def test_the_noise_has_std_z_times_c_over_the_expected_batch() -> None:
    # Prepare: one step with q = 1 and a tiny C makes the clipped sum negligible next to the
    # noise.
    x, y = data(100, scale=1.0)
    chosen = settings(sample_rate=1.0, steps=1, noise_multiplier=2.0, max_grad_norm=1e-6)

    # Execute
    result = train_local_dp(
        linear_model(), x, y, settings=chosen, learning_rate=1.0, **generators(3)
    )

    # Assert: Δ = -(noise of std z·C) / n per coordinate; 15 coordinates, so the sample
    # std is within a factor 2 of z·C/n (a chi-square bound failing far below 1e-6).
    values = np.concatenate([d.ravel() for d in result.delta]).astype(np.float64)
    expected = 2.0 * 1e-6 / 100
    assert expected / 2 < float(np.std(values)) < expected * 2


def test_the_loader_is_poisson_sampled() -> None:
    # Prepare
    n, q = 1000, 0.1
    x, y = data(n, scale=1.0)
    loader = private_loader(x, y, sample_rate=q, generator=torch.Generator().manual_seed(5))

    # Execute: 20 passes of 10 batches each.
    sizes = [len(batch[1]) for _ in range(20) for batch in loader]

    # Assert: sizes vary (not a fixed batch), with mean q·n and variance n·q·(1-q) = 90
    # (mean within 5 standard errors: a false failure below 1e-6).
    assert len(sizes) == 200 and len(set(sizes)) > 5
    assert abs(np.mean(sizes) - q * n) < 5 * np.sqrt(n * q * (1 - q) / len(sizes))
    assert 45 < np.var(sizes) < 180


def test_training_runs_the_requested_steps_and_reports_no_metrics() -> None:
    # Prepare
    x, y = data(30, scale=1.0)
    chosen = settings(steps=7)

    # Execute
    result = train_local_dp(
        linear_model(), x, y, settings=chosen, learning_rate=0.1, **generators()
    )

    # Assert: the data-dependent metrics are not reported; the count is (FedAvg weighs by it).
    assert (result.num_examples, result.train_loss, result.train_accuracy) == (30, 0.0, 0.0)
    assert all(np.isfinite(d).all() for d in result.delta)
    with pytest.raises(ValueError, match="empty"):
        train_local_dp(
            linear_model(), x[:0], y[:0], settings=chosen, learning_rate=0.1, **generators()
        )


def test_the_servers_epsilon_for_the_settings_matches_opacus_accounting() -> None:
    # Prepare: what a device runs for 10 rounds of 50 steps at z = 1.1, q = 0.1.
    z, q, steps, delta = 1.1, 0.1, 500, 1e-5
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=z, sample_rate=q)

    # Execute
    server = epsilon_subsampled_gaussian(
        sample_rate=q, noise_multiplier=z, steps=steps, delta=delta, accountant=Accountant.RDP
    ).epsilon

    # Assert: both are RDP bounds of the same mechanism, on different grids of orders
    # (measured: 15.26 against Opacus's 15.13, 0.9% apart).
    opacus_epsilon = accountant.get_epsilon(delta=delta)
    assert server == pytest.approx(opacus_epsilon, rel=0.03)
