"""Federated (simulated FedAvg) against centralised accuracy, seed by seed, at the chosen
settings (or others given):

    python -m heart_disease.compare --seeds 0 1 2 3 4

One JSON line per seed (federated and centralised accuracy on the same 148 test patients, and
the gap in points), then one line with the largest gap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

from heart_disease import centralised, simulate
from heart_disease.client import HeartClient
from heart_disease.data import HOSPITALS, hospital_split, load
from heart_disease.hyperparameters import CHOSEN, Hyperparameters


def compare(settings: Hyperparameters) -> dict[str, float | int]:
    table = load()
    clients = {
        name: HeartClient(hospital_split(table, name), batch_size=settings.batch_size)
        for name in HOSPITALS
    }
    federated = simulate.run(settings, clients)[-1]["accuracy"]
    baseline = centralised.train(
        epochs=settings.centralised_epochs,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )["accuracy"]
    return {
        "seed": settings.seed,
        "federated": federated,
        "centralised": baseline,
        "gap_points": round(100 * (federated - baseline), 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="heart_disease.compare", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=CHOSEN.rounds)
    parser.add_argument("--local-epochs", type=int, default=CHOSEN.local_epochs)
    parser.add_argument("--learning-rate", type=float, default=CHOSEN.learning_rate)
    parser.add_argument("--batch-size", type=int, default=CHOSEN.batch_size)
    args = parser.parse_args(argv)
    base = Hyperparameters(args.rounds, args.local_epochs, args.learning_rate, args.batch_size)
    gaps = []
    for seed in args.seeds:
        row = compare(dataclasses.replace(base, seed=seed))
        gaps.append(abs(float(row["gap_points"])))
        print(json.dumps(row), flush=True)
    print(json.dumps({"largest_gap_points": max(gaps)}))


if __name__ == "__main__":
    main()
