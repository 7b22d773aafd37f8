"""``fedengine demo``: a whole federated task end to end on the local stack, with progress."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import uuid4

from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedcommon import auth, mixes
from fedcommon.constraints import MAX_SETTING
from fedcommon.lifecycle import FINISHED
from fedcommon.messages.v1 import (
    CALIBRATE,
    DP_STRATEGIES,
    SECAGG_MIN_PARTICIPANTS,
    DeviceType,
    PrivacySpec,
    SecureAggregationSpec,
    StrategySpec,
)
from fedengine import fleets, launcher
from fedengine.sdk import FedEngineClient
from fedengine.settings import LauncherSettings

_STRATEGY: TypeAdapter[StrategySpec] = TypeAdapter(StrategySpec)


class StrategyName(StrEnum):
    """The strategies a task may name (fedcommon.messages.v1.STRATEGY_TYPES; a test holds the
    two together), for the CLI's choices."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"


class DatasetChoice(StrEnum):
    """The data sets a task may name (fedcommon.messages.v1.DatasetName; a test holds the two
    together), for the CLI's choices."""

    DIGITS = "digits"
    FASHION_MNIST = "fashion_mnist"


class AttackKind(StrEnum):
    """The simulator's attacks (SIMULATOR_ATTACK; fedengine_simulator.core.attacks)."""

    SIGN_FLIP = "sign_flip"
    GAUSSIAN = "gaussian"
    LABEL_FLIP = "label_flip"


def check_behaviour(
    *, profiles: str, availability: str, speedup: float, failure_rate: float
) -> None:
    """Refuse a fleet behaviour the simulator would refuse at start (its device-type mix, its
    availability, its speed-up and failure rate), before anything starts."""
    if profiles.strip():
        mixes.parse_mix(profiles, DeviceType, "--profiles")
    if availability not in ("always", "diurnal") and not Path(availability).is_file():
        raise ValueError(
            f"--availability is always, diurnal or the path of a trace file, got {availability!r}"
        )
    if not 0 < speedup <= 1_000_000:
        raise ValueError(f"--speedup must be in (0, 1000000], got {speedup}")
    if not 0 <= failure_rate <= 1:
        raise ValueError(f"--failure-rate must be a fraction in [0, 1], got {failure_rate}")


def check_attack(malicious: float, attack_scale: float) -> None:
    """Refuse what the simulator would refuse at start, before a stack is started for it."""
    if not 0.0 <= malicious <= 1.0:
        raise ValueError(f"--malicious must be a fraction in [0, 1], got {malicious}")
    if not (0.0 < attack_scale <= MAX_SETTING):
        raise ValueError(
            f"--attack-scale must be a number in (0, {MAX_SETTING:g}], got {attack_scale}"
        )


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 20
    per_round: int = 10
    rounds: int = 10
    # The data set the fleet's devices hold and the task trains on (DatasetName).
    dataset: str = "digits"
    non_iid: float | None = None
    seed: int = 0
    model: str = "mlp"
    # The MLP's hidden units (None: 64) and whether features are standardised.
    hidden: int | None = None
    standardize: bool = False
    learning_rate: float = 0.3
    local_epochs: int = 5
    batch_size: int = 16
    round_timeout_s: float = 30.0
    min_devices: int | None = None
    target_accuracy: float | None = None
    # A fraction of the fleet attacks (the task is not told): see fedengine fleet --malicious.
    malicious: float = 0.0
    attack: str = AttackKind.SIGN_FLIP.value
    attack_scale: float = 1.0
    # The task's aggregation strategy, as a task body names it (validated by check_strategy).
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    # Central DP (None: off). Without a noise multiplier the privacy service calibrates one
    # that spends the budget over the task's rounds; with one, rounds run until the next
    # would pass the budget.
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    dp_noise_multiplier: float | None = None
    # Adaptive clipping's target quantile (None: C fixed at dp_clip).
    dp_clip_quantile: float | None = None
    # Local DP-SGD: the privacy level the fleet's devices enrol with ("none": off).
    local_dp: str = "none"
    # SecAgg+ secure aggregation: the task body's "secure_aggregation" section ({}: every
    # default). ``secagg_bits`` (None: the schema's 16) and ``secagg_dropout`` (None: no
    # dropout; SIMULATOR_SECAGG_DROPOUT, each device's chance to drop at each later stage) are
    # refused without it.
    secure_aggregation: bool = False
    secagg_bits: int | None = None
    secagg_dropout: float | None = None
    # Seconds each stage after training waits (None: the schema's 30).
    secagg_stage_timeout: float | None = None
    # Federated evaluation every this many rounds (and after the last), by every eligible
    # device of the fleet on its held-out share (0: off; central evaluation only).
    federated_evaluation: int = 0
    # The fleet's device behaviour (launcher.Fleet; the simulator's core/profiles.py).
    profiles: str = ""
    failure_rate: float = 0.0
    speedup: float = 100.0
    availability: str = "always"
    # Training examples each device holds at least (1,000 devices on digits' 1,437 need 1).
    min_size: int = 2
    # Simulator processes sharing the demo's fleet.
    processes: int = 1
    # Devices asked per device a round needs (the round closes once per_round are in).
    over_selection: float = 1.0


async def _device_ledgers(
    client: FedEngineClient,
    device_ids: list[str],
    task_id: str,
    *,
    asked: set[tuple[str, int, int]],
) -> dict[str, dict[str, Any] | None]:
    """Every device's ledger, once the privacy service has charged every (device, round,
    attempt) in ``asked`` (it charges asynchronously, a little after the coordinator asks; at
    most 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        ledgers = {d: await client.get_device_privacy_ledger(d) for d in device_ids}
        charged = {
            (device_id, r["round_number"], r["attempt"])
            for device_id, ledger in ledgers.items()
            if ledger is not None
            for r in ledger["release_log"]
            if r["task_id"] == task_id
        }
        if asked <= charged or time.monotonic() > deadline:
            return ledgers
        await _sleep(0.5)


def local_dp_asks(tries: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    """(device, round, attempt) for every participant of every try: the coordinator asks each
    one to train with DP-SGD, and the privacy service charges each ask once. A try can have
    fewer participants than devices_per_round (only the eligible devices, at least
    min_devices), so the count of asks is read from the tries, not assumed."""
    return {(d, t["round_number"], t["attempt"]) for t in tries for d in t["participants"] or []}


def local_dp_section(
    task_id: str,
    level: str,
    ledgers: dict[str, dict[str, Any] | None],
    asked: set[tuple[str, int, int]],
) -> dict[str, Any]:
    """The --json result's local DP: each device's ε on this task after each round it was
    asked for, and over its lifetime (from GET /privacy/budget?device_id=)."""
    devices: dict[str, Any] = {}
    for device_id, ledger in ledgers.items():
        if ledger is None:
            continue
        releases = [r for r in ledger["release_log"] if r["task_id"] == task_id]
        devices[device_id] = {
            # The tries the coordinator asked this device in, as [round, attempt].
            "asked": sorted([r, a] for d, r, a in asked if d == device_id),
            "epsilon_spent": max((r["epsilon_task_after"] for r in releases), default=0.0),
            "epsilon_lifetime": ledger["epsilon_lifetime_spent"],
            "releases": [
                {
                    "round": r["round_number"],
                    "attempt": r["attempt"],
                    "noise_multiplier": r["noise_multiplier"],
                    "sample_rate": r["sample_rate"],
                    "steps": r["steps"],
                    "epsilon_after": r["epsilon_task_after"],
                }
                for r in releases
            ],
        }
    known = [ld for ld in ledgers.values() if ld is not None]
    budgets = {t["epsilon_budget"] for ld in known for t in ld["tasks"] if t["task_id"] == task_id}
    return {
        "level": level,
        "epsilon_budget": max(budgets) if budgets else None,
        "delta": known[0]["delta"] if known else None,
        "devices": devices,
    }


def privacy_section(options: DemoOptions) -> dict[str, Any] | None:
    """The task body's privacy section, checked as the gateway will (``ValueError`` naming
    what is wrong, before a stack is started for it)."""
    if options.dp_epsilon is None:
        return None
    section: dict[str, Any] = {
        "epsilon": options.dp_epsilon,
        "delta": options.dp_delta,
        "clip_norm": options.dp_clip,
        "noise_multiplier": options.dp_noise_multiplier
        if options.dp_noise_multiplier is not None
        else CALIBRATE,
    }
    if options.dp_clip_quantile is not None:
        section["adaptive_clipping"] = {"target_quantile": options.dp_clip_quantile}
    try:
        PrivacySpec.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--dp-*: {problems}") from exc
    if options.strategy not in DP_STRATEGIES:
        raise ValueError(
            f"--dp-epsilon cannot be used with --strategy {options.strategy}: differential "
            f"privacy needs one of {', '.join(sorted(DP_STRATEGIES))}"
        )
    return section


def secure_aggregation_section(options: DemoOptions) -> dict[str, Any] | None:
    """The task body's secure_aggregation section (None: off), checked as the gateway and the
    simulator will (``ValueError`` naming what is wrong, before a stack is started for it).

    ``--secagg-bits`` below 10 also lowers ``weight_cap`` to the largest count that fits.
    """
    if not options.secure_aggregation:
        for flag, value in (
            ("--secagg-dropout", options.secagg_dropout),
            ("--secagg-bits", options.secagg_bits),
            ("--secagg-stage-timeout", options.secagg_stage_timeout),
        ):
            if value is not None:
                raise ValueError(f"{flag} needs --secure-aggregation")
        return None
    dropout = options.secagg_dropout
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"--secagg-dropout must be a fraction in [0, 1), got {dropout}")
    section: dict[str, Any] = {}
    if options.secagg_stage_timeout is not None:
        section["stage_timeout_s"] = options.secagg_stage_timeout
    if options.secagg_bits is not None:
        section["bits"] = options.secagg_bits
        largest = (1 << options.secagg_bits) - 1
        if 0 < largest < SecureAggregationSpec.model_fields["weight_cap"].default:
            section["weight_cap"] = largest
    try:
        SecureAggregationSpec.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--secagg-*: {problems}") from exc
    if options.strategy not in DP_STRATEGIES:
        raise ValueError(
            f"--secure-aggregation cannot be used with --strategy {options.strategy}: the "
            f"aggregator sees only the sum; use one of {', '.join(sorted(DP_STRATEGIES))}"
        )
    if options.per_round < SECAGG_MIN_PARTICIPANTS:
        raise ValueError(
            f"--secure-aggregation needs --per-round >= {SECAGG_MIN_PARTICIPANTS} (the sum of "
            f"two updates tells each device the other's); --per-round is {options.per_round}"
        )
    return section


def secure_aggregation_summary(result: dict[str, Any]) -> str:
    """The printed line saying secure aggregation was on, from the result's section."""
    section = result.get("section") or {}
    dropout = result.get("dropout") or 0.0
    return (
        f"secure aggregation: on (SecAgg+, {section.get('bits', '?')} bits per coordinate, "
        f"each stage within {section.get('stage_timeout_s', '?')} s; updates masked so that "
        f"the aggregator sees only their sum), simulated dropout {dropout:g} per stage"
    )


def min_devices(options: DemoOptions, strategy: StrategySpec) -> tuple[int, str | None]:
    """The task's min_devices, and a note when secure aggregation had to raise it.

    Half the round by default, but never below what the strategy needs (Krum: 2f + 3), which
    the gateway would refuse; with --secure-aggregation at least 3 (raised with a note rather
    than refused: the demo has no --min-devices flag, so nobody asked for fewer).
    """
    chosen = options.min_devices or min(
        options.per_round, max(1, options.per_round // 2, strategy.params.min_updates)
    )
    if options.secure_aggregation and chosen < SECAGG_MIN_PARTICIPANTS:
        return SECAGG_MIN_PARTICIPANTS, (
            f"min_devices raised from {chosen} to {SECAGG_MIN_PARTICIPANTS}: secure aggregation "
            "needs at least that many devices a round"
        )
    return chosen, None


def task_body(
    options: DemoOptions,
    *,
    fleet_name: str,
    strategy: StrategySpec,
    privacy: dict[str, Any] | None,
    secure: dict[str, Any] | None,
) -> dict[str, Any]:
    """The demo's REST task body (POST /api/federated/tasks)."""
    body: dict[str, Any] = {
        "task_name": f"demo {fleet_name}",
        "model_architecture": options.model,
        "dataset": options.dataset,
        "model_hidden": options.hidden,
        "standardize": options.standardize,
        "rounds": options.rounds,
        "devices_per_round": options.per_round,
        "min_devices": min_devices(options, strategy)[0],
        "participating_devices": [f"{fleet_name}-{i:04d}" for i in range(options.devices)],
        "learning_rate": options.learning_rate,
        "local_epochs": options.local_epochs,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "round_timeout_s": options.round_timeout_s,
        "over_selection": options.over_selection,
        "target_accuracy": options.target_accuracy,
        "strategy": {"name": options.strategy, "params": options.strategy_params},
    }
    if privacy is not None:
        body["privacy"] = privacy
    if secure is not None:
        body["secure_aggregation"] = secure
    if options.federated_evaluation:
        body["federated_evaluation"] = {
            "every_rounds": options.federated_evaluation,
            "fraction": 1.0,
            "min_devices": 1,
            "timeout_s": options.round_timeout_s,
        }
    return body


def check_strategy(name: str, params: dict[str, Any]) -> StrategySpec:
    """The strategy as the gateway will read it; ``ValueError`` naming what is wrong, before a
    stack is started for it."""
    try:
        spec: StrategySpec = _STRATEGY.validate_python({"name": name, "params": params})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'strategy'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ValueError(f"--strategy {name}: {problems}") from exc
    return spec


def key_value(item: str, *, option: str) -> tuple[str, str]:
    """Split a ``KEY=VALUE`` option value; ``ValueError`` naming ``option`` otherwise."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{option} wants KEY=VALUE, got {item!r}")
    return key, text


def strategy_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON where it is JSON (0.05, 2, null), else as text."""
    key, text = key_value(item, option="--strategy-param")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def round_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": row["round_number"],
        "attempt": row["attempt"],
        "accuracy": row["accuracy"],
        "loss": row["loss"],
        # The devices' example-weighted verdict (None: not evaluated by devices this round).
        "fed_accuracy": row.get("fed_accuracy"),
        "fed_loss": row.get("fed_loss"),
        "fed_devices": row.get("fed_devices"),
        "participants": len(row["aggregated"] or []),
        "dropped": len(row["dropped"] or []),
        "rejected": sum((row["rejected"] or {}).values()),
        "rejected_reasons": dict(row["rejected"] or {}),
        "duration_s": row["duration_s"],
        "bytes_up": row["bytes_up"],
        "bytes_down": row["bytes_down"],
        # The task's epsilon after this round (None: not a DP task).
        "epsilon_spent": row.get("epsilon_spent"),
        # The round's clipping norm C (None: not a DP task); adaptive clipping moves it.
        "clip_norm": row.get("clip_norm"),
    }


async def run_demo(
    settings: LauncherSettings, options: DemoOptions, *, keep_running: bool, console: Console
) -> dict[str, Any]:
    """Run the demo and return the result document (the --json content)."""
    began = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - began - sum(phases.values()), 3)

    strategy = check_strategy(options.strategy, options.strategy_params)
    privacy = privacy_section(options)
    secure = secure_aggregation_section(options)
    fleet = launcher.Fleet(
        name=f"demo{uuid4().hex[:6]}",
        devices=options.devices,
        dataset=options.dataset,
        partitioning="iid" if options.non_iid is None else "dirichlet",
        alpha=options.non_iid or 0.5,
        seed=options.seed,
        malicious=options.malicious,
        attack=options.attack,
        attack_scale=options.attack_scale,
        privacy_level=options.local_dp,
        secagg_dropout=options.secagg_dropout or 0.0,
        profiles=options.profiles,
        speedup=options.speedup,
        availability=str(Path(options.availability).resolve())
        if options.availability not in ("always", "diurnal")
        else options.availability,
        failure_rate=options.failure_rate,
        min_size=options.min_size,
        processes=options.processes,
    )
    attackers = (
        f", {options.malicious:g} of them malicious ({options.attack} x{options.attack_scale:g})"
        if options.malicious > 0
        else ""
    )
    console.print(
        f"starting {fleet.devices} simulated devices (fleet {fleet.name}, {fleet.dataset}, "
        f"{fleet.partitioning}{attackers})"
    )
    started_here = launcher.running_stack(settings) is None
    simulator = None
    try:
        if started_here:
            stack = launcher.up(settings, log=console.print, fleets=[fleet])
            simulator = stack.process(fleet.process_name)
        else:
            stack = launcher.up(settings, log=console.print)
            simulator = launcher.start_simulator(settings, stack, fleet)
        mark("stack_up_s")
        secret, _ = launcher.jwt_secret(settings)
        # Admin: the demo reads its devices' privacy ledgers (admin-only), besides running a task.
        token = auth.issue_token(secret=secret, subject="fedengine-demo", role=auth.Role.ADMIN)
        async with FedEngineClient(stack.gateway_url, token) as client:
            await client.wait_for_devices(
                options.devices, prefix=f"{fleet.name}-", timeout_s=settings.ready_timeout_s
            )
            mark("fleet_ready_s")
            task = task_body(
                options, fleet_name=fleet.name, strategy=strategy, privacy=privacy, secure=secure
            )
            note = min_devices(options, strategy)[1]
            if note is not None:
                console.print(note)
            task_id = await client.create_federated_task(**task)
            await client.start_federated_training(task_id)
            columns = (
                TextColumn("[bold]round"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[accuracy]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as progress:
                bar = progress.add_task("rounds", total=options.rounds, accuracy="")
                deadline = time.monotonic() + options.rounds * (options.round_timeout_s * 4) + 60
                while True:
                    state = await client.get_task(task_id)
                    done = state["current_round"]
                    accuracy = state["latest_accuracy"]
                    progress.update(
                        bar,
                        completed=done,
                        accuracy="" if accuracy is None else f"accuracy {accuracy:.4f}",
                    )
                    if state["state"] in FINISHED:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"task {task_id} did not finish in time")
                    await _sleep(0.1)
            mark("training_s")
            tries = await client.get_rounds(task_id)
            rounds = [round_summary(r) for r in tries if r["status"] == "completed"]
            budget = await client.get_privacy_budget(task_id) if privacy is not None else None
            local = None
            if options.local_dp != "none":
                asked = local_dp_asks(tries)
                ledgers = await _device_ledgers(
                    client,
                    [f"{fleet.name}-{i:04d}" for i in range(options.devices)],
                    task_id,
                    asked=asked,
                )
                local = local_dp_section(task_id, options.local_dp, ledgers, asked)
        result = {
            "task_id": task_id,
            "status": state["state"],
            "stop_reason": state["stop_reason"],
            "config": {
                **asdict(options),
                "fleet": fleet.name,
                "partitioning": fleet.partitioning,
                "task": task,
                "bootstrap_servers": stack.bootstrap_servers,
                "embedded_broker": stack.broker is not None,
                "embedded_postgres": stack.postgres_data is not None,
                # The bound the aggregator's validation held each update to, before the
                # strategy saw it (an attacker's update above it is rejected, not aggregated).
                "max_update_norm": state["spec"].get("max_update_norm"),
            },
            "rounds": rounds,
            "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
            "final_fed_accuracy": rounds[-1]["fed_accuracy"] if rounds else None,
            "privacy": None
            if budget is None
            else {
                "epsilon_budget": budget["epsilon_budget"],
                "epsilon_spent": budget["epsilon_spent"],
                "delta": budget["delta"],
                "accountant": budget["accountant"],
                "noise_multiplier": budget["noise_multiplier"],
                "calibrated": budget["calibrated"],
                "clip_norm": budget["clip_norm"],
                "adaptive_clipping": budget.get("adaptive_clipping"),
                "releases": budget["releases"],
                "refusals": sum(1 for a in budget["audit"] if a["decision"] == "refused"),
                # The privacy service's audit rows by decision (approved, refused, duplicate).
                "audit": dict(Counter(a["decision"] for a in budget["audit"])),
                "ledger": [
                    {
                        "round": r["round_number"],
                        "attempt": r["attempt"],
                        "sample_rate": r["sample_rate"],
                        "noise_multiplier": r["noise_multiplier"],
                        "mechanism": r["mechanism"],
                        "clip_norm": r["clip_norm"],
                        # Adaptive clipping's split of z (None without it).
                        "update_noise_multiplier": r.get("update_noise_multiplier"),
                        "count_noise_std": r.get("count_noise_std"),
                        "epsilon_after": r["epsilon_after"],
                    }
                    for r in budget["release_log"]
                ],
            },
            "local_dp": local,
            # The task's SecAgg+ section as the coordinator stored it (None: off), and the
            # simulator's injected dropout.
            "secure_aggregation": None
            if secure is None
            else {
                "section": state["spec"].get("secure_aggregation"),
                "dropout": options.secagg_dropout or 0.0,
            },
            "wall_s": None,
            "phases": phases,
        }
    finally:
        if simulator is not None:
            # The demo's devices go with it: nothing offline is left in the registry.
            fleets.stop(settings, fleet.name)
        if started_here and not keep_running:
            launcher.down(settings)
    mark("teardown_s")
    result["wall_s"] = round(time.perf_counter() - began, 3)
    return result


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
