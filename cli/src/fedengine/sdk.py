"""Async Python SDK over the gateway, with the calls of the original design.

Commands are accepted asynchronously (202); the ``wait`` helpers poll the projections until
the effect is visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import httpx

API = "/api/federated"


class FedEngineError(Exception):
    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class FedEngineClient:
    """``async with FedEngineClient(url, token) as client: ...``"""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + API,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> FedEngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise FedEngineError(response.status_code, detail)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = (await self._request(method, path, **kwargs)).json()
        return body

    # --- devices ---------------------------------------------------------------------------
    async def add_edge_device(self, **device: Any) -> dict[str, Any]:
        """Enrol a device as an operator; returns ``{"id", "location", "coordinator_public_key",
        "private_key"?}``.

        Give the device's ``public_key`` with its ``key_signature`` (and ``device_id``), or
        ``generate_key=True`` for a pair the gateway generates (``private_key``, shown once).
        """
        return await self._json("POST", "/devices", json=device)

    async def issue_enrolment_token(
        self, fleet: str, *, max_devices: int = 100, expires_in_s: float = 7 * 86_400
    ) -> dict[str, Any]:
        """Issue a token with which a fleet's devices enrol themselves (``token``: shown once)."""
        body = {"fleet": fleet, "max_devices": max_devices, "expires_in_s": expires_in_s}
        return await self._json("POST", "/enrolment-tokens", json=body)

    async def list_enrolment_tokens(self) -> list[dict[str, Any]]:
        page = await self._json("GET", "/enrolment-tokens", params={"limit": 500})
        items: list[dict[str, Any]] = page["items"]
        return items

    async def revoke_enrolment_token(self, token_id: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/enrolment-tokens/{token_id}")

    async def list_devices(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Return every device (all pages), optionally only those with ``status``."""
        devices: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": 500, "offset": len(devices)}
            if status:
                params["status"] = status
            page = (await self._request("GET", "/devices", params=params)).json()
            devices.extend(page["items"])
            if len(devices) >= page["total"] or not page["items"]:
                return devices

    async def get_device(self, device_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/devices/{device_id}")

    async def remove_edge_device(self, device_id: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/devices/{device_id}")

    async def restore_edge_device(self, device_id: str) -> dict[str, Any]:
        """Bring a removed device back (admin); it is offline until its next heartbeat."""
        return await self._json("POST", f"/devices/{device_id}/restore")

    # --- tasks -----------------------------------------------------------------------------
    async def create_federated_task(self, **task: Any) -> str:
        """Create a task from the REST body's fields; returns its id once the coordinator has
        recorded it.

        ``strategy`` chooses how rounds are aggregated and applied, for example
        ``strategy={"name": "fedadam", "params": {"eta": 0.01}}`` (FedAvg when absent); the
        gateway refuses an unknown name or parameter with 422, as it does any other bad field.
        ``secure_aggregation={}`` turns on SecAgg+ with every default (or names ``bits``,
        ``clip_norm``, ``weight_cap``, ``neighbours``, ``threshold``, ``stage_timeout_s``); it
        needs ``min_devices`` >= 3 and a strategy that sums updates, else 422.

        ``initial_model`` trains an uploaded model instead of a built-in one: what
        ``upload_model`` returned (its ``model_id`` and ``sha256`` are taken), with no
        ``model_architecture`` and no ``dataset``. ``federated_evaluation={}`` (or
        ``every_rounds``, ``fraction``, ``min_devices``, ``timeout_s``) has devices evaluate
        each new version on their own data; a task on an uploaded model needs it for
        ``target_accuracy`` or ``patience``.
        """
        initial = task.get("initial_model")
        if isinstance(initial, Mapping):
            task = {
                **task,
                "initial_model": {
                    key: str(initial[key]) for key in ("model_id", "sha256") if key in initial
                },
            }
        accepted = (await self._request("POST", "/tasks", json=task)).json()
        await self.wait_for_task(accepted["id"], lambda t: True)
        return str(accepted["id"])

    async def start_federated_training(self, task_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/tasks/{task_id}/start")

    async def pause_task(self, task_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/tasks/{task_id}/pause")

    async def resume_task(self, task_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/tasks/{task_id}/resume")

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/tasks/{task_id}/cancel")

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/tasks/{task_id}")

    async def get_rounds(self, task_id: str) -> list[dict[str, Any]]:
        rounds: list[dict[str, Any]] = []
        while True:
            page = (
                await self._request(
                    "GET", f"/tasks/{task_id}/rounds", params={"limit": 500, "offset": len(rounds)}
                )
            ).json()
            rounds.extend(page["items"])
            if len(rounds) >= page["total"] or not page["items"]:
                return rounds

    async def get_privacy_budget(self, task_id: str | None = None) -> dict[str, Any]:
        """One DP task's budget with its ledger and audit log; without ``task_id``, the first
        page of every DP task's budget."""
        params = {"task_id": task_id} if task_id is not None else {}
        response = await self._request("GET", "/privacy/budget", params=params)
        result: dict[str, Any] = response.json()
        return result

    async def get_device_privacy_ledger(self, device_id: str) -> dict[str, Any] | None:
        """A device's local-DP ledger (per task and lifetime ε, every release); None for a
        device that was never asked to train with local DP."""
        try:
            return await self._json("GET", "/privacy/budget", params={"device_id": device_id})
        except FedEngineError as exc:
            if exc.status_code == 404:
                return None
            raise

    async def task_evaluations(self, task_id: str) -> list[dict[str, Any]]:
        """Every federated evaluation of the task (all pages), oldest first: devices asked and
        answered, and the example-weighted ``loss``, ``accuracy`` and ``metrics``."""
        return await self._all_pages(f"/tasks/{task_id}/evaluations")

    async def get_task_events(self, task_id: str) -> list[dict[str, Any]]:
        page = await self._request("GET", f"/tasks/{task_id}/events", params={"limit": 500})
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    async def download_model(
        self, task_id: str, *, version: int | None = None
    ) -> tuple[bytes, str, int]:
        """Return ``(safetensors bytes, sha256, version)``."""
        params = {} if version is None else {"version": version}
        response = await self._request("GET", f"/tasks/{task_id}/model", params=params)
        return (
            response.content,
            response.headers["X-Model-SHA256"],
            int(response.headers["X-Model-Version"]),
        )

    # --- uploaded models ---------------------------------------------------------------------
    async def upload_model(
        self,
        data: bytes,
        *,
        name: str = "model",
        timeout_s: float = 60.0,
        poll_s: float = 0.1,
    ) -> dict[str, Any]:
        """Upload a safetensors file as an initial model (operator) and return it once the
        coordinator has stored it: ``{"model_id", "sha256", "size_bytes", "name", "tensors",
        "uploaded_by", "uploaded_at"}``. Pass it as a task's ``initial_model``.

        The gateway checks the file first (finite F32 tensors, a sound header: 422 says what is
        wrong; larger than one Kafka record: 413).

        Raises
        ------
        FedEngineError
            The gateway refused the file (its status and detail).
        TimeoutError
            The gateway accepted it but the coordinator had not stored it within ``timeout_s``.
        """
        response = await self._request(
            "POST",
            "/models",
            params={"name": name},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        accepted: dict[str, Any] = response.json()
        model_id = str(accepted["model_id"])
        if accepted["sha256"] != hashlib.sha256(data).hexdigest():
            raise FedEngineError(
                response.status_code, f"model {model_id}: the gateway's sha256 is not the file's"
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await self.get_model(model_id)
            except httpx.TransportError:
                pass
            except FedEngineError as exc:
                if exc.status_code not in (404, 503):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"model {model_id} was accepted but not stored by the coordinator within "
                    f"{timeout_s:g} s (is it running?); GET {API}/models/{model_id} shows it "
                    "once it is"
                )
            await asyncio.sleep(poll_s)

    async def list_models(self) -> list[dict[str, Any]]:
        """Every uploaded model (all pages), newest first; never their bytes."""
        return await self._all_pages("/models")

    async def get_model(self, model_id: str) -> dict[str, Any]:
        """One uploaded model; ``FedEngineError`` 404 until the coordinator has stored it."""
        return await self._json("GET", f"/models/{model_id}")

    async def _all_pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = await self._json("GET", path, params={"limit": 500, "offset": len(items)})
            items.extend(page["items"])
            if len(items) >= page["total"] or not page["items"]:
                return items

    async def get_status(self) -> dict[str, Any]:
        return await self._json("GET", "/status")

    async def cleanup(self, *, retention_s: float | None = None) -> dict[str, Any]:
        body = {} if retention_s is None else {"retention_s": retention_s}
        return await self._json("POST", "/cleanup", json=body)

    # --- waiting ---------------------------------------------------------------------------
    async def wait_for_task(
        self, task_id: str, predicate: Any, *, timeout_s: float = 60.0, poll_s: float = 0.1
    ) -> dict[str, Any]:
        """Poll the task projection until ``predicate(task)`` holds.

        Not there yet (404), briefly unavailable (503: the database restarting) and a gateway
        that does not answer for a moment (restarted by its supervisor) are waited through
        like any other not-yet.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                task = await self.get_task(task_id)
                if predicate(task):
                    return task
            except httpx.TransportError:
                pass
            except FedEngineError as exc:
                if exc.status_code not in (404, 503):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id}: condition not met within {timeout_s}s")
            await asyncio.sleep(poll_s)

    async def wait_for_devices(
        self, count: int, *, timeout_s: float = 60.0, prefix: str = ""
    ) -> int:
        """Wait until at least ``count`` online devices (ids starting with ``prefix``).

        Each poll asks for the count alone (one row): reading every device every 0.1 s had
        cost a fifth of the stack's CPU with 10,000 devices."""
        deadline = time.monotonic() + timeout_s
        params = {"status": "online", "prefix": prefix, "limit": 1}
        while True:
            online = int((await self._request("GET", "/devices", params=params)).json()["total"])
            if online >= count:
                return online
            if time.monotonic() > deadline:
                raise TimeoutError(f"{online} of {count} devices online after {timeout_s}s")
            await asyncio.sleep(0.25)
