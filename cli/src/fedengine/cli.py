"""The ``fedengine`` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcommon import auth, signing, trust
from fedcommon.messages.v1 import ModelArchitecture
from fedengine import launcher
from fedengine.demo import DemoOptions, run_demo
from fedengine.settings import LauncherSettings

app = typer.Typer(help="FedEngine: federated learning over Kafka.", no_args_is_help=True)
console = Console()


@app.command()
def up() -> None:
    """Start the broker and PostgreSQL (unless configured), then every service, detached."""
    stack = launcher.up(LauncherSettings(), log=console.print)
    console.print(
        f"[green]up[/green]: gateway {stack.gateway_url}, broker {stack.bootstrap_servers}"
    )


@app.command()
def down() -> None:
    """Stop everything ``up`` started (also after a crash left stale pid files)."""
    stopped = launcher.down(LauncherSettings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Show what runs."""
    console.print_json(json.dumps(launcher.status(LauncherSettings())))


@app.command()
def token(
    role: Annotated[auth.Role, typer.Option(help="admin, operator or viewer")] = auth.Role.VIEWER,
    subject: Annotated[str, typer.Option(help="who the token names")] = "cli",
    ttl_s: Annotated[int, typer.Option(help="validity in seconds")] = 3600,
) -> None:
    """Print a bearer token signed with the local secret."""
    secret, _ = launcher.jwt_secret(LauncherSettings())
    typer.echo(auth.issue_token(secret=secret, subject=subject, role=role, ttl_s=ttl_s))


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
    non_iid: Annotated[float | None, typer.Option(help="Dirichlet alpha (default: IID)")] = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    model: Annotated[ModelArchitecture, typer.Option(help="model")] = ModelArchitecture.MLP,
    learning_rate: Annotated[float, typer.Option(help="local SGD learning rate")] = 0.3,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = 5,
    batch_size: Annotated[int, typer.Option(help="local batch size")] = 16,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
    keep_running: Annotated[bool, typer.Option(help="leave the stack running")] = False,
) -> None:
    """Run a whole federated task on simulated devices and print the result."""
    if per_round > devices:
        raise typer.BadParameter("--per-round cannot exceed --devices")
    options = DemoOptions(
        devices=devices,
        per_round=per_round,
        rounds=rounds,
        non_iid=non_iid,
        seed=seed,
        model=model,
        learning_rate=learning_rate,
        local_epochs=local_epochs,
        batch_size=batch_size,
    )
    result = asyncio.run(
        run_demo(LauncherSettings(), options, keep_running=keep_running, console=console)
    )
    table = Table("round", "accuracy", "loss", "participants", "dropped", "rejected", "seconds")
    for row in result["rounds"]:
        table.add_row(
            str(row["round"]),
            f"{row['accuracy']:.4f}",
            f"{row['loss']:.4f}",
            str(row["participants"]),
            str(row["dropped"]),
            str(row["rejected"]),
            f"{row['duration_s']:.2f}",
        )
    console.print(table)
    console.print(
        f"task {result['task_id']}: {result['status']} ({result['stop_reason']}), "
        f"final accuracy {result['final_accuracy']}, {result['wall_s']} s"
    )
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
