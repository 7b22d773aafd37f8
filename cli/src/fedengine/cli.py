"""The ``fedengine`` command."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any
from uuid import uuid4

import typer
from rich.console import Console
from rich.table import Table

from fedcommon import auth, datasets, signing, trust
from fedcommon.messages.v1 import ModelArchitecture, PrivacyLevel
from fedengine import fleets, launcher
from fedengine.demo import (
    AttackKind,
    DatasetChoice,
    DemoOptions,
    StrategyName,
    check_attack,
    check_behaviour,
    check_strategy,
    key_value,
    privacy_section,
    run_demo,
    secure_aggregation_section,
    secure_aggregation_summary,
)
from fedengine.demo import strategy_param as strategy_param_of
from fedengine.models_cli import models_app
from fedengine.privacy_cli import privacy_app
from fedengine.settings import LauncherSettings

Malicious = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="fraction of the devices that attack (chosen from the seed; the task is not told)",
    ),
]
Attack = Annotated[AttackKind, typer.Option(help="what the malicious devices send")]
LocalDpLevel = Annotated[
    PrivacyLevel,
    typer.Option(
        help="the privacy level the devices enrol with: low, medium or high trains with local "
        "DP-SGD (epsilon 8, 3 or 1 per task, delta 1e-5)"
    ),
]
DatasetOption = Annotated[
    DatasetChoice,
    typer.Option(
        help="the data set the devices hold and the task trains on (fashion_mnist: installed "
        "by make install)"
    ),
]
AttackScale = Annotated[
    float,
    typer.Option(
        help="the attack's strength: the sign-flipped update's factor, the Gaussian's standard "
        "deviation, the label-flipped update's factor"
    ),
]

ProfilesOption = Annotated[
    str,
    typer.Option(
        "--profiles",
        help='the mix of device types, e.g. "mobile:0.6,iot:0.2,desktop:0.15,cloud:0.05", each '
        "device's speeds, battery and network drawn from its type's profile (default: types "
        "in turn)",
    ),
]
FailureRate = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="the share of selected devices that fail each round (crash mid-training or lose "
        "the network during the upload); the round goes on with the survivors",
    ),
]
Speedup = Annotated[
    float,
    typer.Option(help="simulated seconds per wall second of the devices' training and transfers"),
]
OverSelection = Annotated[
    float,
    typer.Option(
        min=1.0,
        max=4.0,
        help="ask this many times --per-round devices and close each round once --per-round "
        "updates are in (not with DP or secure aggregation)",
    ),
]
SimulatorProcesses = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="simulator processes sharing the fleet: each enrols and heartbeats a share of the "
        "devices and trains those whose commands reach it",
    ),
]
Availability = Annotated[
    str,
    typer.Option(
        help="when devices are available: always, diurnal (each type's pattern over the day) "
        "or the path of a JSON trace"
    ),
]

app = typer.Typer(help="FedEngine: federated learning over Kafka.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
app.add_typer(models_app, name="models")
console = Console()


@app.command()
def up() -> None:
    """Start the broker and PostgreSQL (unless configured), then every service, detached, and
    the fleets that ran when the stack went down; on a running stack, start its supervisor
    again if it is gone."""
    stack = launcher.up(LauncherSettings(), log=console.print)
    console.print(
        f"[green]up[/green]: gateway {stack.gateway_url}, broker {stack.bootstrap_servers}"
    )


@app.command()
def down() -> None:
    """Stop everything ``up`` started (also after a crash left stale pid files); its fleets
    are remembered for the next ``up`` (``fedengine fleet stop NAME`` forgets one)."""
    stopped = launcher.down(LauncherSettings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show every process (pid, uptime, restarts, health), the broker, the database, the home."""
    state = launcher.status(LauncherSettings())
    if as_json:
        console.print_json(json.dumps(state))
        return
    console.print(f"home: {state['home']}")
    if "processes" not in state:
        console.print("nothing runs: fedengine up")
        return
    table = Table("process", "pid", "health", "uptime (s)", "restarts", "last exit")
    supervisor = state["supervisor"]
    table.add_row(
        "supervisor",
        str(supervisor["pid"]),
        "up" if supervisor["up"] else "down",
        str(supervisor["uptime_s"] or ""),
        str(supervisor["restarts"]),
        "",
    )
    broker, postgres = state["broker"], state["postgres"]
    table.add_row(
        f"broker {broker['bootstrap_servers']}",
        str(broker["pid"]),
        "up" if broker["up"] else "down",
        "",
        str(broker["restarts"]),
        "",
    )
    table.add_row(
        f"postgres {postgres['data'] or '(external)'}",
        str(postgres["pid"]),
        "up" if postgres["pid"] or not postgres["embedded"] else "down",
        "",
        str(postgres["restarts"]),
        "",
    )
    for name, process in state["processes"].items():
        table.add_row(
            name,
            str(process["pid"]),
            process["health"],
            str(process["uptime_s"] or ""),
            str(process["restarts"]),
            "" if process["last_exit"] is None else str(process["last_exit"]),
        )
    console.print(table)
    console.print(f"gateway: {state['gateway_url']}")
    if not supervisor["up"]:
        console.print(
            "[red]no supervisor runs the stack[/red]: a process that crashes stays down "
            "(the gateway's /ready answers 503); fedengine up starts one, which adopts them"
        )


@app.command()
def restart(
    name: Annotated[str, typer.Argument(help="a service (registry, coordinator...) or fleet")],
    kill: Annotated[bool, typer.Option(help="SIGKILL instead of a graceful stop")] = False,
) -> None:
    """Restart one process of the running stack and wait until it is ready again."""
    try:
        process, exit_status = launcher.restart(LauncherSettings(), name, kill=kill)
    except (LookupError, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{name} restarted: pid {process.pid} (the old one exited with {exit_status})")


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="a service, a fleet's simulator-NAME, supervisor")],
    lines: Annotated[int, typer.Option(min=1, help="how many of the last lines")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing")] = False,
) -> None:
    """Show a process's log (under FEDENGINE_HOME/logs)."""
    settings = LauncherSettings()
    path = settings.log_dir / f"{name}.log"
    if not path.exists():
        known = sorted(p.stem for p in settings.log_dir.glob("*.log"))
        console.print(f"[red]no log for {name!r}[/red]; there are: {', '.join(known) or 'none'}")
        raise typer.Exit(1)
    with open(path, errors="replace") as handle:
        for line in handle.readlines()[-lines:]:
            typer.echo(line.rstrip("\n"))
        while follow:
            line = handle.readline()
            if line:
                typer.echo(line.rstrip("\n"))
            else:
                time.sleep(0.2)


fleet_app = typer.Typer(help="Simulated devices attached to a running stack.")
app.add_typer(fleet_app, name="fleet")


@fleet_app.callback(invoke_without_command=True)
def fleet(
    context: typer.Context,
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="how many devices")] = 10,
    dataset: DatasetOption = DatasetChoice.DIGITS,
    non_iid: Annotated[
        float | None, typer.Option(help="Dirichlet alpha for non-IID data (default: IID)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for data partitions")] = 0,
    name: Annotated[str | None, typer.Option(help="fleet name (default: generated)")] = None,
    malicious: Malicious = 0.0,
    attack: Attack = AttackKind.SIGN_FLIP,
    attack_scale: AttackScale = 1.0,
    privacy_level: LocalDpLevel = PrivacyLevel.NONE,
    profiles: ProfilesOption = "",
    failure_rate: FailureRate = 0.0,
    speedup: Speedup = 100.0,
    availability: Availability = "always",
    processes: SimulatorProcesses = 1,
) -> None:
    """Attach simulated devices to the running stack (`fedengine fleet stop NAME` removes them)."""
    if context.invoked_subcommand is not None:
        return
    try:
        check_attack(malicious, attack_scale)
        check_behaviour(
            profiles=profiles,
            availability=availability,
            speedup=speedup,
            failure_rate=failure_rate,
        )
        datasets.check_installed(dataset.value)
        datasets.check_partition(dataset.value, devices)
    except (ValueError, datasets.DatasetNotInstalled) as exc:
        raise typer.BadParameter(str(exc)) from exc
    fleet_name = name or f"fleet-{uuid4().hex[:6]}"
    chosen = launcher.Fleet(
        name=fleet_name,
        devices=devices,
        dataset=dataset.value,
        partitioning="iid" if non_iid is None else "dirichlet",
        alpha=non_iid or 0.5,
        seed=seed,
        malicious=malicious,
        attack=attack.value,
        attack_scale=attack_scale,
        privacy_level=privacy_level.value,
        profiles=profiles,
        failure_rate=failure_rate,
        speedup=speedup,
        availability=availability
        if availability in ("always", "diurnal")
        else str(Path(availability).resolve()),
        processes=processes,
    )
    try:
        process = fleets.start(LauncherSettings(), chosen)
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"fleet {fleet_name}: {devices} devices enrolled ({fleet_name}-0000 ... "
        f"{fleet_name}-{devices - 1:04d}), pid {process.pid}"
    )


@fleet_app.command("stop")
def fleet_stop(name: Annotated[str, typer.Argument(help="the fleet's name")]) -> None:
    """Stop a fleet and remove its devices."""
    try:
        removed = fleets.stop(LauncherSettings(), name)
    except (LookupError, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"fleet {name} stopped; {removed} device(s) removed")


@app.command()
def token(
    role: Annotated[auth.Role, typer.Option(help="admin, operator or viewer")] = auth.Role.VIEWER,
    subject: Annotated[str, typer.Option(help="who the token names")] = "cli",
    ttl_s: Annotated[int, typer.Option(help="validity in seconds")] = 3600,
) -> None:
    """Print a bearer token signed with the local secret."""
    secret, _ = launcher.jwt_secret(LauncherSettings())
    typer.echo(auth.issue_token(secret=secret, subject=subject, role=role, ttl_s=ttl_s))


@app.command("enrolment-token")
def enrolment_token(
    fleet: Annotated[str, typer.Option(help="the fleet its devices join")],
    max_devices: Annotated[int, typer.Option(help="how many devices may enrol with it")] = 100,
    expires_in_s: Annotated[float, typer.Option(help="lifetime in seconds")] = 7 * 86_400,
    gateway_url: Annotated[
        str | None, typer.Option(help="a deployment's gateway (default: the local stack's)")
    ] = None,
) -> None:
    """Issue an enrolment token for a fleet and print it (it is shown once).

    Devices enrol themselves over Kafka with it: a simulator takes it as
    SIMULATOR_ENROLMENT_TOKEN. The admin token is signed with FEDENGINE_JWT_SECRET (or the
    local stack's secret).
    """
    settings = LauncherSettings()
    if gateway_url is None:
        stack = launcher.running_stack(settings)
        if stack is None:
            console.print("[red]no stack is running[/red]: fedengine up, or pass --gateway-url")
            raise typer.Exit(1)
        gateway_url = stack.gateway_url
    secret, _ = launcher.jwt_secret(settings)
    typer.echo(
        launcher.issue_enrolment_token(
            gateway_url, secret, fleet, max_devices=max_devices, expires_in_s=expires_in_s
        )
    )


@app.command()
def keys() -> None:
    """Print a fresh set of service keys as an env file, for docker-compose or Kubernetes.

    One private key per service (FEDENGINE_<SERVICE>_KEY, each given to its own container as
    FEDENGINE_SERVICE_KEY) and every public key (FEDENGINE_SERVICE_KEYS, given to all).
    """
    private = {
        name: signing.private_key_to_bytes(signing.generate_private_key()).hex()
        for name in trust.SERVICES
    }
    for name, key in private.items():
        typer.echo(f"FEDENGINE_{name.upper()}_KEY={key}")
    typer.echo(f"FEDENGINE_SERVICE_KEYS='{json.dumps(launcher.public_keys(private))}'")


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, help="simulated devices")] = 20,
    per_round: Annotated[int, typer.Option(min=1, help="devices per round")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="rounds")] = 10,
    dataset: DatasetOption = DatasetChoice.DIGITS,
    non_iid: Annotated[float | None, typer.Option(help="Dirichlet alpha (default: IID)")] = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    model: Annotated[ModelArchitecture, typer.Option(help="model")] = ModelArchitecture.MLP,
    hidden: Annotated[
        int | None, typer.Option(min=1, max=4096, help="the MLP's hidden units (64)")
    ] = None,
    standardize: Annotated[
        bool,
        typer.Option(
            "--standardize",
            help="standardise the data set's features by its training split's mean and "
            "standard deviation (off: pixels as loaded)",
        ),
    ] = False,
    learning_rate: Annotated[float, typer.Option(help="local SGD learning rate")] = 0.3,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = 5,
    batch_size: Annotated[int, typer.Option(help="local batch size")] = 16,
    malicious: Malicious = 0.0,
    attack: Attack = AttackKind.SIGN_FLIP,
    attack_scale: AttackScale = 1.0,
    strategy: Annotated[
        StrategyName, typer.Option(help="aggregation strategy (the task is not told of attackers)")
    ] = StrategyName.FEDAVG,
    strategy_param: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the strategy, repeatable (e.g. eta=0.03, f=2)"),
    ] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(help="central DP: the task's epsilon budget, enforced (default: no DP)"),
    ] = None,
    dp_delta: Annotated[float, typer.Option(help="central DP: the budget's delta")] = 1e-5,
    dp_clip: Annotated[float, typer.Option(help="central DP: each update's L2 clip norm")] = 1.0,
    dp_noise_multiplier: Annotated[
        float | None,
        typer.Option(
            help="central DP: noise std / clip norm; without it the privacy service "
            "calibrates one that spends the budget over --rounds"
        ),
    ] = None,
    dp_clip_quantile: Annotated[
        float | None,
        typer.Option(
            help="central DP: adaptive clipping (Andrew et al. 2021): C, starting at --dp-clip, "
            "follows this quantile of the update norms (e.g. 0.5); its cost is in the budget"
        ),
    ] = None,
    local_dp: Annotated[
        PrivacyLevel,
        typer.Option(
            "--local-dp",
            help="local DP-SGD on every device: the privacy level the fleet enrols with "
            "(low: epsilon 8 per task, medium: 3, high: 1; delta 1e-5)",
        ),
    ] = PrivacyLevel.NONE,
    secure_aggregation: Annotated[
        bool,
        typer.Option(
            "--secure-aggregation",
            help="SecAgg+: devices mask their clipped, quantised updates so that the "
            "aggregator learns only the sum (needs --per-round >= 3; min_devices is raised "
            "to 3 if lower)",
        ),
    ] = False,
    secagg_dropout: Annotated[
        float | None,
        typer.Option(
            help="with --secure-aggregation: each device's chance in [0, 1) to drop out at "
            "each stage after training (the simulator's SIMULATOR_SECAGG_DROPOUT)",
        ),
    ] = None,
    secagg_bits: Annotated[
        int | None,
        typer.Option(help="with --secure-aggregation: bits per quantised coordinate (16)"),
    ] = None,
    secagg_stage_timeout: Annotated[
        float | None,
        typer.Option(
            help="with --secure-aggregation: seconds each stage after training waits for "
            "devices that dropped (30)"
        ),
    ] = None,
    federated_evaluation: Annotated[
        int,
        typer.Option(
            min=0,
            help="every this many rounds (and after the last) the fleet's devices evaluate the "
            "new version on their own held-out shares; the task's stopping rules then read "
            "their accuracy (0: off)",
        ),
    ] = 0,
    profiles: ProfilesOption = "",
    failure_rate: FailureRate = 0.0,
    speedup: Speedup = 100.0,
    availability: Availability = "always",
    over_selection: OverSelection = 1.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
    keep_running: Annotated[bool, typer.Option(help="leave the stack running")] = False,
) -> None:
    """Run a whole federated task on simulated devices and print the result."""
    if per_round > devices:
        raise typer.BadParameter("--per-round cannot exceed --devices")
    try:
        check_attack(malicious, attack_scale)
        check_behaviour(
            profiles=profiles,
            availability=availability,
            speedup=speedup,
            failure_rate=failure_rate,
        )
        datasets.check_installed(dataset.value)
        datasets.check_partition(dataset.value, devices)
        params = dict(strategy_param_of(item) for item in strategy_param or [])
        needed = check_strategy(strategy.value, params).params.min_updates
        if per_round < needed:
            raise ValueError(
                f"--strategy {strategy.value} needs at least {needed} updates a round; "
                f"--per-round is {per_round}"
            )
    except (ValueError, datasets.DatasetNotInstalled) as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = DemoOptions(
        devices=devices,
        per_round=per_round,
        rounds=rounds,
        dataset=dataset.value,
        non_iid=non_iid,
        seed=seed,
        model=model,
        hidden=hidden,
        standardize=standardize,
        learning_rate=learning_rate,
        local_epochs=local_epochs,
        batch_size=batch_size,
        malicious=malicious,
        attack=attack.value,
        attack_scale=attack_scale,
        strategy=strategy.value,
        strategy_params=params,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        dp_clip=dp_clip,
        dp_noise_multiplier=dp_noise_multiplier,
        dp_clip_quantile=dp_clip_quantile,
        local_dp=local_dp.value,
        secure_aggregation=secure_aggregation,
        secagg_bits=secagg_bits,
        secagg_dropout=secagg_dropout,
        secagg_stage_timeout=secagg_stage_timeout,
        federated_evaluation=federated_evaluation,
        profiles=profiles,
        failure_rate=failure_rate,
        speedup=speedup,
        availability=availability,
        over_selection=over_selection,
    )
    try:
        privacy_section(options)
        secure_aggregation_section(options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = asyncio.run(
        run_demo(LauncherSettings(), options, keep_running=keep_running, console=console)
    )
    table = Table(
        "round",
        "accuracy",
        "loss",
        "participants",
        "dropped",
        "rejected",
        "seconds",
        "epsilon",
        "fed accuracy",
        caption=f"updates above the norm bound {result['config']['max_update_norm']} are "
        "rejected before aggregation",
    )
    for row in result["rounds"]:
        table.add_row(
            str(row["round"]),
            f"{row['accuracy']:.4f}",
            f"{row['loss']:.4f}",
            str(row["participants"]),
            str(row["dropped"]),
            str(row["rejected"]),
            f"{row['duration_s']:.2f}",
            "" if row["epsilon_spent"] is None else f"{row['epsilon_spent']:.4f}",
            "" if row["fed_accuracy"] is None else f"{row['fed_accuracy']:.4f}",
        )
    console.print(table)
    console.print(
        f"task {result['task_id']}: {result['status']} ({result['stop_reason']}), "
        f"final accuracy {result['final_accuracy']}, {result['wall_s']} s"
    )
    if result["privacy"] is not None:
        privacy = result["privacy"]
        console.print(
            f"privacy: epsilon {privacy['epsilon_spent']:.4f} of {privacy['epsilon_budget']:g} "
            f"spent (delta {privacy['delta']:g}, {privacy['accountant']}, noise multiplier "
            f"{privacy['noise_multiplier']:.4g}), {privacy['releases']} releases, "
            f"{privacy['refusals']} refused"
        )
    if result["secure_aggregation"] is not None:
        console.print(secure_aggregation_summary(result["secure_aggregation"]))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_path}")
    if result["status"] != "completed":
        raise typer.Exit(1)


bench_app = typer.Typer(help="Benchmarks that print JSON (see docs/benchmarks.md).")
app.add_typer(bench_app, name="bench")


@bench_app.command("demo")
def bench_demo(
    devices: Annotated[int, typer.Option(min=1)] = 20,
    per_round: Annotated[int, typer.Option(min=1)] = 10,
    rounds: Annotated[int, typer.Option(min=1)] = 10,
    non_iid: Annotated[float | None, typer.Option()] = None,
    model: Annotated[ModelArchitecture, typer.Option()] = ModelArchitecture.MLP,
) -> None:
    """Time the demo end to end: wall time and seconds per round."""
    from fedengine.bench import bench_demo as run

    options = DemoOptions(
        devices=devices, per_round=per_round, rounds=rounds, non_iid=non_iid, model=model
    )
    typer.echo(json.dumps(asyncio.run(run(LauncherSettings(), options)), indent=2))


@bench_app.command("idle")
def bench_idle(
    devices: Annotated[int, typer.Option(min=0, help="a fleet of this many devices")] = 0,
    warmup_s: Annotated[float, typer.Option(min=0)] = 20.0,
    window_s: Annotated[float, typer.Option(min=1)] = 30.0,
    hops: Annotated[int, typer.Option(min=1)] = 5,
    idle_gap_s: Annotated[float, typer.Option(min=0)] = 8.0,
    env: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the services (e.g. KAFKA_IDLE_FETCH_MAX_WAIT_MS=5)"),
    ] = None,
) -> None:
    """CPU of an idle stack per process, and the first command's latency after idleness
    (a fresh stack under a temporary home)."""
    from fedengine.bench_idle import IdleOptions
    from fedengine.bench_idle import bench_idle as run

    try:
        service_env = dict(key_value(item, option="--env") for item in env or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = IdleOptions(
        devices=devices, warmup_s=warmup_s, window_s=window_s, hops=hops, idle_gap_s=idle_gap_s
    )
    typer.echo(json.dumps(run(options, service_env=service_env), indent=2))


@bench_app.command("aggregate")
def bench_aggregate(
    participants: Annotated[int, typer.Option(min=1, help="updates in the round")],
    params: Annotated[int, typer.Option(min=1, help="values per update")],
    strategy: Annotated[str, typer.Option(help="fedavg, median, krum...")] = "fedavg",
    seed: Annotated[int, typer.Option(min=0, help="seed of the random updates")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """Time one round's aggregation and its peak memory (tracemalloc) with the pure strategy
    core: no broker, no database; updates generated one at a time."""
    from fedengine.bench import bench_aggregate as run

    try:
        result = run(participants=participants, params=params, strategy=strategy, seed=seed)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _print_json(result, json_path)


@bench_app.command("reference")
def bench_reference(
    devices: Annotated[int, typer.Option(min=1, help="devices the data set is split among")],
    per_round: Annotated[int, typer.Option(min=1, help="devices trained each round")],
    rounds: Annotated[int, typer.Option(min=1)],
    dataset: DatasetOption = DatasetChoice.DIGITS,
    model: Annotated[ModelArchitecture, typer.Option()] = ModelArchitecture.MLP,
    hidden: Annotated[int | None, typer.Option(min=1, help="MLP hidden units (64)")] = None,
    partition: Annotated[str, typer.Option(help="iid or dirichlet:ALPHA")] = "iid",
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    standardize: Annotated[
        bool, typer.Option(help="standardise features by the training split's statistics")
    ] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    min_size: Annotated[
        int, typer.Option(min=1, help="training examples each device holds at least")
    ] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """The floor: the same federated work as a plain sequential loop in this process (no
    broker, no database): FedAvg over the simulator's partition, central accuracy each round."""
    import psutil

    from fedengine.bench import machine
    from fedengine.bench_reference import ReferenceOptions, parse_partition
    from fedengine.bench_reference import bench_reference as run

    try:
        scheme, alpha = parse_partition(partition)
        datasets.check_installed(dataset.value)
        datasets.check_partition(dataset.value, devices, min_size=min_size)
        options = ReferenceOptions(
            devices=devices,
            per_round=per_round,
            rounds=rounds,
            dataset=dataset.value,
            model=model,
            hidden=hidden,
            partitioning=scheme,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            standardize=standardize,
            seed=seed,
            min_size=min_size,
        )
        result = run(options, started=psutil.Process().create_time(), machine=machine())
    except (ValueError, datasets.DatasetNotInstalled) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _print_json(result, json_path)


@bench_app.command("simulate")
def bench_simulate(
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="simulated devices")],
    per_round: Annotated[int, typer.Option(min=1, help="devices selected each round")],
    rounds: Annotated[int, typer.Option(min=1)],
    dataset: DatasetOption = DatasetChoice.DIGITS,
    model: Annotated[ModelArchitecture, typer.Option()] = ModelArchitecture.MLP,
    hidden: Annotated[int | None, typer.Option(min=1, help="MLP hidden units (64)")] = None,
    partition: Annotated[str, typer.Option(help="iid or dirichlet:ALPHA")] = "iid",
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.05,
    standardize: Annotated[
        bool, typer.Option(help="standardise features by the training split's statistics")
    ] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    failure_rate: FailureRate = 0.0,
    profiles: ProfilesOption = "",
    speedup: Speedup = 100.0,
    availability: Availability = "always",
    round_timeout_s: Annotated[
        float, typer.Option(min=0.1, help="each round's deadline, in wall seconds")
    ] = 30.0,
    min_size: Annotated[
        int, typer.Option(min=1, help="training examples each device holds at least")
    ] = 2,
    processes: SimulatorProcesses = 1,
    over_selection: OverSelection = 1.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """A federated task on simulated devices, on the running stack (started, and stopped
    after, when none runs): seconds per round, updates per second, the whole stack's peak
    memory, an idle device's bytes, failures by kind and the final accuracy."""
    from fedengine.bench_simulate import SimulateOptions, non_iid
    from fedengine.bench_simulate import bench_simulate as run

    if per_round > devices:
        raise typer.BadParameter("--per-round cannot exceed --devices")
    try:
        non_iid(partition)
        check_behaviour(
            profiles=profiles, availability=availability, speedup=speedup, failure_rate=0.0
        )
        datasets.check_installed(dataset.value)
        datasets.check_partition(dataset.value, devices, min_size=min_size)
    except (ValueError, datasets.DatasetNotInstalled) as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = SimulateOptions(
        devices=devices,
        per_round=per_round,
        rounds=rounds,
        dataset=dataset.value,
        model=model.value,
        hidden=hidden,
        partition=partition,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        standardize=standardize,
        seed=seed,
        failure_rate=failure_rate,
        profiles=profiles,
        speedup=speedup,
        availability=availability,
        round_timeout_s=round_timeout_s,
        min_size=min_size,
        processes=processes,
        over_selection=over_selection,
    )
    result = asyncio.run(run(LauncherSettings(), options))
    _print_json(result, json_path)


def _print_json(result: dict[str, Any], json_path: Path | None) -> None:
    """Print a bench result as one JSON line, and write it to ``json_path`` if given."""
    text = json.dumps(result)
    if json_path is not None:
        json_path.write_text(text + "\n")
    typer.echo(text)


@bench_app.command("secagg")
def bench_secagg(
    clients: Annotated[int, typer.Option(min=2, help="devices in the round")],
    dim: Annotated[int, typer.Option(min=1, help="values per update")],
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="share that leaves after its masked input")
    ] = 0.0,
    bits: Annotated[
        int, typer.Option(min=1, help="quantisation bits per value; the modulus adds log2 n")
    ] = 16,
    seed: Annotated[int, typer.Option(min=0, help="seed of the updates and dropouts")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """Run a whole SecAgg+ round (fedprivacy, real cryptography) in this process: time,
    upload bytes, expansion and the server's peak memory; check the sum is exact."""
    from fedengine.bench_secagg import bench_secagg as run

    try:
        result = run(clients=clients, dim=dim, dropout=dropout, bits=bits, seed=seed)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _print_json(result, json_path)
    if not result["exact"]:
        raise typer.Exit(1)


device_app = typer.Typer(help="Run a device with your own client code (the feddevice runtime).")
app.add_typer(device_app, name="device")


@device_app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def device_run(context: typer.Context) -> None:
    """Run one device against a stack: ``fedengine device run --help`` lists the options
    (those of ``feddevice run``; docs/bring-your-own-model.md explains them)."""
    from feddevice.command import main as feddevice_main

    raise typer.Exit(feddevice_main(["run", *context.args]))


@device_app.command(
    "identity",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def device_identity(context: typer.Context) -> None:
    """Print the device's id, public key and proof of possession (for operator enrolment)."""
    from feddevice.command import main as feddevice_main

    raise typer.Exit(feddevice_main(["identity", *context.args]))


@app.command("create-topics")
def create_topics() -> None:
    """Create every topic with its partitions and max.message.bytes (a deployment's init step,
    whatever KAFKA_CREATE_TOPICS says: that setting is for the services)."""
    from fedcommon.kafka import create_topics as create
    from fedcommon.settings import KafkaSettings

    settings = KafkaSettings()
    created = asyncio.run(create(settings, always=True))
    console.print(f"created {len(created)} topic(s) on {settings.bootstrap_servers}: {created}")


@app.command("acls")
def acls_command(
    prefix: Annotated[
        str, typer.Option(envvar="KAFKA_TOPIC_PREFIX", help="topic prefix of the deployment")
    ] = "",
    as_markdown: Annotated[bool, typer.Option("--markdown", help="a table, not a script")] = False,
    users: Annotated[
        bool, typer.Option(help="also create each principal's SCRAM credential first")
    ] = False,
    admin_user: Annotated[
        bool, typer.Option(help="also create the admin's SCRAM credential (own broker only)")
    ] = False,
    output: Annotated[Path | None, typer.Option(help="write here instead of printing")] = None,
) -> None:
    """Print the Kafka ACLs of every principal (services and the device fleet) as a script of
    kafka-acls.sh commands, derived from the topic registry (docs/security.md)."""
    from fedengine import acls

    if as_markdown:
        text = acls.markdown(prefix)
    else:
        text = acls.script(prefix, users=users, admin_user=admin_user)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        output.chmod(0o755)
        console.print(f"wrote {output}")


@app.command("kafka-passwords")
def kafka_passwords() -> None:
    """Print a fresh password for the Kafka admin and each principal, as an env file
    (FEDENGINE_KAFKA_PASSWORD_<PRINCIPAL>), for docker-compose or a Kubernetes secret."""
    import secrets

    from fedengine import acls

    for principal in [acls.ADMIN, *acls.principals()]:
        typer.echo(f"{acls.password_variable(principal)}={secrets.token_hex(24)}")
