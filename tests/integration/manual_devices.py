"""The test plays devices whose keys it holds: enrol, receive train requests, send updates."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import arrays, codec, datasets, models, signing, topics
from fedcommon.messages.v1 import (
    DeviceType,
    HeartbeatSent,
    ModelArchitecture,
    TrainRequested,
    UpdateMetrics,
    UpdateSubmitted,
)
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.kafka_tools import enrol, find_records, send


@dataclass
class ManualRound:
    task_id: str
    names: list[str]
    keys: dict[str, Ed25519PrivateKey]
    requests: dict[str, TrainRequested]

    def update(
        self, name: str, delta: list[np.ndarray], *, signer: Ed25519PrivateKey | None = None
    ) -> UpdateSubmitted:
        return signed_update(self.requests[name], name, self.keys[name], delta, signer=signer)

    async def send_all(self, stack: Stack, delta: list[np.ndarray]) -> dict[str, Any]:
        """Every device sends ``delta``; return the task once it has finished."""
        for name in self.names:
            await send(
                stack.kafka, topics.UPDATES, key=self.task_id, message=self.update(name, delta)
            )
        async with stack.client() as client:
            return await client.wait_for_task(
                self.task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=60
            )

    def heartbeating(
        self, stack: Stack, *, every_s: float = 1.0
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Keep the devices online (signed heartbeats) while the block runs."""
        return heartbeating(stack, self.keys, every_s=every_s)


@asynccontextmanager
async def heartbeating(
    stack: Stack, keys: dict[str, Ed25519PrivateKey], *, every_s: float = 1.0
) -> AsyncIterator[None]:
    """Keep ``keys``' devices online (signed heartbeats) while the block runs."""

    async def beat() -> None:
        while True:
            for name, key in keys.items():
                sent_at = datetime.now(UTC)
                # Increasing across every block for the same devices: the registry refuses a
                # sequence it has seen (replay protection).
                sequence = int(sent_at.timestamp() * 1_000_000)
                payload = signing.heartbeat_payload(
                    device_id=name,
                    sequence=sequence,
                    sent_at_us=int(sent_at.timestamp() * 1_000_000),
                )
                await send(
                    stack.kafka,
                    topics.DEVICES,
                    key=name,
                    message=HeartbeatSent(
                        producer="pytest",
                        device_id=name,
                        sequence=sequence,
                        sent_at=sent_at,
                        signature=key.sign(payload),
                    ),
                )
            await asyncio.sleep(every_s)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def mlp_shapes() -> list[tuple[int, ...]]:
    dataset = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP, input_shape=dataset.input_shape, num_classes=10, seed=0
    )
    return [w.shape for w in models.get_arrays(model)]


def mlp_arrays(data: bytes) -> list[np.ndarray]:
    """Return the weights of an MLP global model downloaded as safetensors."""
    dataset = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP, input_shape=dataset.input_shape, num_classes=10, seed=0
    )
    return models.get_arrays(models.load_into(model, data))


def constant_delta(value: float) -> list[np.ndarray]:
    return [np.full(shape, value, dtype=np.float32) for shape in mlp_shapes()]


def signed_update(
    request: TrainRequested,
    device_id: str,
    key: Ed25519PrivateKey,
    delta: list[np.ndarray],
    *,
    signer: Ed25519PrivateKey | None = None,
) -> UpdateSubmitted:
    update = arrays.to_bytes(delta)
    if request.round_id is None:
        raise ValueError("train request without round_id")
    payload = signing.update_payload(
        task_id=request.task_id,
        round_id=request.round_id,
        device_id=device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=10,
        update=update,
    )
    return UpdateSubmitted(
        producer="pytest",
        round_id=request.round_id,
        task_id=request.task_id,
        device_id=device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=10,
        update=update,
        metrics=UpdateMetrics(train_loss=1.0, train_accuracy=0.5, duration_s=0.01),
        signature=(signer or key).sign(payload),
    )


async def open_manual_round(
    stack: Stack, client: FedEngineClient, *, label: str, count: int = 3, **spec: Any
) -> ManualRound:
    """Enrol ``count`` devices, start a one-round task on them, collect their train requests."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{label}-{tag}-{i}" for i in range(count)]
    keys = {
        name: await enrol(
            stack.kafka, name, token=stack.enrolment_token, device_type=DeviceType.DESKTOP
        )
        for name in names
    }
    body: dict[str, Any] = {
        "task_name": label,
        "participating_devices": names,
        "devices_per_round": count,
        "min_devices": count,
        "rounds": 1,
        "round_timeout_s": 30,
    }
    body.update(spec)
    # Online until the round has opened: the tests' registry takes a device silent for 4 s as
    # offline, and under load creating and starting a task can take longer than that.
    async with heartbeating(stack, keys):
        await client.wait_for_devices(count, prefix=f"{label}-{tag}-")
        task_id = await client.create_federated_task(**body)
        await client.start_federated_training(task_id)
        records = await find_records(
            stack.kafka,
            topics.DEVICE_COMMANDS,
            [lambda r, n=name: r.key == n.encode() for name in names],
        )
    requests: dict[str, TrainRequested] = {}
    for name, record in zip(names, records, strict=True):
        message = codec.decode(record.value)
        if not isinstance(message, TrainRequested):
            raise AssertionError(f"expected a train request, got {message.type}")
        requests[name] = message
    return ManualRound(task_id, names, keys, requests)
