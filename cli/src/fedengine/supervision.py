"""When a crashed process is started again: the supervisor's restart policy, without I/O.

A process that crashes right after starting is restarted after a delay that doubles with each
crash in a row (0.5 s, 1 s, 2 s... up to 30 s), so that a service that cannot start (a bad
setting, say) does not spin; one that ran for a minute before crashing counts as a fresh start
and is restarted at once. A restart someone asked for (``fedengine restart``) is not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 30.0
# A process that ran this long before it exited counts as having started well.
STABLE_AFTER_S = 60.0


@dataclass(frozen=True)
class Exit:
    """What the supervisor saw: how long the process ran and whether it was asked to stop."""

    uptime_s: float
    requested: bool


def crashes_in_a_row(previous: int, exit: Exit) -> int:
    """The count of consecutive crashes after ``exit`` (0 when it was asked for or ran well)."""
    if exit.requested or exit.uptime_s >= STABLE_AFTER_S:
        return 0
    return previous + 1


def restart_delay_s(crashes: int) -> float:
    """How long to wait before starting a process that has crashed ``crashes`` times in a row."""
    if crashes <= 1:
        return 0.0 if crashes == 0 else INITIAL_DELAY_S
    return min(MAX_DELAY_S, INITIAL_DELAY_S * 2.0 ** (crashes - 1))
