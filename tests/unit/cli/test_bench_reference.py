"""``fedengine bench reference``: the plain sequential FedAvg loop the simulator is measured
against (no broker, no database), and its pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcommon import datasets
from fedcommon.messages.v1 import ModelArchitecture, Partitioning
from fedengine.bench_reference import (
    REFERENCE_KEYS,
    ReferenceOptions,
    fedavg,
    parse_partition,
    run_rounds,
)
from fedengine.cli import app

# Five devices, three a round, two rounds on digits: a second or so of training.
SMALL = ReferenceOptions(
    devices=5,
    per_round=3,
    rounds=2,
    hidden=32,
    epochs=2,
    batch_size=32,
    learning_rate=0.1,
    standardize=True,
    seed=7,
)


def _digits() -> datasets.Dataset:
    return datasets.standardized(datasets.load_dataset("digits"))


def test_bench_reference_prints_and_writes_every_figure(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "reference.json"

    # Execute
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "reference",
            "--devices",
            "5",
            "--per-round",
            "3",
            "--rounds",
            "2",
            "--hidden",
            "32",
            "--standardize",
            "--partition",
            "dirichlet:0.5",
            "--lr",
            "0.1",
            "--seed",
            "3",
            "--json",
            str(out),
        ],
    )

    # Assert: the keys, one accuracy a round, figures that make sense, printed alike.
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert list(document) == list(REFERENCE_KEYS)
    assert (document["devices"], document["per_round"], document["rounds"]) == (5, 3, 2)
    assert len(document["accuracy"]) == 2
    assert document["final_accuracy"] == document["accuracy"][-1]
    assert all(0.0 <= a <= 1.0 for a in document["accuracy"])
    assert 0 < document["task_s"] <= document["wall_s"]
    assert document["s_per_round"] == pytest.approx(document["task_s"] / 2)
    assert document["s_per_round_after_first"] > 0
    assert document["updates_per_s"] == pytest.approx(6 / document["task_s"])
    assert document["peak_rss_mb"] > 0 and document["cpu_s"] > 0
    assert document["config"]["partitioning"] == "dirichlet"
    assert document["config"]["alpha"] == 0.5
    assert document["config"]["hidden"] == 32 and document["config"]["standardize"] is True
    assert document["machine"]["cpus"] >= 1
    assert json.loads(result.output) == document


def test_bench_reference_refuses_a_bad_partition_and_too_many_a_round() -> None:
    # Execute
    bad_partition = CliRunner().invoke(
        app,
        [
            *("bench", "reference", "--devices", "5", "--per-round", "3", "--rounds", "1"),
            *("--partition", "shards"),
        ],
    )
    too_many = CliRunner().invoke(
        app, ["bench", "reference", "--devices", "3", "--per-round", "4", "--rounds", "1"]
    )

    # Assert
    assert bad_partition.exit_code == 1
    assert "not iid or dirichlet:ALPHA" in bad_partition.output
    assert too_many.exit_code == 1
    assert "4 devices a round of 3 devices" in too_many.output


def test_the_loop_learns_above_chance_and_repeats_with_its_seed() -> None:
    # Prepare
    data = _digits()

    # Execute
    first = run_rounds(data, SMALL, rng=np.random.default_rng(SMALL.seed))
    again = run_rounds(data, SMALL, rng=np.random.default_rng(SMALL.seed))

    # Assert: ten classes, so chance is about 0.1; the same seed gives the same run.
    assert len(first.accuracy) == len(first.round_s) == 2
    assert first.updates == 6
    assert first.accuracy[-1] > 0.5
    assert first.accuracy == again.accuracy


def test_another_seed_picks_other_devices_and_ends_elsewhere() -> None:
    # Prepare
    data = _digits()
    other = ReferenceOptions(**{**SMALL.__dict__, "seed": 8})

    # Execute
    first = run_rounds(data, SMALL, rng=np.random.default_rng(SMALL.seed))
    second = run_rounds(data, other, rng=np.random.default_rng(other.seed))

    # Assert
    assert first.accuracy != second.accuracy


def test_the_loop_refuses_more_devices_a_round_than_devices() -> None:
    options = ReferenceOptions(devices=2, per_round=3, rounds=1, model=ModelArchitecture.MLP)

    with pytest.raises(ValueError, match="3 devices a round of 2 devices"):
        run_rounds(_digits(), options, rng=np.random.default_rng(0))


def test_fedavg_weights_each_delta_by_its_examples() -> None:
    # Prepare
    deltas = [
        [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)],
        [np.array([4.0, -1.0], np.float32), np.array([[3.0]], np.float32)],
    ]

    # Execute
    averaged = fedavg(deltas, [1, 2])

    # Assert: (1*d1 + 2*d2) / 3, float32, the inputs unchanged.
    np.testing.assert_allclose(averaged[0], [3.0, 0.0])
    np.testing.assert_allclose(averaged[1], [[2.0]])
    assert all(a.dtype == np.float32 for a in averaged)
    np.testing.assert_array_equal(deltas[0][0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no deltas"):
        fedavg([], [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("iid", (Partitioning.IID, 0.5)), ("dirichlet:0.3", (Partitioning.DIRICHLET, 0.3))],
)
def test_parse_partition_reads_iid_and_dirichlet_alpha(
    text: str, expected: tuple[Partitioning, float]
) -> None:
    assert parse_partition(text) == expected


@pytest.mark.parametrize("text", ["shards", "dirichlet", "dirichlet:0", "dirichlet:x", "iid:1"])
def test_parse_partition_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="not iid or dirichlet:ALPHA"):
        parse_partition(text)


def test_more_devices_than_two_examples_each_needs_a_smaller_minimum() -> None:
    # Digits' 1,437 training examples: 1,000 devices (workload B) hold 1 or 2 each.
    refused = CliRunner().invoke(
        app, ["bench", "reference", "--devices", "1000", "--per-round", "5", "--rounds", "1"]
    )
    options = ReferenceOptions(devices=1000, per_round=5, rounds=1, min_size=1)

    run = run_rounds(_digits(), options, rng=np.random.default_rng(0))

    assert refused.exit_code == 1
    assert "1000 devices cannot hold 2 each" in refused.output
    assert run.updates == 5 and len(run.accuracy) == 1
