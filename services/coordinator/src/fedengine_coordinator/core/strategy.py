"""The coordinator's part of a task's strategy (issue 8): its server optimizer and its μ.

A strategy is up to three parts, each run where it belongs: the aggregation rule (the
aggregator's, which publishes the round's delta Δ, Reddi et al.'s pseudo-gradient), a server
optimizer (here: ``x ← x + step(Δ, state)``), and FedProx's proximal weight μ (devices', sent
in every train request). FedAvg, FedProx and the robust rules have no server optimizer: the
new model is ``x + Δ``, as it always was.

The optimizer's state is bytes stored with the model version it produced, in the transaction
that stores that version; the next round reads it back from the version it applies to, so a
coordinator that stops between (or during) rounds loses nothing and never applies a step twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import (
    FedAdagradStrategy,
    FedAdamStrategy,
    FedAvgMStrategy,
    FedProxStrategy,
    FedYogiStrategy,
    StrategySpec,
)
from fedcommon.server_opt import Adagrad, Adam, Momentum, ServerOptimizer, Yogi


def optimizer_for(strategy: StrategySpec) -> ServerOptimizer | None:
    """The server optimizer ``strategy`` names, with its parameters; None: x + Δ."""
    match strategy:
        case FedAvgMStrategy(params=p):
            return Momentum(lr=p.lr, momentum=p.momentum)
        case FedAdamStrategy(params=p):
            return Adam(eta=p.eta, beta1=p.beta1, beta2=p.beta2, tau=p.tau)
        case FedYogiStrategy(params=p):
            return Yogi(eta=p.eta, beta1=p.beta1, beta2=p.beta2, tau=p.tau)
        case FedAdagradStrategy(params=p):
            return Adagrad(eta=p.eta, beta1=p.beta1, beta2=p.beta2, tau=p.tau)
    return None


def proximal_mu(strategy: StrategySpec) -> float:
    """FedProx's μ for local training; 0 (no proximal term) for every other strategy."""
    return strategy.params.mu if isinstance(strategy, FedProxStrategy) else 0.0


@dataclass(frozen=True)
class ServerStep:
    """A round applied by a server optimizer: the new model and the state to store with it."""

    model: NDArrays
    state: bytes


def server_step(
    optimizer: ServerOptimizer, model: NDArrays, delta: NDArrays, state: bytes | None
) -> ServerStep:
    """Apply one round's ``delta`` to ``model`` from the stored ``state`` (None: the first
    round, every slot zero). Inputs are not mutated.

    Raises ``ValueError`` if the state is another optimizer's or malformed, the shapes
    disagree, or the step would overflow.
    """
    shapes = [list(a.shape) for a in model]
    current = (
        optimizer.initial_state(shapes) if state is None else optimizer.load_state(state, shapes)
    )
    step = optimizer.step(model, delta, current)
    return ServerStep(step.model, step.state.to_bytes())
