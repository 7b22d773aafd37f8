"""Federated evaluation in the coordinator's lifecycle: when a version is evaluated, who is
asked, which answers count, what the round's metrics become and what the task does next."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from fedcommon import signing, topics
from fedcommon.constraints import MAX_DEVICES_PER_ROUND
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    EvaluateRequested,
    EvaluationSubmitted,
    FederatedEvaluationSpec,
    InitialModel,
    RoundAggregated,
    RoundEvaluated,
    StopReason,
    TaskSpec,
    TaskState,
)
from fedengine_coordinator.core import federated_evaluation
from fedengine_coordinator.core.effects import (
    CloseEvaluation,
    Emit,
    Ignored,
    InsertEvaluation,
    LogEvent,
    OpenEvaluation,
    OpenRound,
    RecordEvaluationResult,
    SetTaskState,
    TallyEvaluation,
)
from fedengine_coordinator.core.events import (
    CommandReceived,
    DeviceEvaluation,
    EvaluationDue,
    EvaluationOffered,
    EvaluationReceived,
    EvaluationTallied,
    ModelApplied,
    Ticked,
)
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.selection import Candidate
from fedengine_coordinator.core.state import Evaluation, Round, RoundStatus, State, Task

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TASK_ID = UUID(int=1)
ROUND_ID = UUID(int=10)
EVALUATION_ID = UUID(int=20)
SHA = "ab" * 32
KEYS = {f"d{i}": signing.generate_private_key() for i in range(6)}


def spec(**fields: object) -> TaskSpec:
    values: dict[str, object] = {
        "task_name": "t",
        "initial_model": InitialModel(model_id=UUID(int=5), sha256=SHA),
        "rounds": 5,
        "devices_per_round": 4,
        "federated_evaluation": FederatedEvaluationSpec(every_rounds=2, fraction=0.5),
        **fields,
    }
    return TaskSpec.model_validate(values)


def task(state: TaskState = TaskState.RUNNING, **fields: object) -> Task:
    return Task(TASK_ID, spec(**fields), state, current_round=1, model_version=1)


def candidates(n: int = 6) -> list[Candidate]:
    return [Candidate(f"d{i}", signing.public_key_bytes(KEYS[f"d{i}"]), None) for i in range(n)]


def evaluation(devices: tuple[str, ...] = ("d0", "d1", "d2")) -> Evaluation:
    return Evaluation(EVALUATION_ID, TASK_ID, 2, 2, devices, NOW + timedelta(seconds=30))


def applied(round_number: int, the_task: Task) -> tuple[State, ModelApplied]:
    round_ = Round(
        ROUND_ID, TASK_ID, round_number, 0, RoundStatus.OPEN, ("d0",), round_number - 1, NOW
    )
    result = RoundAggregated(
        producer="aggregator",
        round_id=ROUND_ID,
        task_id=TASK_ID,
        round_number=round_number,
        attempt=0,
        model_version=round_number - 1,
        delta=b"",
        num_examples=10,
        participants=["d0"],
        dropped=[],
        rejected={},
        train_loss=0.5,
        bytes_up=10,
        duration_s=0.1,
    )
    event = ModelApplied(result, round_number, SHA, 10, 10, None, None, (), NOW)
    return State(the_task, round_), event


def submitted(device: str = "d0", **fields: object) -> EvaluationSubmitted:
    values: dict[str, object] = {
        "producer": "device",
        "task_id": TASK_ID,
        "evaluation_id": EVALUATION_ID,
        "device_id": device,
        "round_number": 2,
        "model_version": 2,
        "num_examples": 10,
        "loss": 0.5,
        "metrics": {"accuracy": 0.8},
        "signature": bytes(64),
        **fields,
    }
    unsigned = EvaluationSubmitted.model_validate(values)
    payload = signing.evaluation_payload(
        task_id=unsigned.task_id,
        evaluation_id=unsigned.evaluation_id,
        device_id=unsigned.device_id,
        round_number=unsigned.round_number,
        model_version=unsigned.model_version,
        num_examples=unsigned.num_examples,
        loss=unsigned.loss,
        metrics=unsigned.metrics,
    )
    return unsigned.model_copy(update={"signature": KEYS[device].sign(payload)})


def received(message: EvaluationSubmitted, *, at: datetime = NOW) -> EvaluationReceived:
    key = signing.public_key_bytes(KEYS[message.device_id]) if message.device_id in KEYS else None
    return EvaluationReceived(message, key, at)


@pytest.mark.parametrize(
    ("round_number", "due"), [(1, False), (2, True), (3, False), (4, True), (5, True)]
)
def test_a_version_is_evaluated_every_k_rounds_and_after_the_last(
    round_number: int, due: bool
) -> None:
    assert federated_evaluation.due(spec(), round_number) is due


def test_a_due_round_waits_for_its_evaluation_and_an_undue_one_opens_the_next() -> None:
    state, event = applied(2, task())
    _, effects = decide(state, event)
    assert isinstance(effects[-1], OpenEvaluation)
    assert not any(isinstance(e, OpenRound) for e in effects)

    state, event = applied(3, task())
    _, effects = decide(state, event)
    assert isinstance(effects[-1], OpenRound) and effects[-1].round_number == 4


def test_the_fraction_of_eligible_devices_is_asked_with_the_version_and_a_deadline() -> None:
    offered = EvaluationOffered(2, 2, candidates(6), frozenset({"d5"}), SHA, EVALUATION_ID, NOW)

    after, effects = decide(State(task()), offered)

    assert after.evaluation is not None
    assert len(after.evaluation.devices) == 3  # ceil(0.5 * 5 eligible)
    assert "d5" not in after.evaluation.devices
    assert after.evaluation.deadline == NOW + timedelta(seconds=30)
    assert isinstance(effects[0], InsertEvaluation)
    requests = [e for e in effects if isinstance(e, Emit)]
    assert {e.key for e in requests} == set(after.evaluation.devices)
    for e in requests:
        assert e.base == topics.DEVICE_COMMANDS
        assert isinstance(e.message, EvaluateRequested)
        assert (e.message.model_version, e.message.model_sha256) == (2, SHA)
        assert e.message.model_architecture is None and e.message.dataset is None


def test_too_few_devices_skip_the_evaluation_and_the_task_goes_on() -> None:
    the_task = task(federated_evaluation=FederatedEvaluationSpec(every_rounds=2, min_devices=4))
    offered = EvaluationOffered(2, 2, candidates(3), frozenset(), SHA, EVALUATION_ID, NOW)

    after, effects = decide(State(the_task), offered)

    assert after.evaluation is None
    assert isinstance(effects[0], LogEvent) and effects[0].kind == "evaluation_skipped"
    assert isinstance(effects[-1], OpenRound) and effects[-1].round_number == 3


def test_an_answer_is_recorded_and_tallied_once_it_may_be_the_last() -> None:
    record = RecordEvaluationResult(EVALUATION_ID, "d1", 10, 0.5, {"accuracy": 0.8})
    # Two of three devices still to answer: nothing to tally (no read-back of every answer).
    _, first = decide(State(task(), evaluation=evaluation()), received(submitted("d1")))
    # Two answers stored: this may be the last.
    waiting = replace(evaluation(), answered=2)
    _, last = decide(State(task(), evaluation=waiting), received(submitted("d1")))

    assert first == [record]
    assert last == [record, TallyEvaluation(waiting, final=False)]


@pytest.mark.parametrize(
    ("message", "at", "why"),
    [
        (submitted("d4"), NOW, "was not asked"),
        (submitted("d0", model_version=1), NOW, "model version"),
        (submitted("d0", evaluation_id=UUID(int=99)), NOW, "is not open"),
        (submitted("d0"), NOW + timedelta(seconds=31), "late"),
        (submitted("d0").model_copy(update={"loss": 0.1}), NOW, "bad signature"),
        (
            submitted("d0").model_copy(update={"metrics": {"accuracy": 0.99}}),
            NOW,
            "bad signature",
        ),
    ],
)
def test_answers_that_do_not_count_are_refused_with_the_reason(
    message: EvaluationSubmitted, at: datetime, why: str
) -> None:
    state = State(task(), evaluation=evaluation())

    _, effects = decide(state, received(message, at=at))

    assert len(effects) == 1 and isinstance(effects[0], Ignored)
    assert why in effects[0].why


def test_a_device_that_signs_with_another_key_is_refused() -> None:
    forged = submitted("d1").model_copy(update={"device_id": "d0"})

    _, effects = decide(State(task(), evaluation=evaluation()), received(forged))

    assert isinstance(effects[0], Ignored) and "bad signature" in effects[0].why


def test_the_last_answer_closes_the_evaluation_with_example_weighted_means() -> None:
    results = [
        DeviceEvaluation("d0", 10, 1.0, {"accuracy": 0.5, "auc": 0.6}),
        DeviceEvaluation("d1", 30, 0.2, {"accuracy": 0.9}),
        DeviceEvaluation("d2", 60, 0.3, {"accuracy": 0.7, "auc": 0.8}),
    ]
    state = State(task(), evaluation=evaluation())

    after, effects = decide(state, EvaluationTallied(results, (0.4,), final=False))

    close = effects[0]
    assert isinstance(close, CloseEvaluation) and close.status == "completed"
    assert close.answered == 3 and close.num_examples == 100
    assert close.accuracy == pytest.approx((5 + 27 + 42) / 100)
    assert close.loss == pytest.approx((10 + 6 + 18) / 100)
    assert close.metrics == {"auc": pytest.approx((6 + 48) / 70)}
    event = effects[1]
    assert isinstance(event, Emit) and isinstance(event.message, RoundEvaluated)
    assert after.evaluation is None
    assert isinstance(effects[-1], OpenRound) and effects[-1].round_number == 3


def test_a_partial_tally_waits_and_the_deadline_closes_with_what_came() -> None:
    state = State(task(), evaluation=evaluation())
    one = [DeviceEvaluation("d0", 10, 1.0, {"accuracy": 0.5})]

    assert decide(state, EvaluationTallied(one, (), final=False)).effects == []
    assert decide(state, EvaluationDue(EVALUATION_ID)).effects == [
        TallyEvaluation(evaluation(), final=True)
    ]
    _, effects = decide(state, EvaluationTallied(one, (), final=True))
    assert isinstance(effects[0], CloseEvaluation) and effects[0].accuracy == 0.5


def test_nobody_answering_is_logged_and_the_task_goes_on_without_a_verdict() -> None:
    _, effects = decide(
        State(task(), evaluation=evaluation()), EvaluationTallied([], (), final=True)
    )

    close = effects[0]
    assert isinstance(close, CloseEvaluation) and close.accuracy is None and close.answered == 0
    assert any(isinstance(e, LogEvent) and e.kind == "evaluation_unanswered" for e in effects)
    assert isinstance(effects[-1], OpenRound)


def test_the_stopping_rules_read_the_federated_accuracy() -> None:
    the_task = task(target_accuracy=0.75)
    results = [DeviceEvaluation("d0", 10, 0.3, {"accuracy": 0.8})]

    after, effects = decide(
        State(the_task, evaluation=evaluation(("d0",))),
        EvaluationTallied(results, (0.5,), final=False),
    )

    assert after.task is not None and after.task.state == TaskState.COMPLETED
    assert SetTaskState(TASK_ID, TaskState.COMPLETED, StopReason.TARGET_ACCURACY) in effects


def test_the_last_round_completes_the_task_only_after_its_evaluation() -> None:
    results = [DeviceEvaluation("d0", 10, 0.3, {"accuracy": 0.6})]
    last = replace(evaluation(("d0",)), round_number=5, model_version=5)

    after, effects = decide(
        State(task(), evaluation=last), EvaluationTallied(results, (), final=False)
    )

    assert after.task is not None and after.task.state == TaskState.COMPLETED
    assert SetTaskState(TASK_ID, TaskState.COMPLETED, StopReason.MAX_ROUNDS) in effects


def test_no_round_opens_beside_an_open_evaluation() -> None:
    state = State(task(), evaluation=evaluation())

    assert decide(state, Ticked()).effects == []
    paused = State(task(TaskState.PAUSED), evaluation=evaluation())
    _, effects = decide(paused, CommandReceived(Command.RESUME, "op"))
    assert not any(isinstance(e, OpenRound) for e in effects)


def test_a_paused_task_closes_its_evaluation_but_opens_no_round() -> None:
    results = [DeviceEvaluation("d0", 10, 0.3, {"accuracy": 0.6})]
    state = State(task(TaskState.PAUSED), evaluation=evaluation(("d0",)))

    _, effects = decide(state, EvaluationTallied(results, (), final=False))

    assert isinstance(effects[0], CloseEvaluation)
    assert not any(isinstance(e, OpenRound) for e in effects)


def test_cancelling_abandons_the_open_evaluation() -> None:
    _, effects = decide(
        State(task(), evaluation=evaluation()), CommandReceived(Command.CANCEL, "op")
    )

    assert CloseEvaluation(EVALUATION_ID, TASK_ID, 2, "abandoned") in effects


def test_the_tick_closes_only_the_evaluation_it_found_overdue() -> None:
    # The task's open evaluation is a newer one by the time the tick's close comes.
    state = State(task(), evaluation=evaluation())

    assert decide(state, EvaluationDue(UUID(int=99))).effects == []


def test_an_answer_read_after_an_outage_counts_by_when_it_reached_the_log() -> None:
    # Prepare: the answer reached the log 5 s before the deadline; the coordinator (restarted,
    # or waiting out a database outage) reads it a minute after.
    deadline = evaluation().deadline
    logged = deadline - timedelta(seconds=5)
    read = deadline + timedelta(minutes=1)

    # Execute
    at = federated_evaluation.received_at(processed=read, logged_ms=int(logged.timestamp() * 1000))
    _, effects = decide(State(task(), evaluation=evaluation()), received(submitted(), at=at))

    # Assert
    assert at == logged
    assert isinstance(effects[0], RecordEvaluationResult)


@pytest.mark.parametrize(
    ("logged_ms", "expected"),
    [
        (None, NOW),  # no timestamp: the time it is read
        (-1, NOW),
        (int((NOW + timedelta(hours=1)).timestamp() * 1000), NOW),  # a clock ahead changes nothing
        (int((NOW - timedelta(seconds=3)).timestamp() * 1000), NOW - timedelta(seconds=3)),
    ],
)
def test_an_answer_is_received_when_logged_or_read_whichever_came_first(
    logged_ms: int | None, expected: datetime
) -> None:
    assert federated_evaluation.received_at(processed=NOW, logged_ms=logged_ms) == expected


def test_an_overdue_evaluation_closes_a_grace_after_it_was_first_seen_overdue() -> None:
    first, second = UUID(int=1), UUID(int=2)

    # First seen at 100 (the first tick with the database back): nothing closes yet.
    due, seen = federated_evaluation.closable([first], {}, now=100.0, grace_s=10.0)
    assert (due, seen) == ([], {first: 100.0})
    # Still within the grace; a second one is seen.
    due, seen = federated_evaluation.closable([first, second], seen, now=109.0, grace_s=10.0)
    assert (due, seen) == ([], {first: 100.0, second: 109.0})
    # The first's grace is over; one no longer overdue (closed meanwhile) is forgotten.
    due, seen = federated_evaluation.closable([first], seen, now=110.0, grace_s=10.0)
    assert (due, seen) == ([first], {})


def test_no_grace_closes_at_once() -> None:
    due, seen = federated_evaluation.closable([EVALUATION_ID], {}, now=0.0, grace_s=0.0)

    assert (due, seen) == ([EVALUATION_ID], {})


def test_no_more_devices_are_asked_than_a_round_may_have() -> None:
    # Prepare: a fleet larger than a round's bound, all eligible, at the default fraction 1.0.
    pool = [Candidate(f"x{i:06d}", bytes(32), None) for i in range(MAX_DEVICES_PER_ROUND + 5)]
    the_task = task(federated_evaluation=FederatedEvaluationSpec())
    offered = EvaluationOffered(2, 2, pool, frozenset(), SHA, EVALUATION_ID, NOW)

    # Execute
    after, effects = decide(State(the_task), offered)

    # Assert: the tally of so many answers still fits round.evaluated.
    assert after.evaluation is not None
    assert len(after.evaluation.devices) == MAX_DEVICES_PER_ROUND
    assert sum(isinstance(e, Emit) for e in effects) == MAX_DEVICES_PER_ROUND
    assert federated_evaluation.how_many(10**5, fraction=1.0, min_devices=1) == (
        MAX_DEVICES_PER_ROUND
    )
