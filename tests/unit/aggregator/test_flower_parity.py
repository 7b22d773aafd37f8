"""Our strategies against Flower's update rules on the same inputs.

The references below restate, in plain numpy, what Flower's strategies compute (read from
adap/flower ``framework/py/flwr/server/strategy/``: fedavgm.py, fedopt.py and its subclasses,
aggregate.py). Flower's clients send full weights, ours send deltas; with every client starting
from the global model x, Flower's ``mean(weights) - x`` is our mean delta.

Known differences, pinned here: Flower's FedAdam scales η by the Adam bias correction
``√(1 - β₂^(t+1)) / (1 - β₁^(t+1))`` (t the server round, from 1), which Reddi et al.'s
Algorithm 2 and ours do not; Flower's Multi-Krum weights the chosen updates by examples, ours
(as Blanchard et al.) takes their plain mean, so they agree when the counts are equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcommon.server_opt import Adagrad, Adam, Momentum, ServerOptimizer, Yogi
from fedengine_aggregator.core.robust import Krum, Median, MultiKrum, TrimmedMean
from fedengine_aggregator.core.strategies import AggregationRule
from fedengine_aggregator.core.sum_rules import FedAvg

SEEDS = range(5)


def flower_weighted_mean(vectors: list[np.ndarray], examples: list[int]) -> np.ndarray:
    return sum(v * n for v, n in zip(vectors, examples, strict=True)) / sum(examples)


def flower_fedavgm(x: np.ndarray, means: list[np.ndarray], lr: float, mu: float) -> np.ndarray:
    momentum = None
    for server_round, mean in enumerate(means, start=1):
        pseudo_gradient = x - mean  # the opposite sign of an update
        momentum = pseudo_gradient if server_round == 1 else mu * momentum + pseudo_gradient
        x = x - lr * momentum
    return x


def flower_fedopt(
    kind: str, x: np.ndarray, means: list[np.ndarray], eta: float, b1: float, b2: float, tau: float
) -> np.ndarray:
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for server_round, mean in enumerate(means, start=1):
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if kind == "adam":
            v = b2 * v + (1 - b2) * delta * delta
            eta_t = eta * np.sqrt(1 - b2 ** (server_round + 1.0)) / (1 - b1 ** (server_round + 1.0))
        elif kind == "yogi":
            v = v - (1 - b2) * delta * delta * np.sign(v - delta * delta)
            eta_t = eta
        else:
            v = v + delta * delta
            eta_t = eta
        x = x + eta_t * m / (np.sqrt(v) + tau)
    return x


def flower_median(vectors: list[np.ndarray]) -> np.ndarray:
    return np.median(np.stack(vectors), axis=0)


def flower_trimmed_mean(vectors: list[np.ndarray], cut: float) -> np.ndarray:
    stacked = np.sort(np.stack(vectors), axis=0)
    low = int(cut * len(vectors))
    return stacked[low : len(vectors) - low].mean(axis=0)


def flower_krum(vectors: list[np.ndarray], f: int, keep: int) -> np.ndarray:
    n = len(vectors)
    distances = np.array([[np.linalg.norm(a - b) ** 2 for b in vectors] for a in vectors])
    closest = max(1, n - f - 2)
    scores = [np.sum(np.sort(row)[1 : closest + 1]) for row in distances]
    if keep > 0:
        best = np.argsort(scores)[::-1][n - keep :]
        return flower_weighted_mean([vectors[i] for i in best], [1] * keep)
    return vectors[int(np.argmin(scores))]


def rounds_of(seed: int, n: int = 9, dim: int = 5) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    vectors = [rng.normal(size=dim).astype(np.float32) for _ in range(n)]
    return vectors, [int(k) for k in rng.integers(1, 500, size=n)]


def ours(rule: AggregationRule, vectors: list[np.ndarray], examples: list[int]) -> np.ndarray:
    accumulator = rule.start([[len(vectors[0])]])
    for vector, count in zip(vectors, examples, strict=True):
        accumulator.add([vector], count)
    return accumulator.result()[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregation_rules_match_flower(seed: int) -> None:
    vectors, examples = rounds_of(seed)
    as64 = [v.astype(np.float64) for v in vectors]

    def close(a: np.ndarray, b: np.ndarray) -> None:
        np.testing.assert_allclose(a, b.astype(np.float32), rtol=1e-6, atol=1e-7)

    close(ours(FedAvg(), vectors, examples), flower_weighted_mean(as64, examples))
    close(ours(Median(), vectors, examples), flower_median(as64))
    close(ours(TrimmedMean(beta=0.2), vectors, examples), flower_trimmed_mean(as64, 0.2))
    close(ours(Krum(f=2), vectors, examples), flower_krum(as64, 2, 0))
    close(ours(MultiKrum(f=2, m=4), vectors, [1] * 9), flower_krum(as64, 2, 4))


def server_run(optimizer: ServerOptimizer, x: np.ndarray, means: list[np.ndarray]) -> np.ndarray:
    state = optimizer.initial_state([list(x.shape)])
    model = [x.astype(np.float32)]
    for mean in means:
        step = optimizer.step(model, [(mean - model[0]).astype(np.float32)], state)
        model, state = step.model, step.state
    return model[0]


def client_means(seed: int, dim: int = 4, rounds: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """A start model and, per round, where the clients' weighted mean lands: x + a step."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=dim).astype(np.float32), [
        rng.normal(size=dim).astype(np.float32) for _ in range(rounds)
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_server_optimizers_match_flower(seed: int) -> None:
    x, means = client_means(seed)
    x64 = x.astype(np.float64)

    def close(a: np.ndarray, b: np.ndarray) -> None:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)

    close(
        server_run(Momentum(lr=0.8, momentum=0.9), x, means), flower_fedavgm(x64, means, 0.8, 0.9)
    )
    for cls, kind in ((Yogi, "yogi"), (Adagrad, "adagrad")):
        optimizer = cls(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
        close(
            server_run(optimizer, x, means), flower_fedopt(kind, x64, means, 0.1, 0.9, 0.99, 1e-3)
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_fedadam_differs_from_flower_only_by_its_bias_corrected_eta(seed: int) -> None:
    x, means = client_means(seed)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    reference = flower_fedopt("adam", x.astype(np.float64), means, eta, b1, b2, tau)

    # Ours with η_t = Flower's bias-corrected η each round (m and v do not depend on η).
    state = Adam().initial_state([list(x.shape)])
    model = [x]
    for server_round, mean in enumerate(means, start=1):
        eta_t = eta * np.sqrt(1 - b2 ** (server_round + 1.0)) / (1 - b1 ** (server_round + 1.0))
        optimizer = Adam(eta=float(eta_t), beta1=b1, beta2=b2, tau=tau)
        step = optimizer.step(model, [(mean - model[0]).astype(np.float32)], state)
        model, state = step.model, step.state

    np.testing.assert_allclose(model[0], reference, rtol=2e-5, atol=2e-6)
    plain = server_run(Adam(eta=eta, beta1=b1, beta2=b2, tau=tau), x, means)
    assert not np.allclose(plain, reference, rtol=1e-3)
