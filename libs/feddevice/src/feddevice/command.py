"""``feddevice run`` (also ``fedengine device run``): run one device against a stack.

    feddevice run --app my_client:make_client --state-dir ./device-state \
        --gateway https://fedengine.example:8000 --token-file fleet.token \
        --bootstrap-servers broker:9092 [--set key=value ...]

Kafka security settings come from the same KAFKA_* environment variables the services read
(KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_CAFILE, ...). ``feddevice identity`` prints the device's
id, public key and proof of possession, for an operator who enrols it through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fedcommon import enrolment_tokens, signing
from fedcommon.messages.v1 import DeviceType, NetworkKind, PrivacyLevel
from fedcommon.settings import KafkaSettings
from feddevice.app import AppError, DeviceContext, load
from feddevice.client import Client
from feddevice.runtime import DeviceConfig, DeviceRuntime
from feddevice.state import StateError, load_or_create_identity


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddevice", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one device with your client code")
    run.add_argument("--app", required=True, help="module:attribute of a client or factory")
    run.add_argument("--state-dir", type=Path, required=True, help="identity and sent results")
    run.add_argument("--gateway", required=True, help="the gateway's URL (models come from it)")
    run.add_argument("--bootstrap-servers", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    run.add_argument("--topic-prefix", default=None, help="default: KAFKA_TOPIC_PREFIX")
    run.add_argument("--token-file", type=Path, help="an enrolment token, to enrol the device")
    run.add_argument("--coordinator-key", help="hex; needed when there is no token")
    run.add_argument("--aggregator-key", help="hex; with --coordinator-key")
    run.add_argument("--device-id", help="for a new state folder (default: dev-<random>)")
    run.add_argument("--device-name")
    run.add_argument(
        "--device-type", choices=[t.value for t in DeviceType], default=DeviceType.DESKTOP.value
    )
    run.add_argument(
        "--privacy-level", choices=[p.value for p in PrivacyLevel], default=PrivacyLevel.NONE.value
    )
    run.add_argument("--heartbeat-s", type=float, default=5.0)
    run.add_argument(
        "--network",
        choices=[n.value for n in NetworkKind],
        help="the link the device is on, reported with its heartbeats",
    )
    run.add_argument(
        "--fetch-try-s", type=float, default=15.0, help="longest one model download may take"
    )
    run.add_argument("--gateway-ca", help="a CA file to verify the gateway's certificate")
    run.add_argument("--app-path", type=Path, default=Path.cwd(), help="where --app is found")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to the factory"
    )
    identity = commands.add_parser("identity", help="print the device's id and public key")
    identity.add_argument("--state-dir", type=Path, required=True)
    identity.add_argument("--device-id")
    return parser


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise SystemExit(f"feddevice: --set {pair!r}: expected KEY=VALUE")
        settings[key] = value
    return settings


def _config(args: argparse.Namespace) -> DeviceConfig:
    overrides = {}
    if args.bootstrap_servers is not None:
        overrides["bootstrap_servers"] = args.bootstrap_servers
    if args.topic_prefix is not None:
        overrides["topic_prefix"] = args.topic_prefix
    token = None
    if args.token_file is not None:
        token = enrolment_tokens.EnrolmentToken.decode(args.token_file.read_text().strip())
    return DeviceConfig(
        state_dir=args.state_dir,
        gateway_url=args.gateway,
        kafka=KafkaSettings(**overrides),
        token=token,
        coordinator_key=bytes.fromhex(args.coordinator_key) if args.coordinator_key else None,
        aggregator_key=bytes.fromhex(args.aggregator_key) if args.aggregator_key else None,
        device_id=args.device_id,
        device_name=args.device_name,
        device_type=DeviceType(args.device_type),
        privacy_level=PrivacyLevel(args.privacy_level),
        heartbeat_s=args.heartbeat_s,
        fetch_try_s=args.fetch_try_s,
        network=None if args.network is None else NetworkKind(args.network),
        gateway_verify=args.gateway_ca or True,
    )


async def _run(config: DeviceConfig, client: Client) -> None:
    # Built inside the loop: aiokafka's clients bind to the running loop when created.
    runtime = DeviceRuntime(config, client)
    task = asyncio.create_task(runtime.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("feddevice").info("device %s stopped", runtime.device_id)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FEDDEVICE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per model fetch says nothing the runtime's
    # own lines do not.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "identity":
            identity = load_or_create_identity(args.state_dir, args.device_id)
            proof = identity.key.sign(
                signing.possession_payload(
                    device_id=identity.device_id, public_key=identity.public_key
                )
            )
            print(f"device_id: {identity.device_id}")
            print(f"public_key: {identity.public_key.hex()}")
            print(f"possession_signature: {proof.hex()}")
            return 0
        config = _config(args)
        device = load_or_create_identity(config.state_dir, config.device_id)
        client = load(
            args.app, DeviceContext(device.device_id, _settings(args.set)), search=args.app_path
        )
        asyncio.run(_run(config, client))
        return 0
    except (AppError, StateError, enrolment_tokens.InvalidToken, ValueError, OSError) as exc:
        print(f"feddevice: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
