"""Final accuracy under differential privacy: central DP-FedAvg at several budgets, and none.

One stack (a temporary FEDENGINE_HOME, the embedded broker and PostgreSQL), one Fashion-MNIST
fleet, and one task per budget on it, one after another, all with the same training settings;
each row is the accuracy of the task's last completed round and what the privacy service
says was spent. Central DP draws each round's devices by Poisson sampling at
q = per_round / devices and calibrates the noise so that the task's rounds spend the budget.

    .venv/bin/python benchmarks/dp_accuracy_trial.py --devices 1000 --per-round 100 \\
        --rounds 30 --epsilons 8 3 1 --json out.json
    .venv/bin/python benchmarks/dp_accuracy_trial.py --devices 1000 --per-round 100 \\
        --rounds 30 --epsilons 3 1 --clip-modes fixed adaptive --json adaptive.json
    .venv/bin/python benchmarks/dp_accuracy_trial.py --devices 1000 --per-round 100 \\
        --rounds 30 --local-only --local-levels low medium high --json local.json

User-level DP needs many devices: the noise's std on the mean update is z * C / per_round, so
with a few dozen devices per round any useful epsilon drowns the signal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedcommon import auth
from fedengine import fleets, infra, launcher
from fedengine.sdk import FedEngineClient
from fedengine.settings import LauncherSettings

FINISHED = {"completed", "failed", "cancelled"}
# Each level's per-task epsilon (issue 9), at delta 1e-5.
LOCAL_BUDGETS = {"low": 8.0, "medium": 3.0, "high": 1.0}


async def _run_task(
    client: FedEngineClient,
    fleet: launcher.Fleet,
    args: argparse.Namespace,
    privacy: dict[str, Any] | None,
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_name": f"dp trial {fleet.name} {privacy and privacy['epsilon']}",
        "dataset": fleet.dataset,
        "participating_devices": [f"{fleet.name}-{i:04d}" for i in range(fleet.devices)],
        "rounds": args.rounds,
        "devices_per_round": args.per_round,
        "min_devices": max(1, args.per_round // 2),
        "learning_rate": args.learning_rate,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "round_timeout_s": args.round_timeout_s,
    }
    if privacy is not None:
        task["privacy"] = privacy
    began = time.monotonic()
    task_id = await client.create_federated_task(**task)
    await client.start_federated_training(task_id)
    state = await client.wait_for_task(
        task_id, lambda t: t["state"] in FINISHED, timeout_s=args.round_timeout_s * 4 * args.rounds
    )
    rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
    row: dict[str, Any] = {
        "epsilon_budget": None if privacy is None else privacy["epsilon"],
        "clipping": None
        if privacy is None
        else "adaptive"
        if privacy.get("adaptive_clipping")
        else "fixed",
        "state": state["state"],
        "stop_reason": state["stop_reason"],
        "rounds_completed": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "best_accuracy": max((r["accuracy"] for r in rounds), default=None),
        "seconds": round(time.monotonic() - began, 1),
    }
    if privacy is not None:
        budget = await client.get_privacy_budget(task_id)
        row |= {
            "epsilon_spent": budget["epsilon_spent"],
            "noise_multiplier": budget["noise_multiplier"],
            "sample_rate": budget["release_log"][0]["sample_rate"]
            if budget["release_log"]
            else None,
            "releases": budget["releases"],
            "first_clip_norm": rounds[0]["clip_norm"] if rounds else None,
            "last_clip_norm": rounds[-1]["clip_norm"] if rounds else None,
        }
    return row


async def trial(
    settings: LauncherSettings, client: FedEngineClient, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Central: one plain fleet, a task per budget (and one without DP). Local: one fleet per
    privacy level (its devices train with DP-SGD to that level's budget), a task without
    central DP on each."""
    rows = []
    plans: list[tuple[str, list[dict[str, Any] | None]]] = []
    if not args.local_only:
        budgets: list[dict[str, Any] | None] = [None]
        for epsilon in args.epsilons:
            for clip_mode in args.clip_modes:
                section: dict[str, Any] = {
                    "epsilon": epsilon,
                    "delta": args.delta,
                    "clip_norm": args.clip,
                    "accountant": "rdp",
                }
                if clip_mode == "adaptive":
                    section["clip_norm"] = args.adaptive_start_clip
                    section["adaptive_clipping"] = {
                        "target_quantile": args.adaptive_quantile,
                        "learning_rate": args.adaptive_learning_rate,
                    }
                budgets.append(section)
        plans.append(("none", budgets))
    plans += [(level, [None]) for level in args.local_levels]
    for level, planned in plans:
        fleet = launcher.Fleet(
            name=f"dp{level}",
            devices=args.devices,
            seed=args.seed,
            dataset=args.dataset,
            privacy_level=level,
        )
        await asyncio.to_thread(fleets.start, settings, fleet)
        try:
            await client.wait_for_devices(args.devices, prefix=f"{fleet.name}-", timeout_s=900)
            for privacy in planned:
                mode = "local" if level != "none" else "none" if privacy is None else "central"
                result = await _run_task(client, fleet, args, privacy)
                row = {"mode": mode, "local_level": level, **result}
                if level != "none":
                    row["local_epsilon_budget"] = LOCAL_BUDGETS[level]
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            await asyncio.to_thread(fleets.stop, settings, fleet.name)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0, help="C of fixed clipping")
    parser.add_argument("--clip-modes", nargs="+", default=["fixed"], choices=["fixed", "adaptive"])
    # Adaptive clipping (Andrew et al. 2021): the paper's start C = 0.1, γ = 0.5, η = 0.2.
    parser.add_argument("--adaptive-start-clip", type=float, default=0.1)
    parser.add_argument("--adaptive-quantile", type=float, default=0.5)
    parser.add_argument("--adaptive-learning-rate", type=float, default=0.2)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--round-timeout-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--local-levels", nargs="*", default=[], choices=list(LOCAL_BUDGETS), help="local DP"
    )
    parser.add_argument("--local-only", action="store_true", help="skip the central rows")
    parser.add_argument("--home", type=Path, help="keep the stack's home (logs) here")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedengine-dp-trial-") as temporary:
        home = args.home or temporary
        settings = LauncherSettings(
            FEDENGINE_HOME=Path(home),
            KAFKA_BOOTSTRAP_SERVERS=None,
            DATABASE_URL=None,
            FEDENGINE_GATEWAY_PORT=infra.free_port(),
        )
        stack = await asyncio.to_thread(launcher.up, settings, log=lambda *_: None)
        try:
            secret, _ = launcher.jwt_secret(settings)
            token = auth.issue_token(secret=secret, subject="trial", role=auth.Role.OPERATOR)
            async with FedEngineClient(stack.gateway_url, token, timeout_s=60) as client:
                rows = await trial(settings, client, args)
        finally:
            await asyncio.to_thread(launcher.down, settings)
    document = {
        "trial": "dp_accuracy",
        "command": " ".join(sys.argv),
        "seconds": round(time.monotonic() - began, 1),
        "runs": rows,
    }
    args.json.write_text(json.dumps(document, indent=2))
    for row in rows:
        print(
            row["mode"],
            row["epsilon_budget"],
            row.get("clipping"),
            row["final_accuracy"],
            row.get("epsilon_spent"),
            row.get("last_clip_norm"),
        )


if __name__ == "__main__":
    asyncio.run(main())
