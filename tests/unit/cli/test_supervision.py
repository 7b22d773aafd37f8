"""The supervisor's restart policy: capped backoff for crash loops, none for asked restarts."""

from __future__ import annotations

import itertools

import pytest

from fedengine.supervision import (
    MAX_DELAY_S,
    STABLE_AFTER_S,
    Exit,
    crashes_in_a_row,
    restart_delay_s,
)


def test_a_crash_loop_backs_off_doubling_up_to_the_cap() -> None:
    crashes, delays = 0, []
    for _ in range(12):
        crashes = crashes_in_a_row(crashes, Exit(uptime_s=0.3, requested=False))
        delays.append(restart_delay_s(crashes))
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == MAX_DELAY_S and all(a <= b for a, b in itertools.pairwise(delays))


@pytest.mark.parametrize(
    "exit",
    [Exit(uptime_s=STABLE_AFTER_S, requested=False), Exit(uptime_s=0.1, requested=True)],
    ids=["ran-well-then-crashed", "asked-for"],
)
def test_a_process_that_ran_well_or_was_asked_to_restart_starts_again_at_once(
    exit: Exit,
) -> None:
    crashes = crashes_in_a_row(7, exit)
    assert crashes == 0 and restart_delay_s(crashes) == 0.0
