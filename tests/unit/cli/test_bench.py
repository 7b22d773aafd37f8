"""``fedengine bench aggregate``: one round's aggregation measured, written as a small JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedengine.cli import app


def test_bench_aggregate_writes_the_round_figures(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "aggregate.json"

    # Execute
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "aggregate",
            "--participants",
            "6",
            "--params",
            "50",
            "--strategy",
            "median",
            "--json",
            str(out),
        ],
    )

    # Assert: exactly the keys, for the round asked for, printed and written alike.
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert list(document) == ["participants", "params", "strategy", "seconds", "peak_bytes"]
    assert (document["participants"], document["params"], document["strategy"]) == (
        6,
        50,
        "median",
    )
    assert isinstance(document["seconds"], float) and document["seconds"] > 0
    # The median buffers all 6 updates of 50 float32 values, so it holds at least their bytes.
    assert isinstance(document["peak_bytes"], int) and document["peak_bytes"] >= 6 * 50 * 4
    assert json.loads(result.output) == document


def test_bench_aggregate_names_an_unknown_strategy_and_fails() -> None:
    # Execute
    result = CliRunner().invoke(
        app, ["bench", "aggregate", "--participants", "2", "--params", "5", "--strategy", "nope"]
    )

    # Assert
    assert result.exit_code == 1
    assert "unknown strategy 'nope'" in result.output


def test_bench_secagg_runs_a_tiny_round_exactly(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "secagg.json"

    # Execute: 8 devices of 40 values, a quarter leaving after their masked input.
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "secagg",
            "--clients",
            "8",
            "--dim",
            "40",
            "--dropout",
            "0.25",
            "--bits",
            "12",
            "--json",
            str(out),
        ],
    )

    # Assert: exactly the keys, an exact sum, and figures that make sense.
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert list(document) == [
        "clients",
        "dim",
        "bits",
        "dropout",
        "neighbors",
        "threshold",
        "exact",
        "client_s_mean",
        "server_s",
        "plain_sum_s",
        "bytes_up_per_client",
        "expansion",
        "server_peak_bytes",
    ]
    assert document["exact"] is True
    assert (document["clients"], document["dim"], document["bits"]) == (8, 40, 12)
    assert (document["neighbors"], document["threshold"]) == (7, 4)
    # 41 elements of 12 + 3 bits = 77 bytes of masked input alone.
    assert document["bytes_up_per_client"] > 77 and document["expansion"] > 1
    assert document["server_peak_bytes"] > 0
    assert json.loads(result.output) == document
