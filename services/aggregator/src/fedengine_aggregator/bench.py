"""One round's aggregation, measured: time and peak memory, with no broker and no database.

``bench_aggregate`` generates updates one at a time (never all at once) and feeds them to the
strategy's accumulator under tracemalloc, so ``peak_bytes`` is what the aggregation holds:
flat in the number of participants for the sum rules, linear for the robust ones that buffer.
``python -m fedengine_aggregator.bench --participants N --params M --strategy S [--json PATH]``
prints (or writes) the figures; ``fedengine bench aggregate`` will call it.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedengine_aggregator.core.catalog import Params, make_strategy


@dataclass(frozen=True)
class BenchResult:
    participants: int
    params: int
    strategy: str
    seconds: float
    peak_bytes: int


def bench_aggregate(
    strategy: str,
    *,
    participants: int,
    params: int,
    rng: np.random.Generator,
    strategy_params: Params | None = None,
) -> BenchResult:
    """Aggregate ``participants`` random float32 updates of ``params`` values with ``strategy``."""
    if participants < 1 or params < 1:
        raise ValueError("bench_aggregate: participants and params must be >= 1")
    rule = make_strategy(strategy, strategy_params).rule
    already = tracemalloc.is_tracing()
    if already:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    try:
        start = time.perf_counter()
        accumulator = rule.start([[params]])
        for index in range(participants):
            update = rng.standard_normal(params, dtype=np.float32)
            accumulator.add([update], 1 + index % 100)
            del update
        accumulator.result()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not already:
            tracemalloc.stop()
    return BenchResult(participants, params, strategy, seconds, max(0, peak - base))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = bench_aggregate(
        args.strategy,
        participants=args.participants,
        params=args.params,
        rng=np.random.default_rng(args.seed),
    )
    text = json.dumps(asdict(result))
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
