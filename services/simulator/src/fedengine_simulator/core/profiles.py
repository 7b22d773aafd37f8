"""Device profiles: how fast a simulated device computes and transfers, how its battery drains
and charges, and when in the day it is available.

The system model is FedScale's (Lai et al., "FedScale: Benchmarking Model and System Performance
of Federated Learning at Scale", ICML 2022, and its client code): local training takes three
forward passes' worth of work per example (forward and backward), ``3 x examples x epochs x
forward FLOPs / the device's throughput``; a transfer takes ``bytes / bandwidth``, and each
adds a round-trip latency. FedScale draws each device's speeds from measured traces (AI
Benchmark for compute, MobiPerf for bandwidth), whose spread covers about an order of
magnitude; we have no such trace in a package, so each device's speeds are drawn from a
log-normal around its type's median, with that spread, from the fleet's seed (the same seed
gives the same fleet).

The medians are round figures from public measurements, stated so that a reader can disagree
with them: a phone sustains a few GFLOP/s of training on its CPU and MobiPerf's median mobile
link is a few Mbit/s up and tens down with 50-100 ms round trips; a battery-powered sensor
runs a microcontroller-class core on a low-power radio; desktops and cloud hosts are on mains
and wired links. Batteries are in watt-hours (a phone's 15 Wh, a sensor's 2 Wh), drained by
the training power (phone CPU about 3 W) and by the radio's energy per megabyte (about 5 J/MB on
LTE), and charged in a daily window (phones overnight, sensors by a solar cell by day).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from fedcommon.messages.v1 import DeviceType

K = TypeVar("K")

DAY_S = 86_400.0
HOURS = 24

# Availability over the day, one probability per local hour (a pattern). Phones are idle, on
# Wi-Fi and charging mostly at night (the diurnal pattern of FedScale's availability traces
# and Google's Gboard deployment); desktops mostly in working hours; sensors and hosts always.
_NIGHT_HEAVY = (0.7,) * 7 + (0.35,) * 2 + (0.2,) * 9 + (0.35,) * 3 + (0.6,) * 3
_WORKING_HOURS = (0.2,) * 8 + (0.9,) * 10 + (0.4,) * 6
_ALWAYS = (1.0,) * HOURS


@dataclass(frozen=True)
class TypeProfile:
    """The median device of a type, and how much devices of it differ."""

    gflops: float  # sustained training throughput
    upload_mbps: float
    download_mbps: float
    latency_s: float  # one round trip
    battery_wh: float | None  # None: on mains
    training_watts: float
    radio_joules_per_mb: float
    idle_pct_per_hour: float  # battery drain while not training
    charge_pct_per_hour: float
    charging_hours: tuple[int, int]  # local hours [start, end), may wrap past midnight
    charging_share: float  # the share of devices of the type that charge in that window
    availability: tuple[float, ...]  # the diurnal pattern: 24 hourly probabilities
    spread: float  # sigma of the log-normal each device's speeds are drawn from


DEFAULTS: dict[DeviceType, TypeProfile] = {
    DeviceType.MOBILE: TypeProfile(
        gflops=5.0,
        upload_mbps=5.0,
        download_mbps=20.0,
        latency_s=0.08,
        battery_wh=15.0,
        training_watts=3.0,
        radio_joules_per_mb=5.0,
        idle_pct_per_hour=1.0,
        charge_pct_per_hour=40.0,
        charging_hours=(22, 7),
        charging_share=0.8,
        availability=_NIGHT_HEAVY,
        spread=0.6,
    ),
    DeviceType.IOT: TypeProfile(
        gflops=0.5,
        upload_mbps=0.25,
        download_mbps=1.0,
        latency_s=0.2,
        battery_wh=2.0,
        training_watts=0.5,
        radio_joules_per_mb=10.0,
        idle_pct_per_hour=0.2,
        charge_pct_per_hour=5.0,
        charging_hours=(9, 17),
        charging_share=0.5,
        availability=_ALWAYS,
        spread=0.5,
    ),
    DeviceType.DESKTOP: TypeProfile(
        gflops=50.0,
        upload_mbps=20.0,
        download_mbps=100.0,
        latency_s=0.03,
        battery_wh=None,
        training_watts=60.0,
        radio_joules_per_mb=0.0,
        idle_pct_per_hour=0.0,
        charge_pct_per_hour=0.0,
        charging_hours=(0, 0),
        charging_share=0.0,
        availability=_WORKING_HOURS,
        spread=0.5,
    ),
    DeviceType.CLOUD: TypeProfile(
        gflops=500.0,
        upload_mbps=1000.0,
        download_mbps=1000.0,
        latency_s=0.002,
        battery_wh=None,
        training_watts=200.0,
        radio_joules_per_mb=0.0,
        idle_pct_per_hour=0.0,
        charge_pct_per_hour=0.0,
        charging_hours=(0, 0),
        charging_share=0.0,
        availability=_ALWAYS,
        spread=0.2,
    ),
}


@dataclass(frozen=True)
class DeviceProfile:
    """One device's own figures, drawn once from its type's profile."""

    device_type: DeviceType
    gflops: float
    upload_mbps: float
    download_mbps: float
    latency_s: float
    battery_wh: float | None
    charges: bool  # whether it charges in its type's window
    initial_battery_pct: float
    kind: TypeProfile

    @property
    def has_battery(self) -> bool:
        return self.battery_wh is not None


def draw(device_type: DeviceType, rng: np.random.Generator) -> DeviceProfile:
    """Draw one device of ``device_type``: speeds log-normal around the median (slower and
    faster devices equally likely), a starting battery between 50% and 100%, and whether it
    charges. Always draws the same number of values, so one device's type does not shift
    the next device's figures."""
    kind = DEFAULTS[device_type]
    factors = np.exp(rng.normal(0.0, kind.spread, size=4))
    battery = float(rng.uniform(50.0, 100.0))
    charges = bool(rng.random() < kind.charging_share)
    return DeviceProfile(
        device_type=device_type,
        gflops=kind.gflops * float(factors[0]),
        upload_mbps=kind.upload_mbps * float(factors[1]),
        download_mbps=kind.download_mbps * float(factors[2]),
        latency_s=kind.latency_s / float(factors[3]),
        battery_wh=kind.battery_wh,
        charges=charges,
        initial_battery_pct=battery if kind.battery_wh is not None else 100.0,
        kind=kind,
    )


def assign(mix: dict[K, float], count: int, rng: np.random.Generator) -> list[K]:
    """Give ``count`` devices a value each, in the mix's proportions exactly (largest
    remainders), in a seeded random order."""
    keys = list(mix)
    quotas = [mix[key] * count for key in keys]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(keys)), key=lambda i: quotas[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    values = [key for key, n in zip(keys, counts, strict=True) for _ in range(n)]
    order = rng.permutation(count)
    return [values[i] for i in order]


@dataclass(frozen=True)
class AvailabilityTrace:
    """Online intervals per device, in simulated seconds within a repeating period (a trace,
    as FedScale replays): device ``i`` follows ``intervals[i % len(intervals)]``."""

    period_s: float
    intervals: tuple[tuple[tuple[float, float], ...], ...]

    def available(self, index: int, at_s: float) -> bool:
        moment = at_s % self.period_s
        return any(
            start <= moment < end for start, end in self.intervals[index % len(self.intervals)]
        )

    @staticmethod
    def load(path: Path) -> AvailabilityTrace:
        """Read ``{"period_s": 86400, "devices": [[[start, end], ...], ...]}``; refuse a
        malformed file with the reason."""
        try:
            data = json.loads(path.read_text())
            period = float(data["period_s"])
            devices = tuple(
                tuple((float(start), float(end)) for start, end in device)
                for device in data["devices"]
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"availability trace {path}: {exc}") from exc
        if not (math.isfinite(period) and period > 0) or not devices:
            raise ValueError(f"availability trace {path}: needs period_s > 0 and devices")
        for device in devices:
            for start, end in device:
                if not (0 <= start < end <= period):
                    raise ValueError(
                        f"availability trace {path}: interval [{start}, {end}) is not within "
                        f"[0, {period})"
                    )
        return AvailabilityTrace(period, devices)
