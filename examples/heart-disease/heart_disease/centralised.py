"""The centralised baseline: the same model, trained with the same code and optimiser on all
four hospitals' train splits pooled, tested on all four test splits (the very rows federated
evaluation uses).

    python -m heart_disease.centralised --epochs 50 --learning-rate 0.05 --batch-size 16 --seed 0

It trains for ``--epochs`` passes over the pooled data: give it the task's rounds times its
local epochs, so that each patient is seen as often as in the federated run (the defaults are
:data:`heart_disease.hyperparameters.CHOSEN`'s). Prints one JSON object: accuracy, loss,
n_train, n_test, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from feddevice.answer import device_seed
from feddevice.torch_client import parameters_of
from heart_disease.client import HeartClient
from heart_disease.data import Split, pooled
from heart_disease.hyperparameters import CHOSEN
from heart_disease.model import initial_model


def train(
    *, epochs: int, learning_rate: float, batch_size: int, seed: int
) -> dict[str, float | int]:
    x_train, y_train, x_test, y_test = pooled()
    client = HeartClient(Split(x_train, y_train, x_test, y_test), batch_size=batch_size)
    config = {
        "learning_rate": learning_rate,
        "local_epochs": epochs,
        "batch_size": batch_size,
        "seed": device_seed(seed, 1, "centralised"),
    }
    started = time.perf_counter()
    fitted = client.fit(parameters_of(initial_model(seed)), config)
    evaluation = client.evaluate(fitted.parameters, {})
    return {
        "accuracy": evaluation.metrics["accuracy"],
        "loss": evaluation.loss,
        "n_train": len(y_train),
        "n_test": evaluation.num_examples,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="heart_disease.centralised", description=__doc__)
    parser.add_argument("--epochs", type=int, default=CHOSEN.centralised_epochs)
    parser.add_argument("--learning-rate", type=float, default=CHOSEN.learning_rate)
    parser.add_argument("--batch-size", type=int, default=CHOSEN.batch_size)
    parser.add_argument(
        "--seed", type=int, default=CHOSEN.seed, help="the initial model's and the shuffle's"
    )
    args = parser.parse_args(argv)
    result = train(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
