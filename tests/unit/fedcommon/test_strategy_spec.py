"""A task's strategy on the bus: the schema, its defaults, and its agreement with the catalog.

The gateway validates a strategy with this schema and the aggregator builds it with
``fedengine_aggregator.core.catalog.make_strategy``: what one accepts the other must build,
with the same defaults, and what one refuses the other must refuse.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from fedcommon import codec
from fedcommon.messages import v1
from fedengine_aggregator.core.catalog import STRATEGIES, make_strategy
from tests.unit.fedcommon.examples import EXAMPLES

STRATEGY = TypeAdapter(v1.StrategySpec)
NAMES = [t.model_fields["name"].default for t in v1.STRATEGY_TYPES]


def schema(name: str, params: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"name": name}
    if params is not None:
        body["params"] = params
    return STRATEGY.validate_python(body)


def test_the_schema_names_exactly_the_catalogs_strategies() -> None:
    assert sorted(NAMES) == sorted(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_schema_defaults_build_the_catalogs_default_strategy(name: str) -> None:
    # Prepare
    defaults = schema(name).params.model_dump()

    # Execute
    from_schema = make_strategy(name, defaults)

    # Assert
    assert from_schema == make_strategy(name)
    assert schema(name).params.min_updates == from_schema.min_updates


ACCEPTED = [
    ("fedavg", {"max_examples": 1}),
    ("fedavg", {"max_examples": 100_000_000}),
    ("fedprox", {"mu": 0}),
    ("fedprox", {"mu": 2.5, "max_examples": 64}),
    ("fedavgm", {"lr": 0.5, "momentum": 0.0}),
    ("fedavgm", {"momentum": 0.999}),
    ("fedadam", {"eta": 1, "beta1": 0.0, "beta2": 0.5, "tau": 1e-9}),
    ("fedyogi", {"eta": 0.03, "tau": 0.1}),
    ("fedadagrad", {"beta1": 0.1}),
    ("median", {}),
    ("trimmed_mean", {"beta": 0.0}),
    ("trimmed_mean", {"beta": 0.49}),
    ("krum", {"f": 0}),
    ("krum", {"f": 3}),
    ("multi_krum", {"f": 1, "m": 3}),
    ("multi_krum", {"f": 0, "m": None}),
]


@pytest.mark.parametrize(("name", "params"), ACCEPTED)
def test_what_the_schema_accepts_the_catalog_builds_alike(
    name: str, params: dict[str, Any]
) -> None:
    # Execute
    spec = schema(name, params)
    built = make_strategy(name, spec.params.model_dump())

    # Assert
    assert built == make_strategy(name, params)
    assert spec.params.min_updates == built.min_updates


REFUSED = [
    ("fedavg", {"mu": 0.1}),
    ("fedavg", {"max_examples": 0}),
    ("fedavg", {"max_examples": 100_000_001}),
    ("fedavg", {"max_examples": 2.0}),
    ("fedavg", {"max_examples": True}),
    ("fedprox", {"mu": -1.0}),
    ("fedprox", {"mu": "big"}),
    ("fedprox", {"mu": 2e9}),
    ("fedavgm", {"momentum": 1.0}),
    ("fedavgm", {"lr": 0}),
    ("fedavgm", {"lr": 1e9}),
    ("fedadam", {"tau": 0}),
    ("fedadam", {"beta1": -0.1}),
    ("fedadam", {"beta2": 1}),
    ("fedadam", {"eta": True}),
    ("fedadam", {"gamma": 0.1}),
    ("fedyogi", {"mu": 0.1}),
    ("fedadagrad", {"eta": -0.1}),
    ("median", {"beta": 0.1}),
    ("trimmed_mean", {"beta": 0.5}),
    ("trimmed_mean", {"beta": -0.1}),
    ("krum", {"f": -1}),
    ("krum", {"f": 2.0}),
    ("krum", {"m": 2}),
    ("multi_krum", {"m": 0}),
    ("multi_krum", {"m": 1.5}),
]


@pytest.mark.parametrize(("name", "params"), REFUSED)
def test_what_one_refuses_the_other_refuses(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        schema(name, params)
    with pytest.raises(ValueError, match=name.split("_")[0] if name != "multi_krum" else "krum"):
        make_strategy(name, params)


@pytest.mark.parametrize(
    ("body", "where", "kind"),
    [
        ({"name": "fedsgd"}, (), "union_tag_invalid"),
        ({"name": "fedadam", "params": {"etaa": 0.1}}, ("fedadam", "params", "etaa"), None),
        ({"name": "krum", "params": {"f": 2}, "extra": 1}, ("krum", "extra"), None),
        ({"params": {}}, (), "union_tag_not_found"),
    ],
    ids=["unknown name", "unknown param", "unknown field", "no name"],
)
def test_refusals_say_where(body: dict[str, Any], where: tuple[str, ...], kind: str | None) -> None:
    # Execute
    with pytest.raises(ValidationError) as caught:
        STRATEGY.validate_python(body)

    # Assert: inside a body the location starts with the strategy field itself.
    (error,) = caught.value.errors()
    assert error["loc"] == where
    assert error["type"] == (kind or "extra_forbidden")
    if kind == "union_tag_invalid":
        assert "'fedadam'" in error["msg"] and "'multi_krum'" in error["msg"]


@pytest.mark.parametrize(
    ("f", "m", "needed"), [(0, None, 3), (1, None, 5), (2, None, 7), (1, 5, 6), (2, 6, 8)]
)
def test_multi_krum_needs_enough_for_krum_and_for_m(f: int, m: int | None, needed: int) -> None:
    params = v1.MultiKrumParams(f=f, m=m)
    assert params.min_updates == needed == make_strategy("multi_krum", {"f": f, "m": m}).min_updates


def test_a_task_is_fedavg_unless_it_says_otherwise() -> None:
    # Execute: a spec as an older producer wrote it, without a strategy.
    spec = v1.TaskSpec.model_validate({"task_name": "t"})

    # Assert
    assert spec.strategy == v1.FedAvgStrategy()
    assert spec.strategy.params.max_examples == 100_000_000


@pytest.mark.parametrize(
    ("strategy", "min_devices", "needed"),
    [
        ({"name": "krum"}, 6, 7),
        ({"name": "krum", "params": {"f": 1}}, 4, 5),
        ({"name": "multi_krum", "params": {"f": 1, "m": 5}}, 5, 6),
    ],
)
def test_a_robust_strategy_needs_enough_min_devices(
    strategy: dict[str, Any], min_devices: int, needed: int
) -> None:
    # Prepare
    fields = {"task_name": "t", "devices_per_round": 10, "strategy": strategy}

    # Execute / Assert: one below is refused naming the need, exactly enough is accepted.
    with pytest.raises(ValidationError, match=f"below the {needed} updates a round"):
        v1.TaskSpec.model_validate(fields | {"min_devices": min_devices})
    accepted = v1.TaskSpec.model_validate(fields | {"min_devices": needed})
    assert accepted.strategy.params.min_updates == needed


def test_median_and_trimmed_mean_accept_any_min_devices() -> None:
    for name in ("median", "trimmed_mean"):
        spec = v1.TaskSpec(task_name="t", min_devices=1, strategy={"name": name})  # type: ignore[arg-type]
        assert spec.strategy.params.min_updates == 1


def test_round_and_train_messages_default_to_fedavg_and_no_proximal_term() -> None:
    # Prepare: the messages as producers before strategies wrote them.
    old = {
        type(m): m.model_dump(exclude={"strategy", "proximal_mu"})
        for m in EXAMPLES
        if isinstance(m, v1.RoundOpened | v1.TrainRequested)
    }

    # Execute
    opened = v1.RoundOpened.model_validate(old[v1.RoundOpened])
    request = v1.TrainRequested.model_validate(old[v1.TrainRequested])

    # Assert
    assert opened.strategy == v1.FedAvgStrategy()
    assert request.proximal_mu == 0.0


def test_a_strategy_travels_through_the_codec_unchanged() -> None:
    # Prepare
    spec = v1.TaskSpec(
        task_name="t",
        devices_per_round=8,
        min_devices=7,
        strategy=v1.MultiKrumStrategy(params=v1.MultiKrumParams(f=2, m=3)),
    )
    message = v1.TaskCreateRequested(
        producer="gateway", task_id=EXAMPLES[0].message_id, spec=spec, issued_by="op"
    )

    # Execute
    decoded = codec.decode(codec.encode(message))

    # Assert
    assert isinstance(decoded, v1.TaskCreateRequested)
    assert decoded.spec.strategy == v1.MultiKrumStrategy(params=v1.MultiKrumParams(f=2, m=3))


@pytest.mark.parametrize(("mu", "learning_rate", "refused"), [(10, 0.3, True), (6, 0.3, False)])
def test_fedprox_whose_local_training_would_diverge_is_refused(
    mu: float, learning_rate: float, refused: bool
) -> None:
    # Prepare: SGD on (mu/2)·‖w - w0‖² alone diverges once mu · learning_rate >= 2.
    body = {
        "task_name": "prox",
        "learning_rate": learning_rate,
        "strategy": {"name": "fedprox", "params": {"mu": mu}},
    }

    # Execute / Assert
    if refused:
        with pytest.raises(ValidationError, match="mu \\* learning_rate must stay below 2"):
            v1.TaskSpec.model_validate(body)
    else:
        assert v1.TaskSpec.model_validate(body).strategy.name == "fedprox"
