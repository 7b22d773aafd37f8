"""Every service serves its own Prometheus metrics; the gateway's /metrics sums up projections,
round latency and the dead-letter topic."""

from __future__ import annotations

import httpx
import pytest

from fedcommon import topics
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually, run_fleet_task
from tests.integration.kafka_tools import send_raw

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def metric(text: str, name: str) -> float:
    """Sum every sample of ``name`` (all label sets) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def test_services_and_gateway_expose_metrics(
    stack: Stack, client: FedEngineClient, fleet: str
) -> None:
    await run_fleet_task(
        client, fleet, task_name="metrics", devices_per_round=2, min_devices=1, rounds=2
    )
    await send_raw(stack.kafka, topics.TASKS, key=b"m", value=b"\xc1 metrics test")

    from fedengine import launcher

    urls = {
        p.name: p.metrics_url
        for p in launcher.Stack.load(stack.settings.run_dir / "stack.json").processes
    }  # type: ignore[union-attr]
    async with httpx.AsyncClient() as http:
        pages = {name: (await http.get(url)).text for name, url in urls.items() if url}
        assert {"registry", "coordinator", "aggregator"} <= set(pages)
        assert metric(pages["aggregator"], "fedengine_updates_accepted_total") >= 4
        assert metric(pages["coordinator"], "fedengine_rounds_completed_total") >= 2
        assert metric(pages["coordinator"], "fedengine_round_seconds_count") >= 2
        assert metric(pages["registry"], "fedengine_registry_devices") >= 8
        assert metric(pages["registry"], "fedengine_consumed_total") >= 8

        async def gateway_page() -> str | None:
            page = (await http.get(stack.stack.gateway_url + "/api/federated/metrics")).text
            return page if metric(page, "fedengine_dead_letters") >= 1 else None

        page = await eventually(gateway_page, timeout_s=30)
    assert metric(page, "fedengine_rounds_duration_seconds_count") >= 2
    assert metric(page, "fedengine_projection") > 0
    assert "original_topic" in page


async def test_only_the_gateway_process_holds_the_signing_secret(stack: Stack) -> None:
    from pathlib import Path

    from fedengine import launcher

    running = launcher.Stack.load(stack.settings.run_dir / "stack.json")
    assert running is not None
    holders = {
        process.name
        for process in running.processes
        if b"FEDENGINE_JWT_SECRET=" in Path(f"/proc/{process.pid}/environ").read_bytes()
    }
    assert holders == {"gateway"}
