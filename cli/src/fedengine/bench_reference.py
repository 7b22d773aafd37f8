"""``fedengine bench reference``: the floor the simulator is measured against.

The same federated work as a task on the stack, done as a plain sequential loop in one
process with no broker and no database: the training split partitioned as the simulator
partitions it (fedcommon.datasets.partition, the fleet's seed), ``per_round`` devices picked
each round by a seeded numpy Generator, each trained from the global model by the devices' own
local training (feddevice.torch_training.train_local, one torch thread as in the simulator,
the simulator's per-device seed), the deltas averaged weighted by examples (FedAvg with server
learning rate 1; McMahan et al. 2017, https://arxiv.org/abs/1602.05629) and the global model
evaluated on the data set's test split after every round.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fedcommon import datasets, models
from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import ModelArchitecture, Partitioning
from feddevice.torch_training import LocalResult, train_local

REFERENCE_KEYS = (
    "devices",
    "per_round",
    "rounds",
    "wall_s",
    "task_s",
    "s_per_round",
    "s_per_round_after_first",
    "updates_per_s",
    "peak_rss_mb",
    "final_accuracy",
    "accuracy",
    "config",
    "machine",
    "cpu_s",
)


@dataclass(frozen=True)
class ReferenceOptions:
    devices: int
    per_round: int
    rounds: int
    dataset: str = "digits"
    model: ModelArchitecture = ModelArchitecture.MLP
    hidden: int | None = None
    partitioning: Partitioning = Partitioning.IID
    alpha: float = 0.5
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    standardize: bool = False
    seed: int = 0
    # Training examples every device holds at least (fedcommon.datasets.partition's, the
    # simulator's 2): digits' 1,437 hold 1,000 devices (workload B) only at 1.
    min_size: int = 2


@dataclass(frozen=True)
class ReferenceRun:
    """What the loop produced: accuracy and wall seconds per round, updates averaged."""

    accuracy: list[float]
    round_s: list[float]
    updates: int


def device_seed(*, task_seed: int, round_number: int, device_index: int) -> int:
    """Return the seed a simulated device trains with (the simulator's formula)."""
    return task_seed * 1_000_003 + round_number * 7919 + device_index


def fedavg(deltas: list[NDArrays], weights: list[int]) -> NDArrays:
    """Return the example-weighted mean of ``deltas`` as float32 (FedAvg's server step).

    Raises
    ------
    ValueError
        No deltas, or weights that do not sum to a positive number.
    """
    total = sum(weights)
    if not deltas or total <= 0:
        raise ValueError("fedavg: no deltas, or weights summing to <= 0")
    averaged: NDArrays = []
    for position in range(len(deltas[0])):
        accumulated = np.zeros(deltas[0][position].shape, np.float64)
        for delta, weight in zip(deltas, weights, strict=True):
            accumulated += weight * delta[position].astype(np.float64)
        averaged.append((accumulated / total).astype(np.float32))
    return averaged


def parse_partition(text: str) -> tuple[Partitioning, float]:
    """Return the scheme and Dirichlet alpha of ``iid`` or ``dirichlet:ALPHA``.

    Raises
    ------
    ValueError
        Any other text, or an alpha that is not a positive number.
    """
    if text == "iid":
        return Partitioning.IID, 0.5
    scheme, _, alpha_text = text.partition(":")
    if scheme == "dirichlet":
        try:
            alpha = float(alpha_text)
        except ValueError:
            alpha = -1.0
        if alpha > 0 and np.isfinite(alpha):
            return Partitioning.DIRICHLET, alpha
    raise ValueError(f"partition: {text!r} is not iid or dirichlet:ALPHA (ALPHA > 0)")


def accuracy_of(model: torch.nn.Module, data: datasets.Dataset) -> float:
    """Return the model's accuracy on the data set's test split."""
    model.eval()
    with torch.no_grad():
        # In chunks of 1,000, as the coordinator evaluates (the CNN on all 10,000
        # Fashion-MNIST test images at once took gigabytes).
        predicted = np.concatenate(
            [
                model(torch.from_numpy(data.x_test[begin : begin + 1000])).argmax(dim=1).numpy()
                for begin in range(0, len(data.x_test), 1000)
            ]
        )
    return float(np.mean(predicted == data.y_test))


def run_rounds(
    data: datasets.Dataset, options: ReferenceOptions, *, rng: np.random.Generator
) -> ReferenceRun:
    """Run ``options.rounds`` rounds of FedAvg over ``data`` in this process and thread.

    Raises
    ------
    ValueError
        More devices a round than devices, or a partition that cannot exist.
    """
    if options.per_round > options.devices:
        raise ValueError(
            f"per_round: {options.per_round} devices a round of {options.devices} devices"
        )
    parts = datasets.partition(
        data.y_train,
        num_clients=options.devices,
        scheme=options.partitioning,
        alpha=options.alpha,
        seed=options.seed,
        min_size=options.min_size,
    )
    model = models.build_model(
        options.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=options.seed,
        hidden=options.hidden,
    )
    weights = models.get_arrays(model)
    accuracy: list[float] = []
    round_s: list[float] = []
    for round_number in range(1, options.rounds + 1):
        began = time.perf_counter()
        chosen = np.sort(rng.choice(options.devices, size=options.per_round, replace=False))
        results: list[LocalResult] = []
        for index in chosen:
            models.set_arrays(model, weights)
            indices = parts[int(index)]
            results.append(
                train_local(
                    model,
                    data.x_train[indices],
                    data.y_train[indices],
                    epochs=options.epochs,
                    batch_size=options.batch_size,
                    learning_rate=options.learning_rate,
                    seed=device_seed(
                        task_seed=options.seed,
                        round_number=round_number,
                        device_index=int(index),
                    ),
                )
            )
        step = fedavg([r.delta for r in results], [r.num_examples for r in results])
        weights = [np.add(w, d, dtype=np.float32) for w, d in zip(weights, step, strict=True)]
        models.set_arrays(model, weights)
        accuracy.append(accuracy_of(model, data))
        round_s.append(time.perf_counter() - began)
    return ReferenceRun(accuracy, round_s, options.rounds * options.per_round)


def warm_up(data: datasets.Dataset, options: ReferenceOptions) -> None:
    """Run one training step and one evaluation on a throwaway model, as the simulator does
    before it enrols: torch's first backward pass and optimizer step load code (about 1.4 s
    here) that would otherwise land in the first round."""
    model = models.build_model(
        options.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=0,
        hidden=options.hidden,
    )
    train_local(
        model,
        data.x_train[: options.batch_size],
        data.y_train[: options.batch_size],
        epochs=1,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        seed=0,
    )
    accuracy_of(model, data)


def bench_reference(
    options: ReferenceOptions, *, started: float, machine: dict[str, Any]
) -> dict[str, Any]:
    """Load the data set, warm up, run the loop and summarise it with REFERENCE_KEYS.

    ``started`` is the ``time.time()`` the command's wall time counts from (the process's
    start, so that interpreter start, imports, data loading and the warm-up are in
    ``wall_s``); ``task_s`` is the rounds alone (each round's training, averaging and
    evaluation), as a task's rounds on a running stack are.
    """
    torch.set_num_threads(1)
    data = datasets.load_dataset(options.dataset)
    if options.standardize:
        data = datasets.standardized(data)
    warm_up(data, options)
    run = run_rounds(data, options, rng=np.random.default_rng(options.seed))
    task_s = sum(run.round_s)
    after_first = run.round_s[1:]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "devices": options.devices,
        "per_round": options.per_round,
        "rounds": options.rounds,
        "wall_s": time.time() - started,
        "task_s": task_s,
        "s_per_round": task_s / options.rounds,
        "s_per_round_after_first": sum(after_first) / len(after_first) if after_first else None,
        "updates_per_s": run.updates / task_s,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "final_accuracy": run.accuracy[-1],
        "accuracy": run.accuracy,
        "config": asdict(options),
        "machine": machine,
        # User + system CPU seconds of this process (less sensitive than wall time to other
        # load on the machine).
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
