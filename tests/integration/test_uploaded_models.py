"""Tasks on uploaded models, against a running stack with device processes running user code:
one trains and is judged by federated evaluation alone; one whose shapes the devices do not
produce fails with the devices' reason, and the stack keeps going."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save
from torch import nn

from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.test_device_runtime import Devices

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pytorch-digits"
APP = "digits_client:make_client"


class _DigitsMLP(nn.Module):
    """The example client's model (same tensor names), with a hidden width of our choosing."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )


def _model_file(hidden: int) -> bytes:
    """A plain safetensors file, as a user writes one: no tensor order in its metadata."""
    data: bytes = save({k: v.contiguous() for k, v in _DigitsMLP(hidden).state_dict().items()})
    return data


@pytest.fixture
def devices(stack: Stack, tmp_path: Path) -> Iterator[Devices]:
    running = Devices(stack, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


async def _start(stack: Stack, devices: Devices, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    for share, device_id in enumerate(ids):
        devices.start(device_id, APP, f"share={share}", f"shares={count}", app_path=EXAMPLE)

    async def online() -> bool:
        async with stack.client() as client:
            seen = {d["device_id"] for d in await client.list_devices(status="online")}
        return set(ids) <= seen

    await eventually(online, timeout_s=120)
    return ids


async def _run(stack: Stack, model: bytes, ids: list[str], **spec: Any) -> dict[str, Any]:
    async with stack.client() as client:
        uploaded = await client.upload_model(model, name="digits-mlp")
        task_id = await client.create_federated_task(
            task_name=f"uploaded-{uuid.uuid4().hex[:6]}",
            initial_model=uploaded,
            participating_devices=ids,
            devices_per_round=len(ids),
            min_devices=len(ids),
            local_epochs=1,
            learning_rate=0.3,
            **spec,
        )
        await client.start_federated_training(task_id)
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=240
        )
        return {
            "task": task,
            "uploaded": uploaded,
            "rounds": await client.get_rounds(task_id),
            "events": await client.get_task_events(task_id),
            "evaluations": await client.task_evaluations(task_id),
        }


async def test_a_task_on_an_uploaded_model_is_judged_by_its_devices_alone(
    stack: Stack, devices: Devices
) -> None:
    ids = await _start(stack, devices, "up", 2)

    run = await _run(
        stack,
        _model_file(hidden=64),
        ids,
        rounds=3,
        round_timeout_s=30,
        federated_evaluation={"every_rounds": 1, "min_devices": 2, "timeout_s": 30},
    )

    assert run["task"]["state"] == "completed", run["task"]
    assert [t["name"] for t in run["uploaded"]["tensors"]] == sorted(_DigitsMLP(64).state_dict())
    completed = [r for r in run["rounds"] if r["status"] == "completed"]
    assert len(completed) == 3
    for round_ in completed:
        assert round_["accuracy"] is None  # no central data: the services never ran the model
        assert round_["fed_devices"] == 2 and round_["fed_examples"] > 0
    assert completed[-1]["fed_accuracy"] > 0.6
    assert run["task"]["latest_accuracy"] == completed[-1]["fed_accuracy"]
    assert [e["status"] for e in run["evaluations"]] == ["completed"] * 3
    assert all("sent an evaluation" in devices.log(d) for d in ids)


async def test_an_uploaded_model_the_devices_cannot_train_fails_with_their_reason(
    stack: Stack, devices: Devices
) -> None:
    ids = await _start(stack, devices, "bad", 2)

    run = await _run(
        stack, _model_file(hidden=32), ids, rounds=2, round_timeout_s=20, max_round_retries=1
    )

    task = run["task"]
    assert task["state"] == "failed" and task["stop_reason"] == "round_failed", task
    failed = [r for r in run["rounds"] if r["status"] == "failed"]
    assert len(failed) == 2
    for round_ in failed:
        # Each device declined, signed, with its reason; the round did not wait its deadline.
        assert round_["rejected"].get("declined") == 2, round_
    assert "round 1 failed 2 times" in run["events"][-1]["detail"]
    for device_id in ids:
        assert "declined" in devices.log(device_id)
    # The stack and the devices are still up: the same devices train the right model next.
    good = await _run(stack, _model_file(hidden=64), ids, rounds=1, round_timeout_s=30)
    assert good["task"]["state"] == "completed", good["task"]


async def test_secure_aggregation_and_central_dp_run_on_an_uploaded_model(
    stack: Stack, devices: Devices
) -> None:
    """The protocols sum arrays of whatever shapes the stored version has, read from the
    uploaded file: a secure task and a DP task on a user's model both complete."""
    ids = await _start(stack, devices, "sp", 3)
    model = _model_file(hidden=64)

    secure = await _run(
        stack,
        model,
        ids,
        rounds=2,
        round_timeout_s=30,
        secure_aggregation={},
        federated_evaluation={"min_devices": 3, "timeout_s": 30},
    )
    private = await _run(
        stack,
        model,
        ids,
        rounds=2,
        round_timeout_s=30,
        privacy={"epsilon": 50.0, "delta": 1e-5, "clip_norm": 1.0, "noise_multiplier": 0.5},
        federated_evaluation={"min_devices": 3, "timeout_s": 30},
    )

    assert secure["task"]["state"] == "completed", secure["task"]
    for round_ in (r for r in secure["rounds"] if r["status"] == "completed"):
        assert sorted(round_["aggregated"]) == sorted(ids), round_
        assert [s["stage_name"] for s in round_["secure_stages"]][-1] == "unmasking"
        assert round_["fed_devices"] == 3
    assert private["task"]["state"] == "completed", private["task"]
    completed = [r for r in private["rounds"] if r["status"] == "completed"]
    assert len(completed) == 2
    assert all(r["epsilon_spent"] is not None for r in completed)
    assert all(r["fed_devices"] == 3 for r in completed)
