"""``fedengine demo --strategy / --strategy-param``: the CLI offers exactly the schema's
strategies, reads parameters as the gateway will, and refuses bad ones before any stack starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedcommon.messages.v1 import STRATEGY_TYPES
from fedengine.cli import app
from fedengine.demo import StrategyName, check_strategy, strategy_param


def test_the_cli_offers_exactly_the_schema_s_strategies() -> None:
    assert [s.value for s in StrategyName] == [
        kind.model_fields["name"].default for kind in STRATEGY_TYPES
    ]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("eta=0.03", ("eta", 0.03)),
        ("f=2", ("f", 2)),
        ("m=null", ("m", None)),
        ("note=text", ("note", "text")),
    ],
)
def test_a_parameter_is_read_as_json_where_it_is_json(
    item: str, expected: tuple[str, object]
) -> None:
    assert strategy_param(item) == expected


def test_parameters_reach_the_strategy_with_defaults_for_the_rest() -> None:
    # Execute
    spec = check_strategy("fedadam", {"eta": 0.03})

    # Assert
    assert spec.name == "fedadam"
    assert spec.params.eta == 0.03  # type: ignore[union-attr]
    assert spec.params.beta1 == 0.9  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("fedadam", {"lr": 0.1}, "lr"),
        ("krum", {"f": 2.5}, "f"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
    ],
)
def test_a_bad_parameter_is_named(name: str, params: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_strategy(name, params)


@pytest.mark.parametrize(
    "flags",
    [
        ["--strategy", "fedsgd"],
        ["--strategy", "fedadam", "--strategy-param", "lr=0.1"],
        ["--strategy", "krum", "--strategy-param", "f"],
        ["--strategy-param", "max_examples=0"],
    ],
)
def test_bad_strategy_options_are_refused_before_anything_starts(flags: list[str]) -> None:
    # Execute
    result = CliRunner().invoke(app, ["demo", *flags])

    # Assert: a usage error (exit code 2), not a started stack.
    assert result.exit_code == 2, result.output


def test_a_strategy_needing_more_than_a_round_holds_is_refused_before_anything_starts() -> None:
    # Execute: Krum with f = 2 needs 7 updates a round; the demo asks for 5 devices a round.
    result = CliRunner().invoke(app, ["demo", "--strategy", "krum", "--per-round", "5"])

    # Assert
    assert result.exit_code == 2, result.output
    assert "needs at least 7" in result.output
