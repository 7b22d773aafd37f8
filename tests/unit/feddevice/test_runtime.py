"""The runtime's answers to train and evaluate requests, with its I/O replaced by recorders:
what user code that misbehaves in each way leads to (found by a review: each of these crashed
the runtime or sent a silent zero update before), and that only the coordinator may ask."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import pytest
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import codec, enrolment_tokens, models, signing, topics, trust
from fedcommon.messages.v1 import (
    DeclineReason,
    EvaluateRequested,
    EvaluationSubmitted,
    ModelArchitecture,
    TrainRequested,
    UpdateDeclined,
    UpdateSubmitted,
)
from fedcommon.settings import KafkaSettings
from feddevice.client import Config, EvaluateResult, FitResult, Parameters
from feddevice.model_fetch import FetchRefused
from feddevice.runtime import DeviceConfig, DeviceRuntime

MODEL = models.to_safetensors(
    models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0)
)


class Client:
    def __init__(self, fit: Any, evaluate: Any = None) -> None:
        self._fit = fit
        self._evaluate = evaluate
        self.configs: list[Config] = []

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        result: FitResult = self._fit(parameters, config)
        return result

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        self.configs.append(config)
        if self._evaluate is None:
            return EvaluateResult(0.0, 1)
        result: EvaluateResult = self._evaluate(parameters, config)
        return result


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


COORDINATOR_KEY = signing.generate_private_key()
AGGREGATOR_KEY = signing.generate_private_key()
# Where each recorded value went: (topic base, key).
ROUTES: list[tuple[str, str]] = []


async def runtime(
    tmp_path: Path, fit: Any, evaluate: Any = None
) -> tuple[DeviceRuntime, list[bytes]]:
    token = enrolment_tokens.issue(
        "f",
        coordinator_key=signing.public_key_bytes(COORDINATOR_KEY),
        aggregator_key=signing.public_key_bytes(AGGREGATOR_KEY),
    )
    device = DeviceRuntime(
        DeviceConfig(
            state_dir=tmp_path,
            gateway_url="http://127.0.0.1:1",
            kafka=KafkaSettings(),
            token=token,
            device_id="dev-1",
        ),
        Client(fit, evaluate),
    )
    CREATED.append(device)
    sent: list[bytes] = []
    ROUTES.clear()

    async def send(base: str, key: str, value: bytes, *, until: datetime | None) -> bool:
        sent.append(value)
        ROUTES.append((base, key))
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
        assert "previous fit or evaluate has still not returned" in outcome
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


# --- evaluate requests ---------------------------------------------------------------------


def evaluate_request(seconds: float = 30.0) -> EvaluateRequested:
    return EvaluateRequested(
        producer="coordinator",
        task_id=uuid4(),
        evaluation_id=uuid4(),
        device_id="dev-1",
        round_number=2,
        model_version=2,
        model_sha256=models.sha256_hex(MODEL),
        deadline=datetime.now(UTC) + timedelta(seconds=seconds),
        model_architecture=ModelArchitecture.MLP,
        dataset="digits",
        batch_size=8,
        seed=0,
    )


def evaluated(sent: list[bytes]) -> EvaluationSubmitted:
    (value,) = sent
    message = codec.decode(value)
    assert isinstance(message, EvaluationSubmitted)
    return message


async def test_a_good_evaluation_is_signed_and_sent_to_fed_evaluations_keyed_by_task(
    tmp_path: Path,
) -> None:
    device, sent = await runtime(
        tmp_path, None, lambda p, c: EvaluateResult(0.5, 30, {"accuracy": 0.9})
    )
    asked = evaluate_request()

    outcome = await device.evaluate(asked)

    assert outcome == "sent an evaluation of 30 examples"
    assert [(topics.EVALUATIONS, str(asked.task_id))] == ROUTES
    message = evaluated(sent)
    assert message.evaluation_id == asked.evaluation_id
    assert message.correlation_id == asked.message_id
    assert (message.loss, message.num_examples, message.metrics) == (0.5, 30, {"accuracy": 0.9})
    signing.verify(
        public_key=device.identity.public_key,
        signature=message.signature,
        payload=signing.evaluation_payload(
            task_id=asked.task_id,
            evaluation_id=asked.evaluation_id,
            device_id="dev-1",
            round_number=2,
            model_version=2,
            num_examples=30,
            loss=0.5,
            metrics={"accuracy": 0.9},
        ),
    )
    (config,) = device.client.configs  # type: ignore[attr-defined]
    assert config["model_version"] == 2 and config["batch_size"] == 8
    assert config["dataset"] == "digits" and config["task_id"] == str(asked.task_id)


async def test_a_redelivered_evaluate_request_resends_the_same_record_without_evaluating(
    tmp_path: Path,
) -> None:
    device, sent = await runtime(tmp_path, None)
    asked = evaluate_request()
    await device.evaluate(asked)
    assert await device.evaluate(asked) == "resent the evaluation kept on disk"
    first, again = sent
    assert first == again and len(device.client.configs) == 1  # type: ignore[attr-defined]


def _no_test_data(parameters: Parameters, config: Config) -> EvaluateResult:
    raise ValueError("ArrayTorchClient.evaluate: this client has no test data")


@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        (lambda p, c: EvaluateResult(float("nan"), 10), "loss nan"),
        (lambda p, c: EvaluateResult(0.1, 10, {"accuracy": 1.5}), "accuracy 1.5"),
        (lambda p, c: EvaluateResult(0.1, 10, {"no spaces": 1.0}), "a metric named"),
        (lambda p, c: EvaluateResult(0.1, 10, {f"m{i}": 0.0 for i in range(17)}), "17 metrics"),
        (lambda p, c: EvaluateResult(0.1, 0), "num_examples 0"),
        (lambda p, c: (0.1, 10, {}), "not an EvaluateResult"),  # Flower's shape
        (_no_test_data, "no test data"),
        (lambda p, c: 1 / 0, "ZeroDivisionError"),
    ],
    ids=[
        "nan-loss",
        "accuracy-1.5",
        "bad-name",
        "17-metrics",
        "no-examples",
        "tuple",
        "no-test-data",
        "raises",
    ],
)
async def test_an_evaluation_that_fails_or_cannot_be_sent_sends_nothing(
    tmp_path: Path, evaluate: Any, expected: str
) -> None:
    device, sent = await runtime(tmp_path, None, evaluate)
    outcome = await device.evaluate(evaluate_request())
    assert expected in outcome and outcome.endswith("nothing sent")
    assert sent == []


async def test_no_model_or_a_past_deadline_sends_nothing(tmp_path: Path) -> None:
    class Refusing:
        async def fetch(self, *args: Any, **kwargs: Any) -> bytes:
            raise FetchRefused("gateway refused model v2: 403")

    device, sent = await runtime(tmp_path, None)
    assert await device.evaluate(evaluate_request(seconds=-1)) == "skipped: past its deadline"
    device.fetcher = Refusing()  # type: ignore[assignment]
    assert "no model" in await device.evaluate(evaluate_request())
    assert sent == [] and device.client.configs == []  # type: ignore[attr-defined]


async def test_a_hung_evaluate_sends_nothing_and_holds_the_thread_so_training_declines_at_once(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def hang(parameters: Parameters, config: Config) -> EvaluateResult:
        release.wait(30)
        return EvaluateResult(0.1, 10)

    device, sent = await runtime(tmp_path, lambda p, c: FitResult(step(p), 10), hang)
    try:
        outcome = await device.evaluate(evaluate_request(seconds=1.0))
        assert "did not return before the deadline" in outcome and sent == []
        began = asyncio.get_running_loop().time()
        assert "still not returned" in await device.evaluate(evaluate_request())
        outcome = await device.train(request())
        assert "still not returned" in outcome
        assert asyncio.get_running_loop().time() - began < 1.0
        assert declined(sent).reason == DeclineReason.FIT_TIMEOUT
    finally:
        release.set()


def record(message: EvaluateRequested, signer: tuple[str, Ed25519PrivateKey] | None) -> Any:
    """``message`` as the broker delivers it on the command topic, signed as ``signer``."""
    topic = topics.topic_name("", topics.DEVICE_COMMANDS)
    key, value = message.device_id.encode(), codec.encode(message)
    headers = [] if signer is None else trust.Signer(*signer).headers(topic, key, value)
    return ConsumerRecord(topic, 0, 0, 0, 0, key, value, None, len(key), len(value), headers)


async def test_only_the_coordinator_may_ask_a_device_to_evaluate(tmp_path: Path) -> None:
    device, sent = await runtime(tmp_path, None)
    forged = evaluate_request()
    await device.handle(record(forged, None))
    await device.handle(record(forged, ("aggregator", AGGREGATOR_KEY)))
    await device.handle(record(forged, ("coordinator", signing.generate_private_key())))
    assert sent == []
    asked = evaluate_request()
    await device.handle(record(asked, ("coordinator", COORDINATOR_KEY)))
    assert evaluated(sent).evaluation_id == asked.evaluation_id


async def test_an_evaluate_request_for_another_device_is_ignored(tmp_path: Path) -> None:
    device, sent = await runtime(tmp_path, None)
    other = evaluate_request().model_copy(update={"device_id": "dev-2"})
    await device.handle(record(other, ("coordinator", COORDINATOR_KEY)))
    assert sent == []
