"""Final accuracy of each aggregation strategy, with and without attackers (issue 8).

One stack for the whole trial (a temporary FEDENGINE_HOME, the embedded broker and
PostgreSQL), one fleet per (attack, fleet seed), and every strategy run on that fleet as its
own task, one after another; each row is the accuracy of the task's last completed round.
What the fleet knows (which devices attack, how) is never told to the strategy: robust
strategies run with their defaults unless --param says otherwise.

    .venv/bin/python benchmarks/strategies_trial.py robustness --seeds 1 2 3 --json out.json
    .venv/bin/python benchmarks/strategies_trial.py non-iid --json out.json

"robustness": 20 devices, 10 per round, 10 rounds, IID digits; attacks none, sign_flip x10,
gaussian (std 10), label_flip at 20% malicious devices. "non-iid": Dirichlet 0.1 digits, 50
devices, 10 per round, 30 rounds, the FedAvg family with a few server learning rates each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fedcommon import auth
from fedengine import fleets, infra, launcher
from fedengine.demo import check_strategy
from fedengine.sdk import FedEngineClient
from fedengine.settings import LauncherSettings

FINISHED = {"completed", "failed", "cancelled"}
ROBUST_TRIAL_STRATEGIES = [
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
]
# kind -> scale: the sign-flipped update's factor, the Gaussian's standard deviation.
ATTACKS: dict[str, tuple[str, float]] = {
    "none": ("sign_flip", 1.0),
    "sign_flip": ("sign_flip", 10.0),
    "gaussian": ("gaussian", 10.0),
    "label_flip": ("label_flip", 1.0),
}
# Server learning rates tried for the adaptive optimizers (Reddi et al. 2021 tune eta over a
# grid; these are the decades around what worked on digits in a first pass).
NON_IID_GRID: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{}],
    "fedprox": [{"mu": 0.01}, {"mu": 0.1}],
    "fedavgm": [{"lr": 1.0, "momentum": 0.9}, {"lr": 0.3, "momentum": 0.9}],
    "fedadam": [{"eta": 0.01}, {"eta": 0.03}, {"eta": 0.1}],
    "fedyogi": [{"eta": 0.01}, {"eta": 0.03}, {"eta": 0.1}],
}


async def _run_task(
    client: FedEngineClient, fleet: launcher.Fleet, strategy: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    task = {
        "task_name": f"trial {fleet.name} {strategy['name']}",
        "participating_devices": [f"{fleet.name}-{i:04d}" for i in range(fleet.devices)],
        "strategy": strategy,
        **spec,
    }
    began = time.monotonic()
    task_id = await client.create_federated_task(**task)
    await client.start_federated_training(task_id)
    state = await client.wait_for_task(
        task_id, lambda t: t["state"] in FINISHED, timeout_s=30 * task["rounds"] + 120
    )
    rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    return {
        "strategy": strategy,
        "state": state["state"],
        "stop_reason": state["stop_reason"],
        "rounds_completed": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "rejected": _rejections(await client.get_rounds(task_id)),
        "seconds": round(time.monotonic() - began, 2),
    }


def _rejections(rounds: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in rounds:
        for reason, count in (r.get("rejected") or {}).items():
            total[reason] = total.get(reason, 0) + int(count)
    return total


@contextlib.asynccontextmanager
async def _fleet(settings: LauncherSettings, fleet: launcher.Fleet) -> AsyncIterator[None]:
    await asyncio.to_thread(fleets.start, settings, fleet)
    try:
        yield
    finally:
        await asyncio.to_thread(fleets.stop, settings, fleet.name)


def parse_strategy(text: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:{"param": value}`` (a task body's strategy)."""
    name, _, params = text.partition(":")
    return {"name": name, "params": json.loads(params) if params else {}}


async def robustness(
    settings: LauncherSettings,
    client: FedEngineClient,
    seeds: list[int],
    attacks: list[str],
    strategies: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        for attack in attacks:
            kind, scale = ATTACKS[attack]
            fleet = launcher.Fleet(
                name=f"r{seed}{attack.replace('_', '')}",
                devices=20,
                seed=seed,
                malicious=0.0 if attack == "none" else 0.2,
                attack=kind,
                attack_scale=scale,
            )
            async with _fleet(settings, fleet):
                for strategy in strategies:
                    result = await _run_task(
                        client,
                        fleet,
                        strategy,
                        rounds=10,
                        devices_per_round=10,
                        # 7 of 10, or what the strategy needs (Krum with f = 3: 9).
                        min_devices=max(7, check_strategy(**strategy).params.min_updates),
                        seed=seed,
                        # Honest rounds take about 0.1 s here; a diverged device sends nothing
                        # and its round waits for this deadline.
                        round_timeout_s=5,
                    )
                    row = {"seed": seed, "attack": attack, **result}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


async def non_iid(
    settings: LauncherSettings, client: FedEngineClient, seeds: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        fleet = launcher.Fleet(
            name=f"n{seed}", devices=50, partitioning="dirichlet", alpha=0.1, seed=seed
        )
        async with _fleet(settings, fleet):
            for name, grid in NON_IID_GRID.items():
                for params in grid:
                    result = await _run_task(
                        client,
                        fleet,
                        {"name": name, "params": params},
                        rounds=30,
                        devices_per_round=10,
                        min_devices=5,
                        seed=seed,
                        round_timeout_s=10,
                    )
                    row = {"seed": seed, **result}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float | None]]:
    """Mean final accuracy per strategy (and params) and per ``key`` value."""
    table: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        label = row["strategy"]["name"]
        if row["strategy"]["params"]:
            label += " " + json.dumps(row["strategy"]["params"], sort_keys=True)
        column = str(row.get(key, "all"))
        accuracy = row["final_accuracy"]
        table.setdefault(label, {}).setdefault(column, [])
        if accuracy is not None:
            table[label][column].append(accuracy)
    return {
        label: {c: round(statistics.fmean(v), 4) if v else None for c, v in columns.items()}
        for label, columns in table.items()
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trial", choices=["robustness", "non-iid"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument(
        "--strategies",
        nargs="+",
        type=parse_strategy,
        default=[{"name": name, "params": {}} for name in ROBUST_TRIAL_STRATEGIES],
        help='robustness: NAME or NAME:{"param": value} (default: every strategy, defaults)',
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedengine-trial-") as home:
        settings = LauncherSettings(
            FEDENGINE_HOME=Path(home),
            KAFKA_BOOTSTRAP_SERVERS=None,
            DATABASE_URL=None,
            FEDENGINE_GATEWAY_PORT=infra.free_port(),
        )
        stack = await asyncio.to_thread(launcher.up, settings, log=lambda *_: None)
        began = time.monotonic()
        try:
            secret, _ = launcher.jwt_secret(settings)
            token = auth.issue_token(secret=secret, subject="trial", role=auth.Role.OPERATOR)
            async with FedEngineClient(stack.gateway_url, token, timeout_s=60) as client:
                if args.trial == "robustness":
                    rows = await robustness(
                        settings, client, args.seeds, args.attacks, args.strategies
                    )
                    table = summary(rows, "attack")
                else:
                    rows = await non_iid(settings, client, args.seeds)
                    table = summary(rows, "seed")
        finally:
            await asyncio.to_thread(launcher.down, settings)
    document = {
        "trial": args.trial,
        "command": " ".join(sys.argv),
        "seeds": args.seeds,
        "seconds": round(time.monotonic() - began, 1),
        "mean_final_accuracy": table,
        "runs": rows,
    }
    args.json.write_text(json.dumps(document, indent=2))
    print(json.dumps(document["mean_final_accuracy"], indent=2))


if __name__ == "__main__":
    asyncio.run(main())
