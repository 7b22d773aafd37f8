"""The round's strategy, as round.opened names it, picks the aggregator's rule: every strategy
the schema accepts starts an accumulator, and the rule is the named one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter

from fedcommon import signing
from fedcommon.messages.v1 import STRATEGY_TYPES, Participant, RoundOpened, StrategySpec
from fedengine_aggregator.core.exchange import start_accumulator
from fedengine_aggregator.core.robust import Buffer
from fedengine_aggregator.core.sum_rules import WeightedSum
from fedengine_aggregator.handlers import strategy_for

SHAPES = [[2, 2], [2]]
SUMS = {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}


def _opened(strategy: object) -> RoundOpened:
    keys = [signing.generate_private_key() for _ in range(9)]
    return RoundOpened(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        round_number=1,
        attempt=0,
        model_version=0,
        participants=[
            Participant(device_id=f"d{i}", public_key=signing.public_key_bytes(k))
            for i, k in enumerate(keys)
        ],
        min_updates=7,
        deadline=datetime(2030, 1, 1, tzinfo=UTC),
        param_shapes=SHAPES,
        max_update_norm=10.0,
        strategy=strategy,
    )


@pytest.mark.parametrize("kind", STRATEGY_TYPES, ids=lambda t: t.model_fields["name"].default)
def test_every_strategy_with_its_defaults_starts_its_own_rule(kind: type) -> None:
    # Prepare
    opened = _opened(kind())

    # Execute
    name, params = strategy_for(opened)
    accumulator = start_accumulator(name, params, SHAPES)

    # Assert: sums keep a running sum, the robust ones buffer.
    assert name == kind.model_fields["name"].default
    expected = WeightedSum if name in SUMS else Buffer
    assert isinstance(accumulator, expected), type(accumulator)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "trimmed_mean", "params": {"beta": 0.3}},
        {"name": "krum", "params": {"f": 1}},
        {"name": "multi_krum", "params": {"f": 1, "m": 3}},
        {"name": "fedavg", "params": {"max_examples": 50}},
        {"name": "fedadam", "params": {"eta": 0.05, "max_examples": 10}},
    ],
)
def test_parameters_travel_to_the_rule(body: dict[str, object]) -> None:
    # Prepare: as a task body names it, decoded by the one schema.
    spec = TypeAdapter(StrategySpec).validate_python(body)

    # Execute
    name, params = strategy_for(_opened(spec))

    # Assert: what the task asked for, and nothing the rule does not take.
    assert name == body["name"]
    asked: dict[str, object] = body["params"]  # type: ignore[assignment]
    assert {key: params[key] for key in asked} == asked
    start_accumulator(name, params, SHAPES)


def test_a_round_from_before_strategies_aggregates_with_fedavg() -> None:
    # Prepare: a round.opened as an older coordinator wrote it (no strategy field).
    document = _opened(STRATEGY_TYPES[0]()).model_dump()
    del document["strategy"]

    # Execute
    name, params = strategy_for(RoundOpened.model_validate(document))

    # Assert
    assert name == "fedavg"
    assert isinstance(start_accumulator(name, params, SHAPES), WeightedSum)
