"""What a simulated device does with a train request, decided before it trains: whether it is
available, how long its download, training and upload take in simulated time, whether its
battery lasts, whether it fails and how, and whether it would answer within the deadline.

Everything is drawn from a generator seeded by the fleet, the task, the round and the device
(never by the wall clock or the order in which requests arrive), so the same seed gives the
same fates whatever the timing of the processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fedengine_simulator.core.profiles import DAY_S, DeviceProfile

# A device below this charge does not train unless it is charging (the coordinator's selection
# skips devices below the same level, from their heartbeats).
MIN_TRAIN_BATTERY_PCT = 20.0
# A battery's idle drain and charging are followed at most this far back: after a week a
# device's battery has long since settled to full (charging daily) or flat (never charging).
_HISTORY_S = 7 * DAY_S
# FedScale's factor: training an example costs about three forward passes (forward, backward).
TRAINING_PASSES = 3.0


class Outcome(StrEnum):
    COMPLETED = "completed"
    # Not available at that hour (the pattern or trace), or too low on battery to train: it
    # declines at once, as a real device that is busy or low says no.
    UNAVAILABLE = "unavailable"
    CRASH = "crash"  # the app crashed mid-training: no answer
    NETWORK_LOSS = "network_loss"  # the link dropped during the upload: no answer
    BATTERY_DEATH = "battery_death"  # the battery ran out mid-round: no answer, and it is flat
    DEADLINE = "deadline"  # too slow: it would answer after the round's deadline


FAILURES = (Outcome.CRASH, Outcome.NETWORK_LOSS, Outcome.BATTERY_DEATH, Outcome.DEADLINE)
INJECTED = (Outcome.CRASH, Outcome.NETWORK_LOSS)


@dataclass(frozen=True)
class Work:
    """What a round asks of a device."""

    examples: int
    epochs: float  # passes over them (DP-SGD's steps x its sampling rate)
    forward_flops: float  # one example's forward pass
    download_bytes: int
    upload_bytes: int


@dataclass(frozen=True)
class Failures:
    """Injected failures: each selected device fails with probability ``rate``, of a kind
    drawn from ``mix`` (battery deaths and missed deadlines come from the profiles, not from
    here)."""

    rate: float = 0.0
    mix: dict[Outcome, float] = field(
        default_factory=lambda: {Outcome.CRASH: 0.5, Outcome.NETWORK_LOSS: 0.5}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"failure rate {self.rate} must be within [0, 1]")
        if not self.mix or set(self.mix) - set(INJECTED):
            raise ValueError(f"injected failures are {', '.join(INJECTED)}, not {set(self.mix)}")


@dataclass(frozen=True)
class Battery:
    pct: float
    at_s: float  # the simulated moment ``pct`` was true


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    sim_s: float  # simulated seconds from the request to the answer, or to the failure
    compute_s: float  # the training's simulated seconds, had it run to the end
    transfer_s: float  # the download's and upload's, latency included
    battery: Battery  # after the round


def charging_at(profile: DeviceProfile, at_s: float) -> bool:
    if not profile.has_battery or not profile.charges:
        return False
    hour = int((at_s % DAY_S) // 3600)
    start, end = profile.kind.charging_hours
    return start <= hour < end if start <= end else hour >= start or hour < end


def battery_at(profile: DeviceProfile, battery: Battery, at_s: float) -> Battery:
    """The battery at ``at_s``: idle drain and charging since ``battery.at_s``, hour by hour.
    A moment before the last known one (another task's timeline) changes nothing."""
    if not profile.has_battery:
        return Battery(100.0, at_s)
    if at_s <= battery.at_s:
        return battery
    moment = max(battery.at_s, at_s - _HISTORY_S)
    pct = battery.pct
    while moment < at_s:
        step_end = min(at_s, (moment // 3600 + 1) * 3600)
        hours = (step_end - moment) / 3600
        kind = profile.kind
        rate = kind.charge_pct_per_hour if charging_at(profile, moment) else -kind.idle_pct_per_hour
        pct = min(100.0, max(0.0, pct + rate * hours))
        moment = step_end
    return Battery(pct, at_s)


def durations(profile: DeviceProfile, work: Work) -> tuple[float, float, float]:
    """Simulated seconds of the download, the training and the upload (FedScale's model)."""
    download = work.download_bytes * 8 / (profile.download_mbps * 1e6) + profile.latency_s
    compute = (
        TRAINING_PASSES * work.forward_flops * work.examples * work.epochs / (profile.gflops * 1e9)
    )
    upload = work.upload_bytes * 8 / (profile.upload_mbps * 1e6) + profile.latency_s
    return download, compute, upload


def drained_pct(profile: DeviceProfile, *, compute_s: float, transferred_bytes: float) -> float:
    """The battery share that ``compute_s`` of training and the transfers use."""
    if profile.battery_wh is None:
        return 0.0
    joules = (
        profile.kind.training_watts * compute_s
        + profile.kind.radio_joules_per_mb * transferred_bytes / 1e6
    )
    return 100.0 * joules / (profile.battery_wh * 3600)


def decide(
    profile: DeviceProfile,
    *,
    battery: Battery,
    at_s: float,
    work: Work,
    budget_s: float,
    available_p: float,
    failures: Failures,
    rng: np.random.Generator,
) -> Decision:
    """Decide one device's round at simulated moment ``at_s``, with ``budget_s`` simulated
    seconds to its deadline. Draws the same four numbers whatever the outcome, so that one
    decision never shifts another."""
    draw_available, draw_fails, draw_kind, draw_where = rng.random(4)
    now = battery_at(profile, battery, at_s)
    download, compute, upload = durations(profile, work)
    transfer = download + upload
    total = transfer + compute
    charging = charging_at(profile, at_s)

    def ends(outcome: Outcome, sim_s: float, used_pct: float) -> Decision:
        pct = min(100.0, now.pct) if charging else max(0.0, now.pct - used_pct)
        return Decision(outcome, sim_s, compute, transfer, Battery(pct, at_s + sim_s))

    if draw_available >= available_p:
        return ends(Outcome.UNAVAILABLE, 0.0, 0.0)
    if profile.has_battery and not charging and now.pct < MIN_TRAIN_BATTERY_PCT:
        return ends(Outcome.UNAVAILABLE, 0.0, 0.0)
    if draw_fails < failures.rate:
        kinds = list(failures.mix)
        bounds = np.cumsum([failures.mix[k] for k in kinds])
        kind = kinds[min(int(np.searchsorted(bounds, draw_kind * bounds[-1])), len(kinds) - 1)]
        if kind == Outcome.CRASH:
            spent = draw_where * compute
            used = drained_pct(profile, compute_s=spent, transferred_bytes=work.download_bytes)
            return ends(Outcome.CRASH, download + spent, used)
        sent = draw_where * (upload - profile.latency_s)
        used = drained_pct(
            profile,
            compute_s=compute,
            transferred_bytes=work.download_bytes + draw_where * work.upload_bytes,
        )
        return ends(Outcome.NETWORK_LOSS, download + compute + sent, used)
    used = drained_pct(
        profile, compute_s=compute, transferred_bytes=work.download_bytes + work.upload_bytes
    )
    if profile.has_battery and not charging and used > now.pct:
        # It runs flat part-way, in proportion to the energy it had.
        return ends(Outcome.BATTERY_DEATH, total * now.pct / used, now.pct)
    if total > budget_s:
        return ends(Outcome.DEADLINE, budget_s, used)
    return ends(Outcome.COMPLETED, total, used)
