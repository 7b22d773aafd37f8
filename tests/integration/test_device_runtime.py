"""The device runtime against a real stack: device processes run user code (the PyTorch digits
example), are killed and restarted, and misbehave; the stack keeps going."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcommon import signing
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pytorch-digits"


class Devices:
    """Device processes started with ``fedengine device run``, each logging to its own file."""

    def __init__(self, stack: Stack, folder: Path) -> None:
        self.stack = stack
        self.folder = folder
        self.token_file = folder / "fleet.token"
        self.token_file.write_text(stack.enrolment_token.encode())
        self.token_file.chmod(0o600)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, device_id: str) -> str:
        return (self.folder / f"{device_id}.log").read_text(errors="replace")

    def start(
        self,
        device_id: str,
        app: str,
        *settings: str,
        app_path: Path = ROOT,
        options: tuple[str, ...] = (),
    ) -> None:
        command = [
            str(Path(sys.executable).parent / "fedengine"), "device", "run",
            "--app", app, "--app-path", str(app_path),
            "--state-dir", str(self.folder / device_id),
            "--device-id", device_id,
            "--gateway", self.stack.stack.gateway_url,
            "--token-file", str(self.token_file),
            "--bootstrap-servers", self.stack.kafka.bootstrap_servers,
            "--topic-prefix", self.stack.kafka.topic_prefix,
            "--heartbeat-s", "1",
            "--network", "ethernet",
            *options,
        ]  # fmt: skip
        for setting in settings:
            command += ["--set", setting]
        with (self.folder / f"{device_id}.log").open("ab") as log:
            self.processes[device_id] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ)
            )

    def kill(self, device_id: str) -> None:
        process = self.processes.pop(device_id)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


@pytest.fixture
def devices(stack: Stack, tmp_path: Path) -> Iterator[Devices]:
    running = Devices(stack, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


async def _online(stack: Stack, ids: list[str]) -> bool:
    async with stack.client() as client:
        online = {d["device_id"] for d in await client.list_devices(status="online")}
    return set(ids) <= online


async def _task(stack: Stack, ids: list[str], **spec: Any) -> str:
    body: dict[str, Any] = {
        "task_name": f"runtime-{uuid.uuid4().hex[:6]}",
        "dataset": "digits",
        "model_architecture": "mlp",
        "participating_devices": ids,
        "devices_per_round": len(ids),
        "local_epochs": 1,
        "batch_size": 16,
        "learning_rate": 0.3,
        **spec,
    }
    async with stack.client() as client:
        task_id = await client.create_federated_task(**body)
        await client.start_federated_training(task_id)
    return task_id


async def _rounds(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    async with stack.client() as client:
        return await client.get_rounds(task_id)


async def test_example_devices_train_a_task_and_a_killed_device_rejoins_as_itself(
    stack: Stack, devices: Devices
) -> None:
    ids = [f"rt-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    for share, device_id in enumerate(ids):
        devices.start(
            device_id, "digits_client:make_client", f"share={share}", "shares=3", app_path=EXAMPLE
        )
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    # A generous deadline: a round closes when all three answered, and under load a device's
    # first fit (torch's first backward in a fresh process) has taken 26 s here.
    task_id = await _task(stack, ids, rounds=5, min_devices=3, round_timeout_s=60)

    async def completed_rounds() -> list[dict[str, Any]]:
        return [r for r in await _rounds(stack, task_id) if r["status"] == "completed"]

    await eventually(lambda: completed_rounds(), timeout_s=120)
    victim = ids[0]
    key_before = (devices.folder / victim / "identity.key").read_bytes()
    devices.kill(victim)
    devices.start(victim, "digits_client:make_client", "share=0", "shares=3", app_path=EXAMPLE)

    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=240
        )
        device = await client.get_device(victim)
    assert task["state"] == "completed", task
    # The same identity: the key on disk did not change and is the one the registry holds.
    assert (devices.folder / victim / "identity.key").read_bytes() == key_before
    public = signing.public_key_bytes(signing.private_key_from_bytes(key_before))
    assert device["public_key"] == public.hex()
    assert device["network"] == "ethernet"  # what its heartbeats said
    rounds = await _rounds(stack, task_id)
    completed = [r for r in rounds if r["status"] == "completed"]
    assert len(completed) == 5
    for round_ in rounds:
        aggregated = round_["aggregated"] or []
        assert len(aggregated) == len(set(aggregated)), round_  # nobody counted twice
        assert set(aggregated) <= set(ids)
    # The restarted device took part again after its restart.
    assert victim in (completed[-1]["aggregated"] or []), completed[-1]
    assert completed[-1]["accuracy"] is not None and completed[-1]["accuracy"] > 0.6
    assert "sent an update" in devices.log(victim)


async def test_a_device_restarted_before_committing_resends_the_same_update(
    stack: Stack, devices: Devices
) -> None:
    """A crash between sending an update and committing its request: the request comes back,
    and the device answers it with the update kept on disk, never a second one."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from fedcommon import kafka, topics

    ids = [f"rs-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for share, device_id in enumerate(ids):
        devices.start(
            device_id, "digits_client:make_client", f"share={share}", "shares=2", app_path=EXAMPLE
        )
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    # A long round: the resend arrives while the round is still open.
    task_id = await _task(stack, ids, rounds=1, min_devices=2, round_timeout_s=120)
    victim = ids[0]
    await eventually(
        lambda: asyncio.sleep(0, "sent an update" in devices.log(victim)), timeout_s=120
    )
    devices.kill(victim)
    # Rewind the victim's committed offset to before its train request, as if it had crashed
    # between sending the update and committing.
    commands = topics.topic_name(stack.kafka.topic_prefix, topics.DEVICE_COMMANDS)
    group = f"{stack.kafka.topic_prefix}device.{victim}"
    consumer = AIOKafkaConsumer(
        **kafka.client_options(stack.kafka), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(commands, p) for p in consumer.partitions_for_topic(commands)]
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        mine = next(tp for tp, offset in committed.items() if offset is not None)
        consumer.assign([mine])
        await consumer.commit({mine: 0})
    finally:
        await consumer.stop()
    devices.start(victim, "digits_client:make_client", "share=0", "shares=2", app_path=EXAMPLE)
    await eventually(
        lambda: asyncio.sleep(0, "resent the answer kept on disk" in devices.log(victim)),
        timeout_s=120,
    )
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
        )
    assert task["state"] == "completed", task
    (round_,) = [r for r in await _rounds(stack, task_id) if r["status"] == "completed"]
    assert sorted(round_["aggregated"]) == sorted(ids)  # the victim counted once


async def test_user_code_that_raises_hangs_or_returns_wrong_tensors_is_dropped_with_its_reason(
    stack: Stack, devices: Devices
) -> None:
    good = f"ok-{uuid.uuid4().hex[:6]}"
    bad = {
        "raising": f"raise-{uuid.uuid4().hex[:6]}",
        "hanging": f"hang-{uuid.uuid4().hex[:6]}",
        "wrong_tensors": f"wrong-{uuid.uuid4().hex[:6]}",
    }
    devices.start(good, "digits_client:make_client", app_path=EXAMPLE)
    for app, device_id in bad.items():
        devices.start(device_id, f"tests.integration.device_apps:{app}")
    ids = [good, *bad.values()]
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    task_id = await _task(stack, ids, rounds=2, min_devices=1, round_timeout_s=8)
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=120
        )
    assert task["state"] == "completed", task
    for round_ in [r for r in await _rounds(stack, task_id) if r["status"] == "completed"]:
        assert round_["aggregated"] == [good], round_
        # Each bad device answered with a signed decline and its reason: counted, and the
        # round did not wait for its deadline (8 s) for them.
        assert round_["rejected"].get("declined") == 3, round_
        assert round_["duration_s"] < 8.0, round_
    assert "fit raised ValueError: the user's data loader is broken" in devices.log(bad["raising"])
    assert "(declined: fit_failed)" in devices.log(bad["raising"])
    assert "fit did not return before the round's deadline" in devices.log(bad["hanging"])
    assert "(declined: fit_timeout)" in devices.log(bad["hanging"])
    wrong = devices.log(bad["wrong_tensors"])
    assert "(declined: wrong_tensors)" in wrong
    assert "fit returned other tensors than the model's" in wrong
    assert "missing net.3.bias" in wrong and "unexpected extra.weight" in wrong
    # Every device process is still running, ready for the next round.
    assert all(p.poll() is None for p in devices.processes.values())


KERAS_EXAMPLE = ROOT / "examples" / "keras-digits"


async def test_a_mixed_pytorch_and_keras_fleet_trains_as_an_all_pytorch_one(
    stack: Stack, devices: Devices
) -> None:
    """Same task, same seed, same shares: four PyTorch devices, and two PyTorch with two Keras
    (torch backend) devices. Both run at once; their final accuracies differ by < 2 points."""
    run = uuid.uuid4().hex[:6]
    fleets = {
        "pytorch": [f"pt-{run}-{share}" for share in range(4)],
        "mixed": [f"mx-{run}-{share}" for share in range(4)],
    }
    for kind, ids in fleets.items():
        for share, device_id in enumerate(ids):
            settings = (f"share={share}", "shares=4")
            if kind == "mixed" and share >= 2:
                devices.start(
                    device_id, "keras_digits_client:make_client", *settings, app_path=KERAS_EXAMPLE
                )
            else:
                devices.start(device_id, "digits_client:make_client", *settings, app_path=EXAMPLE)
    everyone = [device_id for ids in fleets.values() for device_id in ids]
    await eventually(lambda: _online(stack, everyone), timeout_s=180)
    spec: dict[str, Any] = {"rounds": 8, "min_devices": 4, "round_timeout_s": 60, "seed": 11}
    tasks = {kind: await _task(stack, ids, **spec) for kind, ids in fleets.items()}
    accuracy = {}
    async with stack.client() as client:
        for kind, task_id in tasks.items():
            task = await client.wait_for_task(
                task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=300
            )
            assert task["state"] == "completed", task
            rounds = [r for r in await client.get_rounds(task_id) if r["status"] == "completed"]
            assert len(rounds) == 8
            assert all(sorted(r["aggregated"]) == sorted(fleets[kind]) for r in rounds), rounds
            accuracy[kind] = rounds[-1]["accuracy"]
    print(f"final accuracy after 8 rounds: {accuracy}")
    assert accuracy["pytorch"] > 0.85
    assert abs(accuracy["mixed"] - accuracy["pytorch"]) < 0.02, accuracy
    keras_log = devices.log(fleets["mixed"][3])
    assert "sent an update of" in keras_log and "Traceback" not in keras_log


async def test_runtime_devices_take_part_in_secure_rounds(stack: Stack, devices: Devices) -> None:
    """The SecAgg+ device side the simulator runs is the runtime's too: three example devices
    complete a secure task, every stage with all three."""
    ids = [f"sa-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    for share, device_id in enumerate(ids):
        devices.start(
            device_id, "digits_client:make_client", f"share={share}", "shares=3", app_path=EXAMPLE
        )
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    task_id = await _task(
        stack, ids, rounds=2, min_devices=3, round_timeout_s=30, secure_aggregation={}
    )
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
        )
    assert task["state"] == "completed", task
    completed = [r for r in await _rounds(stack, task_id) if r["status"] == "completed"]
    assert len(completed) == 2
    for round_ in completed:
        assert sorted(round_["aggregated"]) == sorted(ids), round_
        stages = round_["secure_stages"]
        assert [s["stage_name"] for s in stages] == [
            "advertise_keys",
            "share_keys",
            "masked_input",
            "unmasking",
        ]
    for device_id in ids:
        assert "secure round started with" in devices.log(device_id)


async def test_a_device_written_against_the_wire_contract_alone_takes_part(
    stack: Stack, devices: Devices
) -> None:
    """examples/wire-only imports neither fedcommon nor feddevice: msgpack, Ed25519, a Kafka
    client, HTTP and hand-written numpy SGD. Two such devices train a task to completion."""
    script = ROOT / "examples" / "wire-only" / "wire_client.py"
    imports = [
        line for line in script.read_text().splitlines() if line.startswith(("import ", "from "))
    ]
    assert not [line for line in imports if "fedcommon" in line or "feddevice" in line]
    ids = [f"wire-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for share, device_id in enumerate(ids):
        command = [
            sys.executable, str(script),
            "--token-file", str(devices.token_file),
            "--state-dir", str(devices.folder / device_id),
            "--device-id", device_id,
            "--gateway", stack.stack.gateway_url,
            "--bootstrap-servers", stack.kafka.bootstrap_servers,
            "--topic-prefix", stack.kafka.topic_prefix,
            "--share", str(share), "--shares", "2",
        ]  # fmt: skip
        with (devices.folder / f"{device_id}.log").open("ab") as log:
            devices.processes[device_id] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    task_id = await _task(stack, ids, rounds=3, min_devices=2, round_timeout_s=30)
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=180
        )
    assert task["state"] == "completed", task
    completed = [r for r in await _rounds(stack, task_id) if r["status"] == "completed"]
    assert len(completed) == 3
    assert all(sorted(r["aggregated"]) == sorted(ids) for r in completed), completed
    assert completed[-1]["accuracy"] > 0.5, completed[-1]


async def test_runtime_devices_ride_through_a_frozen_gateway_and_a_frozen_broker(
    stack: Stack, devices: Devices
) -> None:
    """The gateway frozen (SIGSTOP) right after the task starts, so that the first round's
    model fetches get no answer and are tried again; later the broker frozen for less than a
    group session, so that the devices' sends wait. No round is lost, no device dropped or
    counted twice, every process keeps running."""
    ids = [f"out-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for share, device_id in enumerate(ids):
        devices.start(
            device_id,
            "digits_client:make_client",
            f"share={share}",
            "shares=2",
            app_path=EXAMPLE,
            options=("--fetch-try-s", "3"),
        )
    await eventually(lambda: _online(stack, ids), timeout_s=120)
    gateway = next(p for p in stack.stack.processes if p.name == "gateway")
    broker = stack.stack.broker
    assert broker is not None
    task_id = await _task(stack, ids, rounds=4, min_devices=2, round_timeout_s=40)
    os.kill(gateway.pid, signal.SIGSTOP)  # round 1 opens now: its fetches meet no answer
    try:
        await asyncio.sleep(7)
    finally:
        os.kill(gateway.pid, signal.SIGCONT)

    async def rounds_done(count: int) -> bool:
        rounds = await _rounds(stack, task_id)
        return sum(r["status"] == "completed" for r in rounds) >= count

    await eventually(lambda: rounds_done(2), timeout_s=120)
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(4)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    async with stack.client() as client:
        task = await client.wait_for_task(
            task_id, lambda t: t["state"] in ("completed", "failed"), timeout_s=240
        )
    assert task["state"] == "completed", task
    rounds = await _rounds(stack, task_id)
    completed = [r for r in rounds if r["status"] == "completed"]
    assert [r["round_number"] for r in completed] == [1, 2, 3, 4], rounds
    assert all(sorted(r["aggregated"]) == sorted(ids) for r in completed), completed
    assert all(p.poll() is None for p in devices.processes.values())
    for device_id in ids:  # each met the frozen gateway, and waited it out
        assert "model fetch failed" in devices.log(device_id), devices.log(device_id)
