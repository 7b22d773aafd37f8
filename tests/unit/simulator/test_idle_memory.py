from __future__ import annotations

from fedengine_simulator.idle_memory import idle_bytes_per_device


def test_an_idle_device_costs_a_few_kilobytes() -> None:
    allocated, resident = idle_bytes_per_device(2000)

    # Its layout, drawn profile, capabilities, key and battery state: more than nothing, far
    # less than a partition or a model.
    assert 200 < allocated < 20_000
    assert resident >= 0
