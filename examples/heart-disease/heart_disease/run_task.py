"""Run the task on a stack (``fedengine up``) whose four hospital devices are running (README):
upload the initial model, create the task on it with federated evaluation only, start it, and
print each round's federated accuracy as the devices report it.

    python -m heart_disease.run_task --gateway http://127.0.0.1:8000 \
        --token "$(fedengine token --role operator)"

One JSON line per round (round, fed_accuracy, fed_loss, fed_examples, fed_devices, train_loss),
then one line with the task's outcome (task_id, state, stop_reason, accuracy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from fedengine.sdk import FedEngineClient
from heart_disease.data import HOSPITALS
from heart_disease.hyperparameters import CHOSEN, Hyperparameters
from heart_disease.model import initial_model_bytes
from heart_disease.simulate import device_id

FINAL_STATES = ("completed", "cancelled", "failed")


def task_body(
    *,
    model: dict[str, Any],
    devices: Sequence[str],
    settings: Hyperparameters,
    round_timeout_s: float,
    evaluation_timeout_s: float,
) -> dict[str, Any]:
    """The task: every hospital trains in every round and evaluates every new version; no
    central data, so its accuracy is the devices' (federated evaluation only)."""
    return {
        "task_name": "heart-disease-4-hospitals",
        "initial_model": {"model_id": model["model_id"], "sha256": model["sha256"]},
        "federated_evaluation": {
            "every_rounds": 1,
            "fraction": 1.0,
            "min_devices": len(devices),
            "timeout_s": evaluation_timeout_s,
        },
        "participating_devices": list(devices),
        "devices_per_round": len(devices),
        "min_devices": len(devices),
        "rounds": settings.rounds,
        "local_epochs": settings.local_epochs,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "round_timeout_s": round_timeout_s,
    }


async def run_task(
    client: FedEngineClient,
    *,
    devices: Sequence[str],
    settings: Hyperparameters = CHOSEN,
    round_timeout_s: float = 60.0,
    evaluation_timeout_s: float = 60.0,
    timeout_s: float = 600.0,
    report: Callable[[dict[str, Any]], None] = lambda row: print(json.dumps(row), flush=True),
) -> dict[str, Any]:
    """Upload, create, start, and wait for the task to end; ``report`` each round once its
    federated evaluation is in. Returns the task's outcome."""
    await client.wait_for_devices(len(devices), prefix="heart-", timeout_s=timeout_s)
    model = await client.upload_model(initial_model_bytes(settings.seed), name="heart-logreg")
    body = task_body(
        model=model,
        devices=devices,
        settings=settings,
        round_timeout_s=round_timeout_s,
        evaluation_timeout_s=evaluation_timeout_s,
    )
    task_id = await client.create_federated_task(**body)
    await client.start_federated_training(task_id)
    reported: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        task = await client.get_task(task_id)
        finished = task["state"] in FINAL_STATES
        for row in await client.get_rounds(task_id):
            number = row["round_number"]
            if number in reported or (row["fed_accuracy"] is None and not finished):
                continue
            reported.add(number)
            report(
                {
                    "round": number,
                    **{
                        key: row[key]
                        for key in ("fed_accuracy", "fed_loss", "fed_examples", "fed_devices")
                    },
                    "train_loss": row["train_loss"],
                }
            )
        if finished:
            return {
                "task_id": task_id,
                "state": task["state"],
                "stop_reason": task["stop_reason"],
                "accuracy": task["latest_accuracy"],
            }
        if loop.time() > deadline:
            raise TimeoutError(f"task {task_id} still {task['state']} after {timeout_s}s")
        await asyncio.sleep(1.0)


async def _main(args: argparse.Namespace) -> None:
    settings = Hyperparameters(
        args.rounds, args.local_epochs, args.learning_rate, args.batch_size, args.seed
    )
    async with FedEngineClient(args.gateway, args.token) as client:
        outcome = await run_task(
            client,
            devices=args.devices,
            settings=settings,
            round_timeout_s=args.round_timeout_s,
            evaluation_timeout_s=args.evaluation_timeout_s,
            timeout_s=args.timeout_s,
        )
    print(json.dumps(outcome))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="heart_disease.run_task", description=__doc__)
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="an operator's bearer token")
    parser.add_argument("--devices", nargs="+", default=[device_id(name) for name in HOSPITALS])
    parser.add_argument("--rounds", type=int, default=CHOSEN.rounds)
    parser.add_argument("--local-epochs", type=int, default=CHOSEN.local_epochs)
    parser.add_argument("--learning-rate", type=float, default=CHOSEN.learning_rate)
    parser.add_argument("--batch-size", type=int, default=CHOSEN.batch_size)
    parser.add_argument("--seed", type=int, default=CHOSEN.seed)
    parser.add_argument("--round-timeout-s", type=float, default=60.0)
    parser.add_argument("--evaluation-timeout-s", type=float, default=60.0)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="for the whole task")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
