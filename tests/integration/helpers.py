"""Helpers the integration tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from fedengine.sdk import FedEngineClient, FedEngineError

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout_s: float = 120.0, interval_s: float = 0.1
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with the last value otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last value {value!r})")
        await asyncio.sleep(interval_s)


async def device_or_none(client: FedEngineClient, device_id: str) -> dict[str, Any] | None:
    """Return the device's projection, or None while the registry has not recorded it."""
    try:
        return await client.get_device(device_id)
    except FedEngineError as exc:
        if exc.status_code == 404:
            return None
        raise


async def run_fleet_task(
    client: FedEngineClient, fleet: str, *, wait: bool = True, **spec: Any
) -> str:
    """Create and start a task on the shared 8-device fleet; wait for completion if asked."""
    body: dict[str, Any] = {
        "task_name": "pytest task",
        "participating_devices": [f"{fleet}-{i:04d}" for i in range(8)],
        "devices_per_round": 4,
        "min_devices": 2,
        "rounds": 3,
        "round_timeout_s": 20,
    }
    body.update(spec)
    await client.wait_for_devices(8, prefix=f"{fleet}-")
    task_id = await client.create_federated_task(**body)
    await client.start_federated_training(task_id)
    if wait:
        await client.wait_for_task(task_id, lambda t: t["state"] == "completed", timeout_s=90)
    return task_id


async def metric_total(processes: list[Any], name: str) -> float:
    """Sum a counter over every service process's Prometheus endpoint (all label sets)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as http:
        for process in processes:
            if process.metrics_url is None:
                continue
            for line in (await http.get(process.metrics_url)).text.splitlines():
                if line.startswith(f"{name}{{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total
