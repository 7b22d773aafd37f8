"""The runtime's answer to a train request, with its I/O replaced by recorders: what user code
that misbehaves in each way leads to (found by a review: each of these crashed the runtime or
sent a silent zero update before)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import pytest

from fedcommon import codec, enrolment_tokens, models, signing
from fedcommon.messages.v1 import (
    DeclineReason,
    ModelArchitecture,
    TrainRequested,
    UpdateDeclined,
    UpdateSubmitted,
)
from fedcommon.settings import KafkaSettings
from feddevice.client import Config, EvaluateResult, FitResult, Parameters
from feddevice.runtime import DeviceConfig, DeviceRuntime

MODEL = models.to_safetensors(
    models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0)
)


class Client:
    def __init__(self, fit: Any) -> None:
        self._fit = fit

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        result: FitResult = self._fit(parameters, config)
        return result

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        return EvaluateResult(0.0, 1)


class Fetcher:
    async def fetch(self, task_id: UUID, version: int, sha256: str, *, until: datetime) -> bytes:
        return MODEL

    async def close(self) -> None:
        pass


CREATED: list[DeviceRuntime] = []


@pytest.fixture(autouse=True)
async def _close_producers() -> Any:
    yield
    while CREATED:
        await CREATED.pop().producer.stop()  # never started: nothing to flush


async def runtime(tmp_path: Path, fit: Any) -> tuple[DeviceRuntime, list[bytes]]:
    token = enrolment_tokens.issue(
        "f", coordinator_key=signing.public_key_bytes(signing.generate_private_key())
    )
    device = DeviceRuntime(
        DeviceConfig(
            state_dir=tmp_path,
            gateway_url="http://127.0.0.1:1",
            kafka=KafkaSettings(),
            token=token,
            device_id="dev-1",
        ),
        Client(fit),
    )
    CREATED.append(device)
    sent: list[bytes] = []

    async def send(base: str, key: str, value: bytes, *, until: datetime | None) -> bool:
        sent.append(value)
        return True

    device._send = send  # type: ignore[method-assign]
    device.fetcher = Fetcher()  # type: ignore[assignment]
    return device, sent


def request(seconds: float = 30.0) -> TrainRequested:
    return TrainRequested(
        producer="coordinator",
        round_id=uuid4(),
        task_id=uuid4(),
        device_id="dev-1",
        round_number=1,
        model_version=0,
        model_sha256=models.sha256_hex(MODEL),
        deadline=datetime.now(UTC) + timedelta(seconds=seconds),
        model_architecture=ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.1,
        local_epochs=1,
        batch_size=8,
        seed=0,
    )


def declined(sent: list[bytes]) -> UpdateDeclined:
    (value,) = sent
    message = codec.decode(value)
    assert isinstance(message, UpdateDeclined)
    return message


def step(parameters: Parameters) -> dict[str, np.ndarray]:
    return {name: np.asarray(array) + 0.01 for name, array in parameters.items()}


@pytest.mark.parametrize(
    ("fit", "expected"),
    [
        (lambda p, c: (step(p), 10, {}), "a tuple, not a FitResult"),  # Flower's shape
        (lambda p, c: FitResult(list(step(p).values()), 10), "cannot be sent"),
        (lambda p, c: FitResult(step(p), 10, None), "cannot be sent"),  # type: ignore[arg-type]
        (lambda p, c: FitResult({**step(p), "x": np.zeros(1)}, 10), "other tensors"),
        (lambda p, c: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["tuple", "list", "metrics-none", "extra-tensor", "raises"],
)
async def test_whatever_fit_hands_back_that_cannot_be_sent_is_declined(
    tmp_path: Path, fit: Any, expected: str
) -> None:
    device, sent = await runtime(tmp_path, fit)
    outcome = await device.train(request())
    assert expected in outcome and "declined" in outcome
    assert declined(sent).reason in (DeclineReason.FIT_FAILED, DeclineReason.WRONG_TENSORS)


async def test_a_fit_that_changes_the_global_model_in_place_is_declined_not_a_zero_update(
    tmp_path: Path,
) -> None:
    def in_place(parameters: Parameters, config: Config) -> FitResult:
        for array in parameters.values():
            array -= 0.1  # type: ignore[operator, misc]
        return FitResult(dict(parameters), 10)

    device, sent = await runtime(tmp_path, in_place)
    outcome = await device.train(request())
    assert "read-only" in outcome
    assert declined(sent).reason == DeclineReason.FIT_FAILED


async def test_a_good_fit_sends_its_update_once_and_a_redelivery_resends_the_same(
    tmp_path: Path,
) -> None:
    device, sent = await runtime(tmp_path, lambda p, c: FitResult(step(p), 10))
    asked = request()
    assert (await device.train(asked)).startswith("sent an update")
    assert await device.train(asked) == "resent the answer kept on disk"
    first, again = sent
    assert first == again and isinstance(codec.decode(first), UpdateSubmitted)


async def test_a_hung_fit_is_declined_and_holds_its_thread_so_the_next_is_declined_at_once(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def hang(parameters: Parameters, config: Config) -> FitResult:
        release.wait(30)
        return FitResult(step(parameters), 10)

    device, sent = await runtime(tmp_path, hang)
    try:
        outcome = await device.train(request(seconds=1.0))
        assert "did not return before the round's deadline" in outcome
        began = asyncio.get_running_loop().time()
        outcome = await device.train(request())
        assert "previous fit has still not returned" in outcome
        assert asyncio.get_running_loop().time() - began < 1.0
        assert [declined([value]).reason for value in sent] == [DeclineReason.FIT_TIMEOUT] * 2
    finally:
        release.set()


async def test_the_fetch_settings_reach_the_fetcher(tmp_path: Path) -> None:
    """--fetch-try-s once went nowhere (found by the frozen-gateway test)."""
    device = DeviceRuntime(
        DeviceConfig(
            state_dir=tmp_path,
            gateway_url="http://127.0.0.1:1",
            kafka=KafkaSettings(),
            coordinator_key=signing.public_key_bytes(signing.generate_private_key()),
            fetch_try_s=2.5,
        ),
        Client(lambda p, c: None),
    )
    CREATED.append(device)
    assert device.fetcher.try_s == 2.5
