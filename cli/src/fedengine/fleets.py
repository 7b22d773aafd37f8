"""``fedengine fleet``: attach simulated devices to a running stack, and take them away again.

A fleet is a simulator process under the supervisor, enrolled with an enrolment token issued
for it. A fleet that started is remembered (``fedengine.remembered_fleets``), so that
``fedengine up`` after ``down`` starts it again. Stopping a fleet forgets it and removes its
devices from the registry, so that a finished demo or experiment leaves no offline devices
behind; starting a fleet of that name again restores them first (a removed device only comes
back by an operator's restore).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from fedcommon import auth
from fedengine import launcher, remembered_fleets
from fedengine.identity import jwt_secret
from fedengine.settings import LauncherSettings


def _client(settings: LauncherSettings, stack: launcher.Stack) -> httpx.Client:
    secret, _ = jwt_secret(settings)
    token = auth.issue_token(secret=secret, subject="fedengine-fleet", role=auth.Role.ADMIN)
    return httpx.Client(
        base_url=f"{stack.gateway_url}/api/federated",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _devices(
    client: httpx.Client, fleet: str, status: str | None = None
) -> Iterator[dict[str, Any]]:
    """The fleet's devices: enrolled into it, and named as its simulator names them
    (``<fleet>-0000``, ``<fleet>-0001``...).

    The name alone is not enough: a device chooses its own id, so a device enrolled into another
    fleet (with that fleet's token) may carry one of this fleet's names; ``fleet start`` would
    restore it after an admin removed it, and ``fleet stop`` would remove it.
    """
    own = re.compile(re.escape(fleet) + r"-\d{4,}")
    offset = 0
    while True:
        params: dict[str, str | int] = {"limit": 500, "offset": offset}
        if status is not None:
            params["status"] = status
        page = client.get("/devices", params=params)
        page.raise_for_status()
        body = page.json()
        for device in body["items"]:
            if device["fleet"] == fleet and own.fullmatch(device["device_id"]):
                yield device
        offset += len(body["items"])
        if not body["items"] or offset >= body["total"]:
            return


def _wait_until(check: Callable[[], bool], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s")
        time.sleep(0.1)


def start(settings: LauncherSettings, fleet: launcher.Fleet) -> launcher.Process:
    """Start ``fleet`` on the running stack; return its process once the registry has every
    one of its devices online."""
    stack = launcher.running_stack(settings)
    if stack is None:
        raise RuntimeError("no stack is running: fedengine up")
    if stack.process(fleet.process_name) is not None:
        raise RuntimeError(f"fleet {fleet.name} runs already")
    with _client(settings, stack) as client:
        removed = [d["device_id"] for d in _devices(client, fleet.name, status="removed")]
        for device_id in removed:
            client.post(f"/devices/{device_id}/restore").raise_for_status()
        if removed:
            _wait_until(
                lambda: not any(_devices(client, fleet.name, status="removed")), timeout_s=30
            )
    process = launcher.start_simulator(settings, stack, fleet)
    # The simulator is ready once it consumes; its devices count once the registry has them.
    with _client(settings, stack) as client:

        def enrolled() -> bool:
            online = [d for d in _devices(client, fleet.name) if d["status"] == "online"]
            return len(online) >= fleet.devices

        _wait_until(enrolled, timeout_s=settings.ready_timeout_s)
    return process


def stop(settings: LauncherSettings, name: str) -> int:
    """Stop fleet ``name`` and remove its devices; return how many were removed.

    The fleet is forgotten first (``fedengine up`` no longer brings it back), also when no
    stack runs.
    """
    forgotten = remembered_fleets.forget(settings, name)
    stack = launcher.running_stack(settings)
    if stack is None:
        if forgotten:
            raise RuntimeError(
                f"no stack is running; fleet {name} is forgotten (fedengine up will not start "
                "it), its devices stay enrolled"
            )
        raise RuntimeError("no stack is running")
    first = f"simulator-{name}"
    processes = [p for p in stack.processes if p.name == first or p.name.startswith(f"{first}+")]
    for process in processes:
        launcher.stop_process(settings, process)
    removed = 0
    with _client(settings, stack) as client:
        for device in list(_devices(client, name)):
            if device["status"] != "removed":
                client.delete(f"/devices/{device['device_id']}").raise_for_status()
                removed += 1
    if not processes and removed == 0:
        raise LookupError(f"no fleet {name!r}")
    return removed
