"""The layout of a simulated fleet: device ids, types, profiles, capabilities and privacy
levels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcommon.messages.v1 import DeviceCapabilities, DeviceType, PrivacyLevel
from fedengine_simulator.core import profiles

_MEMORY_MB: dict[DeviceType, int] = {
    DeviceType.MOBILE: 4096,
    DeviceType.IOT: 256,
    DeviceType.DESKTOP: 16384,
    DeviceType.CLOUD: 65536,
}
_ORDER = (DeviceType.MOBILE, DeviceType.IOT, DeviceType.DESKTOP, DeviceType.CLOUD)


@dataclass(frozen=True)
class SimulatedDevice:
    index: int
    device_id: str
    device_type: DeviceType
    capabilities: DeviceCapabilities
    privacy_level: PrivacyLevel
    profile: profiles.DeviceProfile


def capabilities_of(profile: profiles.DeviceProfile) -> DeviceCapabilities:
    """What the device tells the registry at enrolment: its own drawn figures."""
    return DeviceCapabilities(
        compute_gflops=round(profile.gflops, 3),
        memory_mb=_MEMORY_MB[profile.device_type],
        bandwidth_mbps=round(profile.download_mbps, 3),
        has_battery=profile.has_battery,
        battery_pct=round(profile.initial_battery_pct, 1),
    )


def layout(
    fleet: str,
    count: int,
    privacy_level: PrivacyLevel = PrivacyLevel.NONE,
    *,
    types: dict[DeviceType, float] | None = None,
    privacy_levels: dict[PrivacyLevel, float] | None = None,
    seed: int = 0,
) -> list[SimulatedDevice]:
    """Return the fleet's devices.

    Types cycle mobile, iot, desktop, cloud, or follow the ``types`` mix exactly (in a seeded
    order); every device has ``privacy_level`` (low, medium, high: it trains with local
    DP-SGD), or one from the ``privacy_levels`` mix. Each device's profile is drawn from its
    type's (core/profiles.py) with a generator of the fleet's seed, so the same seed gives the
    same fleet.
    """
    rng = np.random.default_rng([seed, 0xF1EE7])
    if types is None:
        kinds = [_ORDER[index % len(_ORDER)] for index in range(count)]
    else:
        kinds = profiles.assign(types, count, rng)
    if privacy_levels is None:
        levels = [privacy_level] * count
    else:
        levels = profiles.assign(privacy_levels, count, rng)
    devices = []
    for index, (device_type, level) in enumerate(zip(kinds, levels, strict=True)):
        profile = profiles.draw(device_type, rng)
        devices.append(
            SimulatedDevice(
                index,
                f"{fleet}-{index:04d}",
                device_type,
                capabilities_of(profile),
                level,
                profile,
            )
        )
    return devices
