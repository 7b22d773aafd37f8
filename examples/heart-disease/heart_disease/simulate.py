"""FedAvg over the four hospitals in one process, without the platform: what a task on
``fedengine up`` does, for choosing its settings quickly.

    python -m heart_disease.simulate --rounds 10 --local-epochs 5 --learning-rate 0.05 \
        --batch-size 16 --seed 0

(the defaults are :data:`heart_disease.hyperparameters.CHOSEN`).

Each round every hospital trains the global model on its own train split (the same
:class:`~heart_disease.client.HeartClient`, with the config a device receives: the task's
learning rate, local epochs and batch size, and the device's seed for the round), the global
model moves by the example-weighted mean of their updates (FedAvg), and every hospital then
evaluates the new model on its own test split; the round's accuracy and loss are the
example-weighted means of theirs (federated evaluation). One JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence

import numpy as np

from feddevice.answer import device_seed
from feddevice.torch_client import parameters_of
from heart_disease.client import HeartClient
from heart_disease.data import HOSPITALS, hospital_split, load
from heart_disease.hyperparameters import CHOSEN, Hyperparameters
from heart_disease.model import initial_model

Named = dict[str, np.ndarray]


def device_id(hospital: str) -> str:
    """The device ids the README and the integration test give the four hospitals."""
    return f"heart-{hospital}"


def fedavg(global_model: Mapping[str, np.ndarray], updates: Sequence[tuple[int, Named]]) -> Named:
    """The global model plus the example-weighted mean of the devices' deltas (float64 sums,
    float32 result), as the aggregator and coordinator compute it with FedAvg."""
    total = sum(n for n, _ in updates)
    new = {}
    for name, current in global_model.items():
        delta = sum(
            n * (np.asarray(p[name], np.float32) - current).astype(np.float64) for n, p in updates
        )
        new[name] = (current.astype(np.float64) + delta / total).astype(np.float32)
    return new


def run(settings: Hyperparameters, clients: Mapping[str, HeartClient]) -> list[dict[str, float]]:
    """Run the task; return (and print) one dict per round: round, accuracy, loss (federated
    evaluation) and the example-weighted train_loss / train_accuracy of the round's fits."""
    model = parameters_of(initial_model(settings.seed))
    history = []
    for round_number in range(1, settings.rounds + 1):
        fits = []
        for hospital, client in clients.items():
            config = {
                "round_number": round_number,
                "learning_rate": settings.learning_rate,
                "local_epochs": settings.local_epochs,
                "batch_size": settings.batch_size,
                "seed": device_seed(settings.seed, round_number, device_id(hospital)),
            }
            fits.append(client.fit(model, config))
        model = fedavg(model, [(fit.num_examples, dict(fit.parameters)) for fit in fits])
        evaluations = [client.evaluate(model, {}) for client in clients.values()]
        n_fit = sum(fit.num_examples for fit in fits)
        n_eval = sum(e.num_examples for e in evaluations)
        row = {
            "round": round_number,
            "accuracy": sum(e.metrics["accuracy"] * e.num_examples for e in evaluations) / n_eval,
            "loss": sum(e.loss * e.num_examples for e in evaluations) / n_eval,
            "train_loss": sum(f.metrics["train_loss"] * f.num_examples for f in fits) / n_fit,
            "train_accuracy": sum(f.metrics["train_accuracy"] * f.num_examples for f in fits)
            / n_fit,
        }
        history.append(row)
    return history


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="heart_disease.simulate", description=__doc__)
    parser.add_argument("--rounds", type=int, default=CHOSEN.rounds)
    parser.add_argument("--local-epochs", type=int, default=CHOSEN.local_epochs)
    parser.add_argument("--learning-rate", type=float, default=CHOSEN.learning_rate)
    parser.add_argument("--batch-size", type=int, default=CHOSEN.batch_size)
    parser.add_argument(
        "--seed", type=int, default=CHOSEN.seed, help="the initial model's and the task's"
    )
    args = parser.parse_args(argv)
    settings = Hyperparameters(
        args.rounds, args.local_epochs, args.learning_rate, args.batch_size, args.seed
    )
    table = load()
    clients = {
        name: HeartClient(hospital_split(table, name), batch_size=args.batch_size)
        for name in HOSPITALS
    }
    started = time.perf_counter()
    for row in run(settings, clients):
        print(json.dumps(row))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
