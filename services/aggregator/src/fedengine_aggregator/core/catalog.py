"""Strategies by name: which aggregation rule, which server optimizer, which device-side term.

A task names its strategy as ``{"name": "fedadam", "params": {...}}`` (issue 8). One strategy
is up to three parts, each run where it belongs:

- ``rule``: the aggregator's :class:`AggregationRule` (the round's delta);
- ``optimizer``: the coordinator's :class:`ServerOptimizer`, or None for x + Δ;
- ``proximal_mu``: FedProx's μ, which travels to devices in the train request (0: none).

Parameters are checked here with errors that name them; unknown ones are refused. The
gateway's schema (a discriminated union, later) must accept exactly what this accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedcommon.constraints import MAX_SETTING
from fedcommon.server_opt import Adagrad, Adam, Momentum, ServerOptimizer, Yogi
from fedengine_aggregator.core.robust import Krum, Median, MultiKrum, TrimmedMean
from fedengine_aggregator.core.strategies import AggregationRule
from fedengine_aggregator.core.sum_rules import FedAvg

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Strategy:
    name: str
    rule: AggregationRule
    optimizer: ServerOptimizer | None = None
    proximal_mu: float = 0.0

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs; a task with a smaller min_devices is refused."""
        return self.rule.min_updates


def _take(name: str, params: Params, allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    return {key: params[key] for key in allowed if key in params}


def _split(taken: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: taken[key] for key in keys if key in taken}


_OPTIMIZER_KEYS = ("eta", "beta1", "beta2", "tau")


def _fedavg(params: Params) -> Strategy:
    return Strategy("fedavg", FedAvg(**_take("fedavg", params, ("max_examples",))))


def _fedprox(params: Params) -> Strategy:
    taken = _take("fedprox", params, ("mu", "max_examples"))
    mu = taken.get("mu", 0.01)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not 0.0 <= mu <= MAX_SETTING:
        raise ValueError(f"fedprox: mu must be a number in [0, {MAX_SETTING:g}], got {mu!r}")
    return Strategy("fedprox", FedAvg(**_split(taken, ("max_examples",))), proximal_mu=float(mu))


def _fedavgm(params: Params) -> Strategy:
    taken = _take("fedavgm", params, ("lr", "momentum", "max_examples"))
    optimizer = Momentum(**_split(taken, ("lr", "momentum")))
    return Strategy("fedavgm", FedAvg(**_split(taken, ("max_examples",))), optimizer)


def _adaptive(name: str, cls: type[Adagrad | Adam | Yogi]) -> Callable[[Params], Strategy]:
    def build(params: Params) -> Strategy:
        taken = _take(name, params, (*_OPTIMIZER_KEYS, "max_examples"))
        optimizer = cls(**_split(taken, _OPTIMIZER_KEYS))
        return Strategy(name, FedAvg(**_split(taken, ("max_examples",))), optimizer)

    return build


def _median(params: Params) -> Strategy:
    return Strategy("median", Median(**_take("median", params, ())))


def _trimmed_mean(params: Params) -> Strategy:
    return Strategy("trimmed_mean", TrimmedMean(**_take("trimmed_mean", params, ("beta",))))


def _krum(params: Params) -> Strategy:
    return Strategy("krum", Krum(**_take("krum", params, ("f",))))


def _multi_krum(params: Params) -> Strategy:
    return Strategy("multi_krum", MultiKrum(**_take("multi_krum", params, ("f", "m"))))


STRATEGIES: dict[str, Callable[[Params], Strategy]] = {
    "fedavg": _fedavg,
    "fedprox": _fedprox,
    "fedavgm": _fedavgm,
    "fedadam": _adaptive("fedadam", Adam),
    "fedyogi": _adaptive("fedyogi", Yogi),
    "fedadagrad": _adaptive("fedadagrad", Adagrad),
    "median": _median,
    "trimmed_mean": _trimmed_mean,
    "krum": _krum,
    "multi_krum": _multi_krum,
}


def make_strategy(name: str, params: Params | None = None) -> Strategy:
    """Return the strategy ``name`` with ``params`` (defaults for the rest).

    Raises ``ValueError`` for an unknown name, an unknown parameter or a value out of range.
    """
    build = STRATEGIES.get(name)
    if build is None:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return build(dict(params or {}))
