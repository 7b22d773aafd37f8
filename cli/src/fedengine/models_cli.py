"""``fedengine models``: upload an initial model (a safetensors file) and list the uploads.

Like ``fedengine enrolment-token``, it speaks to the local stack's gateway (or
``--gateway-url``) with a token signed with FEDENGINE_JWT_SECRET (or the local stack's
secret); ``--token`` (FEDENGINE_TOKEN) uses a token someone issued instead.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from fedcommon import auth
from fedengine import launcher
from fedengine.sdk import FedEngineClient, FedEngineError
from fedengine.settings import LauncherSettings

models_app = typer.Typer(
    help="Initial models: upload a safetensors file for tasks to start from, list uploads.",
    no_args_is_help=True,
)

GatewayUrl = Annotated[
    str | None, typer.Option(help="a deployment's gateway (default: the local stack's)")
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="FEDENGINE_TOKEN",
        help="a bearer token (default: one signed with the local secret)",
        show_default=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _client(gateway_url: str | None, token: str | None, role: auth.Role) -> FedEngineClient:
    """A client of ``gateway_url`` (else the running stack's) with ``token`` (else one signed
    with the local secret for ``role``)."""
    settings = LauncherSettings()
    if gateway_url is None:
        stack = launcher.running_stack(settings)
        if stack is None:
            raise _fail("no stack is running: fedengine up, or pass --gateway-url")
        gateway_url = stack.gateway_url
    if not token:
        secret, _ = launcher.jwt_secret(settings)
        token = auth.issue_token(secret=secret, subject="fedengine-cli", role=role)
    return FedEngineClient(gateway_url, token)


async def upload(
    client: FedEngineClient, path: Path, *, name: str | None, timeout_s: float
) -> dict[str, Any]:
    """Upload the file at ``path`` (named after it unless ``name``) and return it as stored."""
    async with client:
        return await client.upload_model(
            path.read_bytes(), name=name or path.stem, timeout_s=timeout_s
        )


async def list_all(client: FedEngineClient) -> list[dict[str, Any]]:
    async with client:
        return await client.list_models()


def _run(call: Any) -> Any:
    try:
        return asyncio.run(call)
    except (FedEngineError, TimeoutError) as exc:
        raise _fail(str(exc)) from exc
    except httpx.TransportError as exc:
        raise _fail(f"the gateway does not answer: {type(exc).__name__}: {exc}") from exc


@models_app.command("upload")
def upload_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="the model, a .safetensors file"
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="a name for people (default: the file's name)")
    ] = None,
    timeout_s: Annotated[
        float, typer.Option(min=0.0, help="how long to wait for the coordinator to store it")
    ] = 60.0,
    gateway_url: GatewayUrl = None,
    token: Token = None,
) -> None:
    """Upload FILE (finite F32 tensors, within one Kafka record) and print the stored model as
    JSON: its model_id and sha256 are what a task's initial_model names."""
    client = _client(gateway_url, token, auth.Role.OPERATOR)
    stored = _run(upload(client, file, name=name, timeout_s=timeout_s))
    typer.echo(json.dumps(stored, indent=2))


@models_app.command("list")
def list_command(gateway_url: GatewayUrl = None, token: Token = None) -> None:
    """Print every uploaded model as JSON, newest first (never their bytes)."""
    client = _client(gateway_url, token, auth.Role.VIEWER)
    typer.echo(json.dumps(_run(list_all(client)), indent=2))
