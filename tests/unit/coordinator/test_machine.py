"""Every transition of the coordinator's lifecycle, as a table: state + event -> effects.

Each row names the task (and round) ``decide`` sees, the event, the effects it must return,
each as a short tuple (see ``summary``), and the task state and round status after it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from fedcommon import topics
from fedcommon.errors import ProtocolViolation
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    FedAdamStrategy,
    FedAvgStrategy,
    FedProxParams,
    FedProxStrategy,
    KrumStrategy,
    RoundAggregated,
    RoundOpened,
    StopReason,
    TaskSpec,
    TaskState,
    TrainRequested,
)
from fedengine_coordinator.core import selection
from fedengine_coordinator.core.effects import (
    AdvanceTask,
    ApplyResult,
    BuildInitialModel,
    CloseRound,
    CompleteRound,
    Effect,
    Emit,
    Ignored,
    InsertRound,
    InsertTask,
    LogEvent,
    OpenRound,
    SetTaskState,
    SetWaiting,
    StepServerOptimizer,
)
from fedengine_coordinator.core.events import (
    CommandReceived,
    CreateReceived,
    DevicesOffered,
    ErrorRaised,
    Event,
    FailureReceived,
    FailureSource,
    ModelApplied,
    ModelBuilt,
    ResultReceived,
    Ticked,
)
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.selection import Candidate
from fedengine_coordinator.core.state import Round, RoundStatus, State, Task

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TASK_ID = UUID(int=1)
OTHER_TASK_ID = UUID(int=2)
ROUND_ID = UUID(int=10)
NEW_ROUND_ID = UUID(int=11)
SHA = "ab" * 32

RUNNING, PAUSED, CREATED = TaskState.RUNNING, TaskState.PAUSED, TaskState.CREATED
COMPLETED, CANCELLED, FAILED = TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FAILED
OPEN, ABANDONED = RoundStatus.OPEN, RoundStatus.ABANDONED
CHANGED = ("emit", topics.EVENTS, "task.state_changed")


def spec(**fields: object) -> TaskSpec:
    values: dict[str, object] = {
        "task_name": "t",
        "rounds": 3,
        "devices_per_round": 2,
        "min_devices": 2,
        "max_round_retries": 2,
        "device_wait_s": 30.0,
        "round_timeout_s": 60.0,
    }
    return TaskSpec.model_validate(values | fields)


def task(
    state: TaskState = RUNNING,
    *,
    current_round: int = 0,
    waiting_since: datetime | None = None,
    **fields: object,
) -> Task:
    return Task(
        TASK_ID,
        spec(**fields),
        state,
        current_round=current_round,
        model_version=current_round,
        waiting_since=waiting_since,
    )


def round_(status: RoundStatus = OPEN, *, number: int = 1, attempt: int = 0) -> Round:
    return Round(
        ROUND_ID,
        TASK_ID,
        round_number=number,
        attempt=attempt,
        status=status,
        participants=("d0", "d1"),
        model_version_in=number - 1,
        deadline=NOW,
    )


def result(*, task_id: UUID = TASK_ID, number: int = 1) -> RoundAggregated:
    return RoundAggregated(
        producer="aggregator",
        round_id=ROUND_ID,
        task_id=task_id,
        round_number=number,
        attempt=0,
        model_version=number - 1,
        delta=b"delta",
        participants=["d0", "d1"],
        dropped=[],
        rejected={},
        num_examples=40,
        train_loss=0.5,
        bytes_up=2000,
        duration_s=1.5,
        sent_at=NOW - timedelta(seconds=2),
    )


def applied(accuracy: float, *history: float, number: int = 1) -> ModelApplied:
    return ModelApplied(
        result=result(number=number),
        version=number,
        sha256=SHA,
        size_bytes=1000,
        model_in_size=900,
        accuracy=accuracy,
        loss=0.4,
        history=history,
        now=NOW,
    )


def candidates(*battery: float | None) -> list[Candidate]:
    return [Candidate(f"d{i}", bytes([i]) * 32, pct) for i, pct in enumerate(battery)]


def offered(*battery: float | None, busy: frozenset[str] = frozenset()) -> DevicesOffered:
    return DevicesOffered(
        round_number=1,
        candidates=candidates(*battery),
        busy=busy,
        attempt=0,
        model_sha256=SHA,
        param_shapes=[[2, 2], [2]],
        round_id=NEW_ROUND_ID,
        now=NOW,
    )


def command(which: Command) -> CommandReceived:
    return CommandReceived(which, issued_by="alice")


def summary(effects: list[Effect]) -> list[tuple[object, ...]]:
    """Each effect as a short tuple, so that a table row can say it on one line."""
    out: list[tuple[object, ...]] = []
    for effect in effects:
        match effect:
            case InsertTask():
                out.append(("insert_task",))
            case SetTaskState(state=state, stop_reason=reason):
                out.append(("state", state, reason))
            case SetWaiting(since=since):
                out.append(("waiting", since))
            case AdvanceTask(round_number=number, model_version=version):
                out.append(("advance", number, version))
            case LogEvent(kind=kind, detail=detail):
                out.append(("log", kind, detail))
            case InsertRound(round=new):
                out.append(("insert_round", new.round_number, new.attempt, new.participants))
            case CloseRound(status=status, failure=failure):
                out.append(("close_round", status, failure))
            case CompleteRound(model_version_out=version):
                out.append(("complete_round", version))
            case Emit(base=base, message=message):
                out.append(("emit", base, message.type))
            case BuildInitialModel():
                out.append(("build_model",))
            case ApplyResult():
                out.append(("apply_result",))
            case StepServerOptimizer():
                out.append(("server_step",))
            case OpenRound(round_number=number):
                out.append(("open_round", number))
            case Ignored():
                out.append(("ignored",))
    return out


def finished(state: TaskState, reason: StopReason, detail: str) -> list[tuple[object, ...]]:
    return [("state", state, reason), ("log", state.value, f"{reason.value}: {detail}"), CHANGED]


APPLIED = [
    ("complete_round", 1),
    ("advance", 1, 1),
    ("emit", topics.MODELS, "model.published"),
    ("emit", topics.EVENTS, "round.completed"),
]
ROUND_OPENED = [
    ("emit", topics.UPDATES, "round.opened"),
    ("emit", topics.DEVICE_COMMANDS, "train.requested"),
    ("emit", topics.DEVICE_COMMANDS, "train.requested"),
    ("emit", topics.EVENTS, "round.started"),
]

KRUM_NEEDS = " (strategy krum needs at least 7)"

CASES = [
    # --- commands --------------------------------------------------------------------------
    pytest.param(
        State(task(CREATED)),
        command(Command.START),
        [("log", "start", None), ("state", RUNNING, None), CHANGED, ("open_round", 1)],
        RUNNING,
        None,
        id="start a created task: running, first round requested",
    ),
    pytest.param(
        State(task(COMPLETED, current_round=3)),
        command(Command.START),
        [("log", "start_ignored", "not allowed in state completed")],
        COMPLETED,
        None,
        id="start of a completed task is refused",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        command(Command.START),
        [("log", "start_ignored", "not allowed in state running")],
        RUNNING,
        OPEN,
        id="start of a running task is refused",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        command(Command.PAUSE),
        [("log", "pause", None), ("state", PAUSED, None), CHANGED],
        PAUSED,
        OPEN,
        id="pause while a round is open: the round stays open",
    ),
    pytest.param(
        State(task(PAUSED), round_()),
        command(Command.PAUSE),
        [("log", "pause_ignored", "not allowed in state paused")],
        PAUSED,
        OPEN,
        id="pause of a paused task is refused",
    ),
    pytest.param(
        State(task(PAUSED), round_()),
        command(Command.RESUME),
        [("log", "resume", None), ("state", RUNNING, None), CHANGED],
        RUNNING,
        OPEN,
        id="resume with the round still open waits for it",
    ),
    pytest.param(
        State(task(PAUSED, current_round=1)),
        command(Command.RESUME),
        [("log", "resume", None), ("state", RUNNING, None), CHANGED, ("open_round", 2)],
        RUNNING,
        None,
        id="resume after a failed round re-issues it",
    ),
    pytest.param(
        State(task(RUNNING)),
        command(Command.RESUME),
        [("log", "resume_ignored", "not allowed in state running")],
        RUNNING,
        None,
        id="resume of a running task is refused",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        command(Command.CANCEL),
        [
            ("log", "cancel", None),
            ("close_round", ABANDONED, "task cancelled"),
            *finished(CANCELLED, StopReason.CANCELLED, "round 1 abandoned"),
        ],
        CANCELLED,
        ABANDONED,
        id="cancel during a round abandons the round",
    ),
    pytest.param(
        State(task(CREATED)),
        command(Command.CANCEL),
        [
            ("log", "cancel", None),
            ("state", CANCELLED, StopReason.CANCELLED),
            ("log", "cancelled", "cancelled"),
            CHANGED,
        ],
        CANCELLED,
        None,
        id="cancel a created task",
    ),
    pytest.param(
        State(task(CANCELLED)),
        command(Command.CANCEL),
        [("log", "cancel_ignored", "not allowed in state cancelled")],
        CANCELLED,
        None,
        id="cancel of a cancelled task is refused",
    ),
    pytest.param(
        State(None),
        command(Command.START),
        [("ignored",)],
        None,
        None,
        id="a command for an unknown task is ignored",
    ),
    # --- creation --------------------------------------------------------------------------
    pytest.param(
        State(None),
        CreateReceived(TASK_ID, spec(), issued_by="alice"),
        [("insert_task",), ("build_model",), ("log", "created", None), CHANGED],
        CREATED,
        None,
        id="create a task: stored, model version 0 requested, announced",
    ),
    pytest.param(
        State(task(RUNNING)),
        CreateReceived(TASK_ID, spec(), issued_by="alice"),
        [("ignored",)],
        RUNNING,
        None,
        id="create of an existing task is ignored",
    ),
    pytest.param(
        State(task(CREATED)),
        ModelBuilt(sha256=SHA, size_bytes=1000),
        [("emit", topics.MODELS, "model.published")],
        CREATED,
        None,
        id="the initial model is published",
    ),
    # --- a round's result ------------------------------------------------------------------
    pytest.param(
        State(task(RUNNING), round_()),
        ResultReceived(result()),
        [("apply_result",)],
        RUNNING,
        OPEN,
        id="a result for the open round is applied",
    ),
    pytest.param(
        State(task(RUNNING, strategy={"name": "fedadam"}), round_()),
        ResultReceived(result()),
        [("server_step",)],
        RUNNING,
        OPEN,
        id="a result for a task with a server optimizer is a server step",
    ),
    pytest.param(
        State(task(RUNNING, strategy={"name": "fedprox"}), round_()),
        ResultReceived(result()),
        [("apply_result",)],
        RUNNING,
        OPEN,
        id="fedprox has no server optimizer: x + delta",
    ),
    pytest.param(
        State(task(RUNNING, strategy={"name": "fedavgm"}), round_()),
        applied(0.5),
        [*APPLIED, ("open_round", 2)],
        RUNNING,
        RoundStatus.COMPLETED,
        id="a server step's answer is a round applied like any other",
    ),
    pytest.param(
        State(None, round_(RoundStatus.COMPLETED)),
        ResultReceived(result()),
        [("ignored",)],
        None,
        RoundStatus.COMPLETED,
        id="a second result for a completed round is ignored",
    ),
    pytest.param(
        State(None, round_(ABANDONED)),
        ResultReceived(result()),
        [("ignored",)],
        None,
        ABANDONED,
        id="a result for an abandoned round is ignored",
    ),
    pytest.param(
        State(None),
        ResultReceived(result()),
        [("ignored",)],
        None,
        None,
        id="a result for an unknown round is ignored",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        applied(0.5),
        [*APPLIED, ("open_round", 2)],
        RUNNING,
        RoundStatus.COMPLETED,
        id="a round applied opens the next",
    ),
    pytest.param(
        State(task(PAUSED), round_()),
        applied(0.5),
        APPLIED,
        PAUSED,
        RoundStatus.COMPLETED,
        id="a round applied while paused opens no next round",
    ),
    pytest.param(
        State(task(RUNNING, current_round=2), round_(number=3)),
        applied(0.7, 0.5, 0.6, number=3),
        [
            ("complete_round", 3),
            ("advance", 3, 3),
            *APPLIED[2:],
            *finished(COMPLETED, StopReason.MAX_ROUNDS, "3 of 3 rounds done, accuracy 0.7000"),
        ],
        COMPLETED,
        RoundStatus.COMPLETED,
        id="the last round completes the task",
    ),
    pytest.param(
        State(task(RUNNING, target_accuracy=0.9), round_()),
        applied(0.95),
        [
            *APPLIED,
            *finished(
                COMPLETED,
                StopReason.TARGET_ACCURACY,
                "accuracy 0.9500 reached the target 0.9 in round 1",
            ),
        ],
        COMPLETED,
        RoundStatus.COMPLETED,
        id="target accuracy reached completes the task",
    ),
    pytest.param(
        State(task(RUNNING, current_round=2, rounds=9, patience=2), round_(number=3)),
        applied(0.8, 0.8, 0.79, number=3),
        [
            ("complete_round", 3),
            ("advance", 3, 3),
            *APPLIED[2:],
            *finished(
                COMPLETED,
                StopReason.CONVERGED,
                "no gain over 0.001 in the last 2 rounds; accuracy 0.8000 after round 3",
            ),
        ],
        COMPLETED,
        RoundStatus.COMPLETED,
        id="convergence completes the task",
    ),
    # --- a round's failure -----------------------------------------------------------------
    pytest.param(
        State(task(RUNNING), round_()),
        FailureReceived(TASK_ID, "1 of 2 updates by the deadline"),
        [
            ("close_round", RoundStatus.FAILED, "1 of 2 updates by the deadline"),
            ("log", "round_failed", "round 1 attempt 0: 1 of 2 updates by the deadline"),
            ("open_round", 1),
        ],
        RUNNING,
        RoundStatus.FAILED,
        id="a failed round is re-issued",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        FailureReceived(None, "no result by deadline", source=FailureSource.LOST),
        [
            ("close_round", RoundStatus.FAILED, "no result by deadline"),
            ("log", "round_failed", "round 1 attempt 0: no result by deadline"),
            ("open_round", 1),
        ],
        RUNNING,
        RoundStatus.FAILED,
        id="a lost round is re-issued",
    ),
    pytest.param(
        State(
            task(RUNNING, min_devices=7, devices_per_round=8, strategy={"name": "krum"}), round_()
        ),
        FailureReceived(TASK_ID, "5 of 7 updates by the deadline", received=5),
        [
            ("close_round", RoundStatus.FAILED, "5 of 7 updates by the deadline" + KRUM_NEEDS),
            (
                "log",
                "round_failed",
                "round 1 attempt 0: 5 of 7 updates by the deadline" + KRUM_NEEDS,
            ),
            ("open_round", 1),
        ],
        RUNNING,
        RoundStatus.FAILED,
        id="a round too short for its robust strategy fails saying so",
    ),
    pytest.param(
        State(
            task(RUNNING, min_devices=7, devices_per_round=8, strategy={"name": "krum"}), round_()
        ),
        FailureReceived(TASK_ID, "aggregation failed", received=7),
        [
            ("close_round", RoundStatus.FAILED, "aggregation failed"),
            ("log", "round_failed", "round 1 attempt 0: aggregation failed"),
            ("open_round", 1),
        ],
        RUNNING,
        RoundStatus.FAILED,
        id="a robust round failing with enough updates blames no strategy",
    ),
    pytest.param(
        State(task(PAUSED), round_()),
        FailureReceived(TASK_ID, "short"),
        [
            ("close_round", RoundStatus.FAILED, "short"),
            ("log", "round_failed", "round 1 attempt 0: short"),
        ],
        PAUSED,
        RoundStatus.FAILED,
        id="a round failed while paused waits for resume",
    ),
    pytest.param(
        State(task(RUNNING), round_(attempt=2)),
        FailureReceived(TASK_ID, "short"),
        [
            ("close_round", RoundStatus.FAILED, "short"),
            ("log", "round_failed", "round 1 attempt 2: short"),
            *finished(FAILED, StopReason.ROUND_FAILED, "round 1 failed 3 times, the last: short"),
        ],
        FAILED,
        RoundStatus.FAILED,
        id="the last allowed try failing fails the task",
    ),
    pytest.param(
        State(None, round_(RoundStatus.FAILED)),
        FailureReceived(TASK_ID, "short"),
        [("ignored",)],
        None,
        RoundStatus.FAILED,
        id="a failure of a round no longer open is ignored",
    ),
    # --- the tick --------------------------------------------------------------------------
    pytest.param(
        State(task(RUNNING, current_round=1)),
        Ticked(),
        [("open_round", 2)],
        RUNNING,
        None,
        id="the tick opens a round for a running task without one",
    ),
    pytest.param(
        State(task(RUNNING), round_()),
        Ticked(),
        [],
        RUNNING,
        OPEN,
        id="the tick leaves a task with an open round",
    ),
    pytest.param(
        State(task(PAUSED)),
        Ticked(),
        [],
        PAUSED,
        None,
        id="the tick leaves a paused task",
    ),
    # --- an error in the task's processing -------------------------------------------------
    pytest.param(
        State(task(RUNNING), round_()),
        ErrorRaised("boom"),
        [("close_round", ABANDONED, "task failed"), *finished(FAILED, StopReason.ERROR, "boom")],
        FAILED,
        ABANDONED,
        id="an error fails the task and abandons its round",
    ),
    pytest.param(
        State(task(COMPLETED)),
        ErrorRaised("boom"),
        [],
        COMPLETED,
        None,
        id="an error in a finished task changes nothing",
    ),
    pytest.param(
        State(None),
        ErrorRaised("boom"),
        [("ignored",)],
        None,
        None,
        id="an error in an unknown task is ignored",
    ),
    # --- opening a round -------------------------------------------------------------------
    pytest.param(
        State(task(RUNNING)),
        offered(90.0, 80.0, 70.0),
        # The seeded draw of round 1, try 0 (selection.round_rng with the spec's seed 0).
        [("insert_round", 1, 0, ("d1", "d2")), *ROUND_OPENED],
        RUNNING,
        OPEN,
        id="enough devices: a round opens with devices_per_round of them",
    ),
    pytest.param(
        State(task(RUNNING)),
        offered(90.0, 10.0, 70.0, busy=frozenset({"d0"})),
        [
            ("waiting", NOW),
            (
                "log",
                "waiting_for_devices",
                "1 eligible, 2 needed; 1 more busy in other tasks' rounds",
            ),
        ],
        RUNNING,
        None,
        id="too few devices (busy, low battery): the task waits",
    ),
    pytest.param(
        State(task(RUNNING, waiting_since=NOW - timedelta(seconds=10))),
        offered(90.0),
        [],
        RUNNING,
        None,
        id="too few devices within device_wait_s: the task goes on waiting",
    ),
    pytest.param(
        State(task(RUNNING, waiting_since=NOW - timedelta(seconds=31))),
        offered(90.0),
        finished(
            FAILED,
            StopReason.TOO_FEW_DEVICES,
            "round 1: 1 eligible, 2 needed, for more than 30 s (device_wait_s)",
        ),
        FAILED,
        None,
        id="too few devices past device_wait_s fails the task",
    ),
    pytest.param(
        State(task(RUNNING, waiting_since=NOW - timedelta(seconds=10))),
        offered(90.0, None),
        [("waiting", None), ("insert_round", 1, 0, ("d0", "d1")), *ROUND_OPENED],
        RUNNING,
        OPEN,
        id="devices back in time: the wait ends and the round opens",
    ),
    pytest.param(
        State(task(PAUSED)),
        offered(90.0, 80.0),
        [],
        PAUSED,
        None,
        id="a paused task opens no round",
    ),
]


@pytest.mark.parametrize(("state", "event", "effects", "task_after", "round_after"), CASES)
def test_decide(
    state: State,
    event: Event,
    effects: list[tuple[object, ...]],
    task_after: TaskState | None,
    round_after: RoundStatus | None,
) -> None:
    # Execute
    after, done = decide(state, event)

    # Assert
    assert summary(done) == effects
    assert (after.task.state if after.task else None) == task_after
    assert (after.round.status if after.round else None) == round_after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        pytest.param(State(task(), round_()), ResultReceived(result(task_id=OTHER_TASK_ID))),
        pytest.param(State(task(), round_()), FailureReceived(OTHER_TASK_ID, "short")),
    ],
    ids=["result", "failure"],
)
def test_a_round_event_naming_another_task_is_a_protocol_violation(
    state: State, event: Event
) -> None:
    with pytest.raises(ProtocolViolation, match="does not belong"):
        decide(state, event)


def test_decide_leaves_its_input_state_alone() -> None:
    # Prepare
    state = State(task(RUNNING), round_())

    # Execute
    decide(state, command(Command.CANCEL))

    # Assert
    assert state == State(task(RUNNING), round_())


def test_an_opened_round_tells_the_aggregator_and_each_device_what_to_do() -> None:
    # Prepare
    state = State(task(RUNNING, current_round=2, min_devices=1, devices_per_round=3))

    # Execute
    after, effects = decide(state, replace(offered(90.0, 80.0), round_number=3, attempt=1))

    # Assert
    emitted = [e for e in effects if isinstance(e, Emit)]
    opened, first, second, started = (e.message for e in emitted)
    deadline = NOW + timedelta(seconds=60)
    assert after.round == Round(
        NEW_ROUND_ID, TASK_ID, 3, 1, OPEN, ("d0", "d1"), model_version_in=2, deadline=deadline
    )
    assert opened.model_dump(include={"round_id", "round_number", "attempt", "model_version"}) == {
        "round_id": NEW_ROUND_ID,
        "round_number": 3,
        "attempt": 1,
        "model_version": 2,
    }
    assert opened.model_dump(include={"min_updates", "deadline", "param_shapes"}) == {
        "min_updates": 1,
        "deadline": deadline,
        "param_shapes": [[2, 2], [2]],
    }
    assert [(p.device_id, p.public_key) for p in opened.participants] == [
        ("d0", bytes([0]) * 32),
        ("d1", bytes([1]) * 32),
    ]
    assert [e.key for e in emitted] == [str(TASK_ID), "d0", "d1", str(TASK_ID)]
    for device, request in (("d0", first), ("d1", second)):
        assert request.model_dump(include={"device_id", "model_version", "model_sha256"}) == {
            "device_id": device,
            "model_version": 2,
            "model_sha256": SHA,
        }
    assert started.model_dump(include={"participants", "attempt"}) == {
        "participants": ["d0", "d1"],
        "attempt": 1,
    }


def test_an_applied_round_records_its_cost_and_publishes_the_new_version() -> None:
    # Prepare
    state = State(task(RUNNING), round_())

    # Execute
    after, effects = decide(state, applied(0.5))

    # Assert
    complete = effects[0]
    assert isinstance(complete, CompleteRound)
    assert (complete.bytes_down, complete.bytes_up, complete.num_examples) == (1800, 2000, 40)
    assert complete.duration_s == pytest.approx(3.5)  # 2 s since sent + 1.5 s aggregating
    published = effects[2]
    assert isinstance(published, Emit)
    assert published.message.model_dump(include={"version", "sha256", "size_bytes"}) == {
        "version": 1,
        "sha256": SHA,
        "size_bytes": 1000,
    }
    assert after.task == replace(task(RUNNING), current_round=1, model_version=1)


def test_a_whole_task_runs_round_by_round_to_its_last() -> None:
    """Start a three-round task and answer every request as the shell would: each round n
    is applied once and produces model version n, and the task completes after round 3."""
    # Prepare
    state = State(task(CREATED))
    events: list[Event] = [command(Command.START)]
    applied_versions: list[int] = []

    # Execute
    while events:
        state, effects = decide(state, events.pop(0))
        for effect in effects:
            match effect:
                case OpenRound(round_number=number):
                    events.append(replace(offered(90.0, 80.0), round_number=number))
                case InsertRound(round=new):
                    events.append(ResultReceived(result(number=new.round_number)))
                case ApplyResult(round=current):
                    number = current.round_number
                    events.append(applied(0.5, *[0.5] * (number - 1), number=number))
                case AdvanceTask(model_version=version):
                    applied_versions.append(version)

    # Assert
    assert state.task is not None
    assert (state.task.state, state.task.current_round) == (COMPLETED, 3)
    assert applied_versions == [1, 2, 3]


@pytest.mark.parametrize(
    ("strategy", "mu"),
    [
        pytest.param(FedAvgStrategy(), 0.0, id="fedavg"),
        pytest.param(FedProxStrategy(params=FedProxParams(mu=0.25)), 0.25, id="fedprox"),
        pytest.param(FedAdamStrategy(), 0.0, id="fedadam"),
    ],
)
def test_an_opened_round_carries_the_strategy_and_each_request_its_mu(
    strategy: FedAvgStrategy | FedProxStrategy | FedAdamStrategy, mu: float
) -> None:
    # Prepare
    state = State(task(RUNNING, strategy=strategy))

    # Execute
    _, effects = decide(state, offered(90.0, 80.0))

    # Assert
    messages = [e.message for e in effects if isinstance(e, Emit)]
    opened = [m for m in messages if isinstance(m, RoundOpened)]
    requests = [m for m in messages if isinstance(m, TrainRequested)]
    assert [m.strategy for m in opened] == [strategy]
    assert [r.proximal_mu for r in requests] == [mu, mu]


def test_an_opened_round_asks_for_at_least_the_strategys_minimum() -> None:
    # Prepare: krum (f = 2) needs 7 updates; the task asks for exactly that many.
    state = State(task(RUNNING, min_devices=7, devices_per_round=9, strategy=KrumStrategy()))

    # Execute
    _, effects = decide(state, offered(*[90.0] * 9))

    # Assert
    (opened,) = [e.message for e in effects if isinstance(e, Emit) and e.base == topics.UPDATES]
    assert isinstance(opened, RoundOpened)
    assert (opened.min_updates, len(opened.participants)) == (7, 9)
    assert opened.strategy == KrumStrategy()


def test_an_over_selected_round_asks_more_devices_and_is_enough_with_devices_per_round() -> None:
    # Prepare: 4 devices a round, 1.5 times over: 6 asked of the 8 online.
    state = State(task(RUNNING, min_devices=2, devices_per_round=4, over_selection=1.5))

    # Execute
    _, effects = decide(state, offered(*[90.0] * 8))

    # Assert
    (opened,) = [e.message for e in effects if isinstance(e, Emit) and e.base == topics.UPDATES]
    assert isinstance(opened, RoundOpened)
    assert (len(opened.participants), opened.target_updates, opened.min_updates) == (6, 4, 2)
    asked = [e for e in effects if isinstance(e, Emit) and e.base == topics.DEVICE_COMMANDS]
    assert len(asked) == 6


def test_a_round_that_is_not_over_selected_names_no_target() -> None:
    state = State(task(RUNNING, min_devices=2, devices_per_round=4, over_selection=1.5))

    # Only 4 online: all are asked, and the round waits for all of them as before.
    _, effects = decide(state, offered(*[90.0] * 4))

    (opened,) = [e.message for e in effects if isinstance(e, Emit) and e.base == topics.UPDATES]
    assert isinstance(opened, RoundOpened)
    assert (len(opened.participants), opened.target_updates) == (4, None)


@pytest.mark.parametrize(
    ("per_round", "factor", "asked"),
    [(10, 1.0, 10), (10, 1.3, 13), (3, 1.1, 4), (4, 1.5, 6), (9_000, 4.0, 10_000)],
)
def test_over_selection_rounds_up_within_the_bound(
    per_round: int, factor: float, asked: int
) -> None:
    assert selection.asked(per_round, factor) == asked


def test_over_selection_is_refused_with_privacy_or_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="over_selection"):
        spec(over_selection=1.3, privacy={"epsilon": 1.0, "noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="over_selection"):
        spec(over_selection=1.3, min_devices=3, devices_per_round=3, secure_aggregation={})
