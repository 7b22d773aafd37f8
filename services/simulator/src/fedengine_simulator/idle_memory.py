"""What one idle simulated device costs in memory: ``python -m fedengine_simulator.idle_memory
--devices N --json PATH`` (``fedengine bench simulate`` runs it).

An idle device is what the simulator keeps for every device of its fleet whether or not it
trains: its layout (id, type, drawn profile, capabilities, privacy level), its identity key
and its battery state. Measured with tracemalloc as the bytes those structures hold, built for
N devices, divided by N; and as the process's resident memory grown meanwhile (which also sees
the keys' OpenSSL memory, outside Python's allocator). A device that has trained also keeps
its client (its partition's rows, a model factory); that is the data set's share, not an idle
cost, and is not counted.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

from fedengine_simulator import identities
from fedengine_simulator.core import behaviour, fleet


def idle_bytes_per_device(devices: int) -> tuple[float, float]:
    """Bytes per idle device: (Python's allocator, resident memory)."""
    process = psutil.Process()
    with TemporaryDirectory(prefix="fedengine-idle-") as folder:
        resident = process.memory_info().rss
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        layout = {d.device_id: d for d in fleet.layout("idle", devices, seed=0)}
        keys = identities.load_or_create(Path(folder), list(layout))
        battery = {
            d.index: behaviour.Battery(d.profile.initial_battery_pct, 0.0) for d in layout.values()
        }
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        grown = process.memory_info().rss - resident
        assert len(keys) == len(battery) == devices
    return (after - before) / devices, grown / devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--json", type=Path, required=True)
    arguments = parser.parse_args()
    if arguments.devices < 1:
        parser.error("--devices must be >= 1")
    allocated, resident = idle_bytes_per_device(arguments.devices)
    arguments.json.write_text(
        json.dumps(
            {
                "devices": arguments.devices,
                "idle_device_bytes": round(allocated),
                "idle_device_rss_bytes": round(resident),
            }
        )
    )


if __name__ == "__main__":
    main()
