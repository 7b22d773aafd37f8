"""``fedengine demo --secure-aggregation [--secagg-dropout F] [--secagg-bits B]``: the task body
the demo posts is one the gateway accepts, the fleet's simulator gets its dropout, and bad
combinations are refused before any stack starts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcommon.messages.v1 import SecureAggregationSpec, TaskSpec
from fedengine import launcher
from fedengine.cli import app
from fedengine.demo import (
    DemoOptions,
    check_strategy,
    min_devices,
    privacy_section,
    secure_aggregation_section,
    secure_aggregation_summary,
    task_body,
)
from fedengine_gateway.schemas import TaskCreate

SECURE = DemoOptions(secure_aggregation=True)


@pytest.mark.parametrize(
    ("options", "section"),
    [
        pytest.param(DemoOptions(), None, id="off"),
        pytest.param(SECURE, {}, id="on-every-default"),
        pytest.param(replace(SECURE, secagg_dropout=0.2), {}, id="dropout-is-the-fleets"),
        pytest.param(replace(SECURE, secagg_bits=12), {"bits": 12}, id="bits-12"),
        pytest.param(
            replace(SECURE, secagg_bits=8),
            {"bits": 8, "weight_cap": 255},
            id="bits-8-lowers-the-weight-cap-to-fit",
        ),
        pytest.param(
            replace(SECURE, secagg_stage_timeout=5.0), {"stage_timeout_s": 5.0}, id="timeout"
        ),
    ],
)
def test_the_section_the_demo_sends(options: DemoOptions, section: dict[str, Any] | None) -> None:
    # Execute
    got = secure_aggregation_section(options)

    # Assert
    assert got == section
    if got is not None:
        SecureAggregationSpec.model_validate(got)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        pytest.param(
            DemoOptions(secagg_dropout=0.2),
            "--secagg-dropout needs --secure-aggregation",
            id="dropout-without-secure",
        ),
        pytest.param(
            DemoOptions(secagg_dropout=0.0),
            "--secagg-dropout needs --secure-aggregation",
            id="even-zero-dropout-without-secure",
        ),
        pytest.param(
            DemoOptions(secagg_bits=12),
            "--secagg-bits needs --secure-aggregation",
            id="bits-without-secure",
        ),
        pytest.param(
            DemoOptions(secagg_stage_timeout=5.0),
            "--secagg-stage-timeout needs --secure-aggregation",
            id="timeout-without-secure",
        ),
        pytest.param(replace(SECURE, secagg_stage_timeout=0.0), "stage_timeout_s", id="timeout-0"),
        pytest.param(replace(SECURE, secagg_dropout=1.0), r"\[0, 1\)", id="dropout-1"),
        pytest.param(replace(SECURE, secagg_dropout=-0.1), r"\[0, 1\)", id="dropout-negative"),
        pytest.param(replace(SECURE, secagg_bits=1), "bits", id="bits-1"),
        pytest.param(replace(SECURE, secagg_bits=40), "bits", id="bits-40"),
        pytest.param(
            replace(SECURE, strategy="median"),
            "cannot be used with --strategy median",
            id="robust-strategy",
        ),
        pytest.param(
            replace(SECURE, devices=5, per_round=2),
            "--per-round >= 3",
            id="two-a-round",
        ),
    ],
)
def test_a_bad_combination_is_refused_naming_the_flag(options: DemoOptions, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        secure_aggregation_section(options)


@pytest.mark.parametrize(
    ("options", "expected", "noted"),
    [
        pytest.param(DemoOptions(per_round=4), 2, False, id="plain-half-the-round"),
        pytest.param(replace(SECURE, per_round=4), 3, True, id="secure-raised-to-3"),
        pytest.param(replace(SECURE, per_round=3), 3, True, id="secure-raised-from-1"),
        pytest.param(replace(SECURE, per_round=10), 5, False, id="secure-half-already-enough"),
    ],
)
def test_min_devices(options: DemoOptions, expected: int, noted: bool) -> None:
    # Execute
    chosen, note = min_devices(options, check_strategy(options.strategy, {}))

    # Assert
    assert chosen == expected
    assert (note is not None) == noted
    if note is not None:
        assert f"raised from {options.per_round // 2 or 1} to 3" in note


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(replace(SECURE, per_round=4, devices=6), id="secure"),
        pytest.param(replace(SECURE, secagg_bits=8, per_round=3, devices=3), id="secure-8-bits"),
        pytest.param(replace(SECURE, dp_epsilon=4.0, per_round=5), id="secure-and-dp"),
        pytest.param(DemoOptions(), id="plain"),
    ],
)
def test_the_task_body_is_one_the_gateway_accepts(options: DemoOptions) -> None:
    # Execute
    body = task_body(
        options,
        fleet_name="demo1",
        strategy=check_strategy(options.strategy, options.strategy_params),
        privacy=privacy_section(options),
        secure=secure_aggregation_section(options),
    )

    # Assert
    spec: TaskSpec = TaskCreate.model_validate(body).to_spec()
    if options.secure_aggregation:
        assert "secure_aggregation" in body
        assert spec.secure_aggregation == SecureAggregationSpec.model_validate(
            secure_aggregation_section(options)
        )
        assert spec.min_devices >= 3
    else:
        assert "secure_aggregation" not in body and spec.secure_aggregation is None
    assert (spec.privacy is not None) == (options.dp_epsilon is not None)


@pytest.mark.parametrize(("dropout", "text"), [(0.0, "0.0"), (0.25, "0.25")])
def test_the_fleets_simulator_gets_its_dropout(dropout: float, text: str) -> None:
    env = launcher.Fleet(name="lab", devices=5, secagg_dropout=dropout).env("token")

    assert env["SIMULATOR_SECAGG_DROPOUT"] == text


def test_the_summary_says_secure_aggregation_was_on() -> None:
    line = secure_aggregation_summary(
        {"section": SecureAggregationSpec().model_dump(mode="json"), "dropout": 0.1}
    )

    assert line.startswith("secure aggregation: on (SecAgg+, 16 bits")
    assert "dropout 0.1" in line


@pytest.mark.parametrize(
    "flags",
    [
        ["--secagg-dropout", "0.2"],
        ["--secagg-bits", "12"],
        ["--secure-aggregation", "--secagg-dropout", "1"],
        ["--secure-aggregation", "--secagg-bits", "64"],
        ["--secure-aggregation", "--strategy", "krum", "--per-round", "7"],
        ["--secure-aggregation", "--per-round", "2"],
    ],
)
def test_bad_secure_aggregation_options_are_refused_before_anything_starts(
    flags: list[str],
) -> None:
    # Execute
    result = CliRunner().invoke(app, ["demo", *flags])

    # Assert: a usage error (exit code 2), not a started stack.
    assert result.exit_code == 2, result.output
