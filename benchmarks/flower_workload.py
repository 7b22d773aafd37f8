"""Flower 1.42 running issue 17's workloads A and B, for the side-by-side comparison with
``fedengine bench reference`` and ``fedengine bench simulate``.

Flower's simulation engine as a new user runs it by default: ``flwr.simulation.run_simulation``
with a ServerApp (the Message API's ``FedAvg.start`` with centralised evaluation each round)
and a ClientApp, on the Ray backend with its default resources (2 CPUs a ClientApp: one
actor on a 2-core machine). The work is FedEngine's: scikit-learn's digits split 80/20
stratified with seed 0 and pixels divided by 16 (as fedcommon.datasets does), standardised
by the training split's per-pixel mean and std (std 0 -> 1), partitioned IID exactly as
fedcommon.datasets.partition does (a numpy permutation of the seed, array_split), an MLP
64-128-10 initialised as fedcommon.models.build_model(hidden=128, seed) initialises it, and
each device training with FedEngine's local loop (minibatch SGD, a torch Generator seeded per
device and round by the simulator's formula). Flower picks the devices of a round itself
(``random.sample``, seeded here), so the devices differ from the reference loop's.

This script never imports FedEngine: it runs from its own virtualenv, outside the repository::

    python3.11 -m venv /work/flower-venv
    /work/flower-venv/bin/pip install -r benchmarks/flower_requirements.txt
    /work/flower-venv/bin/python benchmarks/flower_workload.py --workload A --json a.json

``--workload A``: 100 devices, 10 a round, 20 rounds; ``--workload B``: 1,000 devices, 50 a
round, 10 rounds (digits' 1,437 training images give B's devices 1 or 2 each:
``fedengine bench reference`` needs ``--min-size 1`` for it); both 1 local epoch, batch 32,
SGD lr 0.05, seed 0 (``--seed`` changes it; Flower's node ids are random, so which devices a
round picks still differs from run to run).

It prints one JSON line last on stdout (Flower and Ray log to stderr): ``wall_s`` from the
process's start to the end of the run, ``time_to_first_round_s`` from the process's start to
the moment round 1 begins (after the initial centralised evaluation), ``round_s`` (each round,
its centralised evaluation included), ``s_per_round_after_first``, ``peak_rss_mb`` (the peak
of the summed RSS of this process and all its descendants, Ray's raylet, GCS and workers
included, sampled every 0.2 s) with ``peak_processes``, ``cpu_s`` (user + system CPU seconds
of those processes at their last sample: less sensitive than wall time to other load on the
machine), ``final_accuracy`` and ``accuracy``
per round (centralised, on the 360 test images).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Workload:
    devices: int
    per_round: int
    rounds: int
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    hidden: int = 128
    seed: int = 0


WORKLOADS = {"A": Workload(100, 10, 20), "B": Workload(1000, 50, 10)}


@cache
def load_digits_standardized() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return x_train, y_train, x_test, y_test: fedcommon's digits split, standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x = (features.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    std[std == 0] = 1.0

    def transform(images: np.ndarray) -> np.ndarray:
        out = (images.reshape(len(images), -1).astype(np.float64) - mean) / std
        return out.reshape(images.shape).astype(np.float32)

    return transform(x_train), y_train, transform(x_test), y_test


@cache
def iid_partition(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Split sample indices IID among clients (fedcommon.datasets.partition's IID scheme)."""
    if num_clients > num_samples:
        raise ValueError(f"{num_samples} samples cannot give {num_clients} clients one each")
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def build_mlp(hidden: int, seed: int) -> nn.Module:
    """The MLP 64-hidden-10, initialised as fedcommon.models.build_model initialises it."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    finally:
        torch.random.set_rng_state(state)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> float:
    """Minibatch SGD on one device's data (feddevice.torch_training.train_local's loop);
    return the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        order = torch.randperm(len(inputs), generator=generator)
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.item()) * len(index)
    return loss_sum / len(inputs)


def accuracy_of(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float(np.mean(predicted == y))


class TreeMemory:
    """Sample the summed RSS of this process and all its descendants every ``period`` s."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.peak_bytes = 0
        self.peak_processes = 0
        self._cpu_s: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(psutil.Process())

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) of every process seen, at its last sample."""
        return sum(self._cpu_s.values())

    def _run(self) -> None:
        me = psutil.Process()
        while True:
            self.sample(me)
            if self._stop.wait(self.period):
                return

    def sample(self, me: psutil.Process) -> None:
        total, count = 0, 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
                times = process.cpu_times()
                self._cpu_s[process.pid] = times.user + times.system
                count += 1
            except psutil.Error:
                continue  # ended between listing and reading
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    config = message.content["config"]
    x_train, y_train, _, _ = load_digits_standardized()
    indices = iid_partition(len(y_train), num_partitions, int(config["partition-seed"]))[
        partition_id
    ]
    model = build_mlp(int(config["hidden"]), 0)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    server_round = int(config["server-round"])
    loss = train_local(
        model,
        x_train[indices],
        y_train[indices],
        epochs=int(config["epochs"]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["lr"]),
        # The simulator's per-device seed (fedengine bench reference uses the same).
        seed=int(config["partition-seed"]) * 1_000_003 + server_round * 7919 + partition_id,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(indices)}),
        }
    )
    return Message(content=content, reply_to=message)


def run(workload: Workload) -> dict[str, Any]:
    """Run the workload on Flower's simulation engine and return its figures."""
    stamps: list[float] = []
    accuracy: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(workload.seed)  # Flower samples a round's nodes with random.sample
        _, _, x_test, y_test = load_digits_standardized()

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = build_mlp(workload.hidden, 0)
            model.load_state_dict(arrays.to_torch_state_dict())
            value = accuracy_of(model, x_test, y_test)
            stamps.append(time.time())
            if server_round > 0:
                accuracy.append(value)
            return MetricRecord({"accuracy": value})

        strategy = FedAvg(
            fraction_train=workload.per_round / workload.devices, fraction_evaluate=0.0
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(build_mlp(workload.hidden, workload.seed).state_dict()),
            num_rounds=workload.rounds,
            train_config=ConfigRecord(
                {
                    "lr": workload.learning_rate,
                    "epochs": workload.epochs,
                    "batch-size": workload.batch_size,
                    "hidden": workload.hidden,
                    "partition-seed": workload.seed,
                }
            ),
            evaluate_fn=evaluate,
        )

    started = psutil.Process().create_time()
    with TreeMemory() as memory:
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=workload.devices
        )
    wall_s = time.time() - started
    round_s = [after - before for before, after in itertools.pairwise(stamps)]
    after_first = round_s[1:]
    return {
        "framework": f"flwr {_version('flwr')} (ray {_version('ray')})",
        "devices": workload.devices,
        "per_round": workload.per_round,
        "rounds": workload.rounds,
        "rounds_done": len(accuracy),
        "wall_s": wall_s,
        "time_to_first_round_s": stamps[0] - started if stamps else None,
        "round_s": round_s,
        "s_per_round_after_first": sum(after_first) / len(after_first) if after_first else None,
        "peak_rss_mb": memory.peak_bytes / 2**20,
        "peak_processes": memory.peak_processes,
        "cpu_s": memory.cpu_s,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "accuracy": accuracy,
        "config": asdict(workload),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="A")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    arguments = parser.parse_args()
    workload = WORKLOADS[arguments.workload]
    workload = Workload(**{**asdict(workload), "seed": arguments.seed})
    torch.manual_seed(workload.seed)
    result = run(workload)
    text = json.dumps(result)
    if arguments.json is not None:
        arguments.json.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    # Run as the importable module ``flower_workload`` (this file's folder is on Ray's worker
    # path), so that Ray's workers import the ClientApp's helpers by reference and keep the
    # data set loaded between messages, as a project's task.py module would.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import flower_workload

    flower_workload.main()
