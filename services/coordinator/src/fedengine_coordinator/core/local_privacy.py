"""Which devices of a try train with local DP-SGD, and at which settings.

A device enrolled with privacy level low, medium or high trains with DP-SGD in every task it
joins (fedcommon.local_dp); the shell calibrates the settings once per (task, level) and hands
them in with the devices' levels. The try's messages then carry each such device's settings
in its train request, and tell the privacy service whom it charged (``LocalDpAssigned``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedcommon import local_dp
from fedcommon.messages.v1 import LocalDp, PrivacyLevel
from fedengine_coordinator.core.selection import Candidate


def at_task_cap(
    candidates: Sequence[Candidate], *, asks: Mapping[str, int], planned_rounds: int
) -> set[str]:
    """Local-DP candidates already asked ``planned_rounds`` times by this task.

    The settings are calibrated so that ``planned_rounds`` asks spend at most the level's ε:
    one more (a retried round) would pass it. Counted from the coordinator's own tries, so it
    holds even before the privacy service has charged the last ask.
    """
    return {
        c.device_id
        for c in candidates
        if local_dp.uses_local_dp(c.privacy_level) and asks.get(c.device_id, 0) >= planned_rounds
    }


def assign(
    device_ids: Sequence[str],
    *,
    levels: Mapping[str, PrivacyLevel],
    settings: Mapping[PrivacyLevel, LocalDp],
) -> dict[str, LocalDp]:
    """Return the DP-SGD settings of each device in ``device_ids`` whose level asks for them.

    A device missing from ``levels`` is of level none (no promise to keep).

    Raises
    ------
    ValueError
        A device's level asks for local DP and ``settings`` has none for it: the shell must
        calibrate every level present, or the device would train without its guarantee.
    """
    chosen: dict[str, LocalDp] = {}
    for device_id in device_ids:
        level = levels.get(device_id, PrivacyLevel.NONE)
        if not local_dp.uses_local_dp(level):
            continue
        if level not in settings:
            raise ValueError(f"no local DP settings for level {level.value} of {device_id}")
        chosen[device_id] = settings[level]
    return chosen
