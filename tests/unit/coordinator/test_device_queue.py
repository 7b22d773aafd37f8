"""Devices shared among tasks, first come, first served: a task yields the devices that a task
waiting longer could use, and waits for busy devices up to queue_wait_s (devices that are not
there at all: device_wait_s)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fedcommon.messages.v1 import StopReason, TaskState
from fedengine_coordinator.core.effects import InsertRound, LogEvent, SetTaskState, SetWaiting
from fedengine_coordinator.core.events import DevicesOffered
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.selection import WaitingTask, yields_to
from fedengine_coordinator.core.state import State
from tests.unit.coordinator.test_machine import NEW_ROUND_ID, NOW, SHA, candidates, task

FLEET = candidates(90.0, 90.0, 90.0, 90.0)  # d0..d3


def offered(
    *, busy: frozenset[str] = frozenset(), waiting: tuple[WaitingTask, ...] = ()
) -> DevicesOffered:
    return DevicesOffered(
        round_number=1,
        candidates=FLEET,
        busy=busy,
        attempt=0,
        model_sha256=SHA,
        param_shapes=[[2, 2], [2]],
        round_id=NEW_ROUND_ID,
        now=NOW,
        waiting=waiting,
    )


def test_a_task_yields_to_one_that_waited_longer_for_the_same_devices() -> None:
    after, effects = decide(State(task()), offered(waiting=(WaitingTask(None, 2),)))

    assert after.task is not None and after.task.waiting_since == NOW
    assert SetWaiting(after.task.task_id, NOW) in effects
    log = next(e for e in effects if isinstance(e, LogEvent))
    assert log.detail == "4 eligible, 2 needed; yielding to 1 task queued before it"
    assert not any(isinstance(e, InsertRound) for e in effects)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(WaitingTask(frozenset({"x1", "x2"}), 2), id="other devices"),
        pytest.param(WaitingTask(None, 5), id="needs more devices than are online"),
        pytest.param(WaitingTask(frozenset({"d0", "x1"}), 2), id="only one of its devices online"),
    ],
)
def test_no_yield_to_a_task_that_could_not_use_the_devices(other: WaitingTask) -> None:
    _, effects = decide(State(task()), offered(waiting=(other,)))

    assert any(isinstance(e, InsertRound) for e in effects)


def test_busy_devices_are_waited_for_past_device_wait_s_up_to_queue_wait_s() -> None:
    busy = frozenset({"d0", "d1", "d2"})
    within = task(waiting_since=NOW - timedelta(seconds=31), queue_wait_s=60.0)

    assert decide(State(within), offered(busy=busy)).effects == []

    past = task(waiting_since=NOW - timedelta(seconds=61), queue_wait_s=60.0)
    after, effects = decide(State(past), offered(busy=busy))

    assert after.task is not None and after.task.state == TaskState.FAILED
    assert SetTaskState(past.task_id, TaskState.FAILED, StopReason.TOO_FEW_DEVICES) in effects
    ending = next(e for e in effects if isinstance(e, LogEvent))
    assert ending.detail is not None
    assert "3 more busy in other tasks' rounds" in ending.detail
    assert "(queue_wait_s)" in ending.detail


def test_the_yielding_count_names_only_tasks_that_could_run() -> None:
    pool = FLEET[:2]

    assert yields_to(pool, [], FLEET) == 0
    assert yields_to(pool, [WaitingTask(None, 4), WaitingTask(None, 5)], FLEET) == 1
    assert yields_to(pool, [WaitingTask(frozenset({"d1", "d3"}), 2)], FLEET) == 1
    assert yields_to(pool, [WaitingTask(frozenset({"d2", "d3"}), 2)], FLEET) == 0


def test_no_yield_to_a_task_whose_devices_are_too_low_on_battery() -> None:
    fleet = candidates(90.0, 90.0, 10.0, 10.0)

    assert yields_to(fleet[:2], [WaitingTask(frozenset({"d1", "d2", "d3"}), 2)], fleet) == 0
    assert yields_to(fleet[:2], [WaitingTask(frozenset({"d0", "d1", "d3"}), 2)], fleet) == 1
