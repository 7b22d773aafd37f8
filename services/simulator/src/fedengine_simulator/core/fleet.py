"""The layout of a simulated fleet: device ids, types, capabilities and data partitions."""

from __future__ import annotations

from dataclasses import dataclass

from fedcommon.messages.v1 import DeviceCapabilities, DeviceType, PrivacyLevel

_PROFILES: dict[DeviceType, DeviceCapabilities] = {
    DeviceType.MOBILE: DeviceCapabilities(
        compute_gflops=5, memory_mb=4096, bandwidth_mbps=20, has_battery=True, battery_pct=90
    ),
    DeviceType.IOT: DeviceCapabilities(
        compute_gflops=0.5, memory_mb=256, bandwidth_mbps=2, has_battery=True, battery_pct=80
    ),
    DeviceType.DESKTOP: DeviceCapabilities(
        compute_gflops=50, memory_mb=16384, bandwidth_mbps=100, has_battery=False
    ),
    DeviceType.CLOUD: DeviceCapabilities(
        compute_gflops=500, memory_mb=65536, bandwidth_mbps=1000, has_battery=False
    ),
}
_ORDER = (DeviceType.MOBILE, DeviceType.IOT, DeviceType.DESKTOP, DeviceType.CLOUD)


@dataclass(frozen=True)
class SimulatedDevice:
    index: int
    device_id: str
    device_type: DeviceType
    capabilities: DeviceCapabilities
    privacy_level: PrivacyLevel


def layout(
    fleet: str, count: int, privacy_level: PrivacyLevel = PrivacyLevel.NONE
) -> list[SimulatedDevice]:
    """Return the fleet's devices; types cycle mobile, iot, desktop, cloud; every device is
    enrolled with ``privacy_level`` (low, medium, high: it trains with local DP-SGD)."""
    devices = []
    for index in range(count):
        device_type = _ORDER[index % len(_ORDER)]
        devices.append(
            SimulatedDevice(
                index,
                f"{fleet}-{index:04d}",
                device_type,
                _PROFILES[device_type],
                privacy_level,
            )
        )
    return devices
