"""Strategies by name: parts, defaults, refusals."""

from __future__ import annotations

import pytest

from fedcommon.server_opt import Adagrad, Adam, Momentum, Yogi
from fedengine_aggregator.core.catalog import STRATEGIES, make_strategy
from fedengine_aggregator.core.robust import Krum, MultiKrum, TrimmedMean
from fedengine_aggregator.core.sum_rules import FedAvg

SUMS = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
ROBUST = ("median", "trimmed_mean", "krum", "multi_krum")


def test_every_name_of_the_issue_builds_with_defaults() -> None:
    assert set(STRATEGIES) == {*SUMS, *ROBUST}
    for name in SUMS:
        strategy = make_strategy(name)
        assert strategy.name == name and isinstance(strategy.rule, FedAvg)
        assert not strategy.rule.buffers
    for name in ROBUST:
        strategy = make_strategy(name)
        assert strategy.rule.buffers and strategy.optimizer is None
    assert make_strategy("fedavg").optimizer is None
    assert make_strategy("fedprox").proximal_mu == 0.01
    assert isinstance(make_strategy("fedavgm").optimizer, Momentum)
    assert isinstance(make_strategy("fedadam").optimizer, Adam)
    assert isinstance(make_strategy("fedyogi").optimizer, Yogi)
    assert isinstance(make_strategy("fedadagrad").optimizer, Adagrad)
    assert make_strategy("trimmed_mean").rule == TrimmedMean(beta=0.2)
    assert make_strategy("krum").rule == Krum(f=2)
    assert make_strategy("krum").min_updates == 7
    assert make_strategy("multi_krum").rule == MultiKrum(f=2, m=None)


def test_parameters_reach_their_part() -> None:
    strategy = make_strategy(
        "fedadam", {"eta": 0.3, "beta1": 0.5, "beta2": 0.9, "tau": 0.01, "max_examples": 64}
    )
    assert strategy.optimizer == Adam(eta=0.3, beta1=0.5, beta2=0.9, tau=0.01)
    assert strategy.rule == FedAvg(max_examples=64)
    assert make_strategy("fedprox", {"mu": 0.1, "max_examples": 5}).proximal_mu == 0.1
    assert make_strategy("fedavgm", {"lr": 0.5, "momentum": 0.0}).optimizer == Momentum(0.5, 0.0)
    assert make_strategy("multi_krum", {"f": 1, "m": 3}).min_updates == 5


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fedsgd", {}, "unknown strategy 'fedsgd'"),
        ("fedavg", {"mu": 0.1}, r"fedavg: unknown parameter\(s\) \['mu'\]"),
        ("median", {"beta": 0.1}, r"median: unknown parameter"),
        ("krum", {"m": 2}, r"krum: unknown parameter\(s\) \['m'\]"),
        ("fedprox", {"mu": -1.0}, "mu must be"),
        ("fedprox", {"mu": "big"}, "mu must be"),
        ("fedadam", {"tau": 0}, "tau"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("fedavg", {"max_examples": 0}, "max_examples"),
    ],
)
def test_bad_names_and_parameters_are_refused(
    name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_strategy(name, params)
