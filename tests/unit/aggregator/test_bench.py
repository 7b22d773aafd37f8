"""The aggregation benchmark: sum rules hold flat memory, robust rules buffer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedengine_aggregator.bench import bench_aggregate, main


def peak(strategy: str, participants: int) -> int:
    result = bench_aggregate(
        strategy, participants=participants, params=20_000, rng=np.random.default_rng(0)
    )
    assert result.participants == participants and result.strategy == strategy
    assert result.seconds >= 0
    return result.peak_bytes


def test_fedavg_memory_does_not_grow_with_participants() -> None:
    small, large = peak("fedavg", 10), peak("fedavg", 1000)
    assert small > 0
    assert large <= 2 * small


def test_robust_rules_buffer_by_necessity() -> None:
    updates_bytes = 200 * 20_000 * 4
    assert peak("median", 200) >= updates_bytes > 2 * peak("median", 10)


def test_main_writes_the_json_the_issue_names(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(["--participants", "12", "--params", "100", "--strategy", "krum", "--json", str(out)])

    written = json.loads(out.read_text())
    assert set(written) == {"participants", "params", "strategy", "seconds", "peak_bytes"}
    assert written["participants"] == 12 and written["strategy"] == "krum"
