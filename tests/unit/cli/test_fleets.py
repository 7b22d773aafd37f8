"""``fedengine fleet``: which devices count as a fleet's (stop removes them, start restores)."""

from __future__ import annotations

import httpx

from fedengine import fleets


def _gateway(devices: list[dict[str, object]]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        status = request.url.params.get("status")
        items = [d for d in devices if status is None or d["status"] == status]
        return httpx.Response(200, json={"items": items, "total": len(items)})

    return httpx.Client(base_url="http://gateway", transport=httpx.MockTransport(answer))


def test_a_fleets_devices_are_those_enrolled_in_it_not_those_named_like_it() -> None:
    # Prepare: fleet "lab"'s device, and a device named like one of its own but enrolled into
    # another fleet with that fleet's token (device ids are the enrolling device's choice), which
    # an admin then removed; and an operator's device that happens to be named "lab-0100".
    devices: list[dict[str, object]] = [
        {"device_id": "lab-0000", "fleet": "lab", "status": "removed"},
        {"device_id": "lab-0001", "fleet": "intruder", "status": "removed"},
        {"device_id": "lab-0100", "fleet": None, "status": "online"},
    ]

    # Execute
    with _gateway(devices) as client:
        removed = [d["device_id"] for d in fleets._devices(client, "lab", status="removed")]
        every = [d["device_id"] for d in fleets._devices(client, "lab")]

    # Assert: `fleet start lab` restores only lab's own removed device (not the intruder an
    # admin removed), and `fleet stop lab` removes only lab's devices.
    assert removed == ["lab-0000"]
    assert every == ["lab-0000"]
