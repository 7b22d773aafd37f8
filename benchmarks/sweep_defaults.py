"""Sweep local-training settings with in-process FedAvg; prints JSON (docs/benchmarks.md).

Runs the same pure functions the services run (partitioning, local SGD, FedAvg, central
evaluation) without Kafka, to choose demo defaults quickly:

    .venv/bin/python benchmarks/sweep_defaults.py
"""

from __future__ import annotations

import json

import numpy as np
import torch

from fedcommon import datasets, models
from fedcommon.messages.v1 import ModelArchitecture, Partitioning
from feddevice.torch_training import train_local
from fedengine_aggregator.core.fedavg import WeightedUpdate, aggregate
from fedengine_coordinator.core.evaluation import apply_delta, evaluate

GRID = [
    (0.1, 2, 16),
    (0.3, 2, 16),
    (0.1, 5, 16),
    (0.3, 5, 16),
    (0.5, 5, 16),
    (0.1, 5, 8),
    (0.2, 5, 8),
]


def run(
    lr: float,
    epochs: int,
    batch: int,
    alpha: float | None,
    *,
    clients: int = 20,
    per_round: int = 10,
    rounds: int = 10,
) -> float:
    data = datasets.load_dataset("digits")
    scheme = Partitioning.IID if alpha is None else Partitioning.DIRICHLET
    parts = datasets.partition(
        data.y_train, num_clients=clients, scheme=scheme, alpha=alpha or 0.5, seed=0
    )
    global_model = models.build_model(
        ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=data.num_classes, seed=0
    )
    rng = np.random.default_rng(0)
    for round_number in range(rounds):
        updates = []
        for client in rng.choice(clients, per_round, replace=False):
            local = models.build_model(
                ModelArchitecture.MLP,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                seed=0,
            )
            models.set_arrays(local, models.get_arrays(global_model))
            result = train_local(
                local,
                data.x_train[parts[client]],
                data.y_train[parts[client]],
                epochs=epochs,
                batch_size=batch,
                learning_rate=lr,
                seed=int(round_number * 100 + client),
            )
            updates.append(WeightedUpdate(result.num_examples, result.delta))
        models.set_arrays(
            global_model, apply_delta(models.get_arrays(global_model), aggregate(updates))
        )
    return evaluate(global_model, "digits").accuracy


def main() -> None:
    torch.set_num_threads(1)
    rows = [
        {
            "lr": lr,
            "local_epochs": epochs,
            "batch_size": batch,
            "accuracy_iid": round(run(lr, epochs, batch, None), 4),
            "accuracy_dirichlet_0_5": round(run(lr, epochs, batch, 0.5), 4),
        }
        for lr, epochs, batch in GRID
    ]
    print(json.dumps({"benchmark": "sweep_defaults", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
