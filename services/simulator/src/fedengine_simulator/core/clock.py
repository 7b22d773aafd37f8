"""The simulated clock: where in a simulated day a round happens, and how simulated seconds
map to wall seconds.

A round's simulated start comes from its number, not from the wall clock: round ``r`` of a
task opens ``(r - 1)`` deadline windows after the fleet's start hour (each round a reporting
window of its deadline's simulated length, as a production server paces its rounds). So the
same seed puts the same round at the same hour, and the same devices are available,
whatever the timing of the processes. Within a round, a device's simulated seconds become
wall seconds divided by the speed-up: it answers that long after the request was sent, so
stragglers and deadlines happen as in a real fleet, only faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# A round's deadline window is read from its request (deadline - sent_at, both set by the
# coordinator as it opens the round), rounded to this many seconds so that the few
# milliseconds between the two stamps do not change the simulated hour.
_WINDOW_RESOLUTION_S = 0.1


@dataclass(frozen=True)
class Clock:
    speedup: float
    start_s: float  # the simulated moment of every task's first round (seconds into a day)

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ValueError(f"speed-up {self.speedup} must be > 0")

    def window_s(self, *, sent_at: datetime, deadline: datetime) -> float:
        """The round's deadline window in simulated seconds."""
        wall = (deadline - sent_at).total_seconds()
        steps = max(0, round(wall / _WINDOW_RESOLUTION_S))
        return steps * _WINDOW_RESOLUTION_S * self.speedup

    def round_start_s(self, round_number: int, window_s: float) -> float:
        return self.start_s + (round_number - 1) * window_s

    def wall_s(self, sim_s: float) -> float:
        return sim_s / self.speedup
