"""A DP task's stage before a try opens: secret Poisson draw, spend request, approval or
refusal (core/spend.py), as table rows and properties."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from uuid import UUID

import numpy as np
import pytest

from fedcommon import topics
from fedcommon.errors import ProtocolViolation
from fedcommon.lifecycle import Command
from fedcommon.messages.v1 import (
    KrumStrategy,
    PrivacySpendApproved,
    PrivacySpendRefused,
    PrivacySpendRequested,
    RoundOpened,
    RoundStarted,
    StopReason,
    TaskSpec,
)
from fedengine_coordinator.core import spend
from fedengine_coordinator.core.effects import AdvanceTask, ApproveRound, Emit, InsertRound
from fedengine_coordinator.core.events import SpendApproved, SpendRefused, SpendTimedOut, Ticked
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.state import RoundStatus, State
from tests.unit.coordinator.test_machine import (
    CANCELLED,
    COMPLETED,
    FAILED,
    NOW,
    PAUSED,
    RUNNING,
    SHA,
    TASK_ID,
    applied,
    candidates,
    command,
    offered,
    round_,
    summary,
    task,
)

AWAITING = RoundStatus.AWAITING_SPEND
APPROVAL_ID = UUID(int=99)
BUDGET = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "noise_multiplier": 5.0}


def dp_task(state=RUNNING, **fields: object):  # type: ignore[no-untyped-def]
    return task(state, privacy=BUDGET, **fields)


def awaiting(**fields: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {"sample_rate": 1.0, "expected_participants": 2.0} | fields
    return replace(round_(AWAITING), **values)


def approval(**fields: object) -> PrivacySpendApproved:
    values: dict[str, object] = {
        "producer": "privacy",
        "round_id": round_().round_id,
        "task_id": TASK_ID,
        "round_number": 1,
        "attempt": 0,
        "approval_id": APPROVAL_ID,
        "noise_multiplier": 5.0,
        "sample_rate": 1.0,
        "clip_norm": 1.0,
        "epsilon_spent": 0.4,
        "epsilon_budget": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
    }
    return PrivacySpendApproved.model_validate(values | fields)


def approved(**fields: object) -> SpendApproved:
    keys = {"d0": bytes([0]) * 32, "d1": bytes([1]) * 32}
    return SpendApproved(approval(**fields), keys, SHA, [[2, 2], [2]], NOW)


def refused(reason: str = "budget_exhausted") -> SpendRefused:
    return SpendRefused(
        PrivacySpendRefused(
            producer="privacy",
            round_id=round_().round_id,
            task_id=TASK_ID,
            round_number=1,
            attempt=0,
            reason=reason,  # type: ignore[arg-type]
            detail="round 1 would spend epsilon 1.2 of 1",
            epsilon_spent=0.9,
            epsilon_budget=1.0,
        )
    )


REQUESTED = [
    ("insert_round", 1, 0, ("d0", "d1")),
    ("emit", topics.PRIVACY, "privacy.spend_requested"),
    ("log", "privacy_spend_requested", "round 1 attempt 0 at sampling rate 1"),
]
OPENED = [
    ("emit", topics.UPDATES, "round.opened"),
    ("emit", topics.DEVICE_COMMANDS, "train.requested"),
    ("emit", topics.DEVICE_COMMANDS, "train.requested"),
    ("emit", topics.EVENTS, "round.started"),
]
WHY = "privacy spend refused (budget_exhausted): round 1 would spend epsilon 1.2 of 1"
CHANGED = ("emit", topics.EVENTS, "task.state_changed")
TIMED_OUT = (
    "no privacy spend answer for round 1 attempt 0 within 600 s (COORDINATOR_SPEND_TIMEOUT_S)"
)

CASES = [
    pytest.param(State(dp_task()), offered(80, 80), REQUESTED, RUNNING, AWAITING, id="offered"),
    pytest.param(
        State(dp_task(), awaiting()),
        approved(),
        [("log", "privacy_spend_approved", None), *OPENED],
        RUNNING,
        RoundStatus.OPEN,
        id="approved-opens",
    ),
    pytest.param(
        State(dp_task(PAUSED), awaiting()),
        approved(),
        [("log", "privacy_spend_approved", None), *OPENED],
        PAUSED,
        RoundStatus.OPEN,
        id="approved-while-paused-opens-the-charged-try",
    ),
    pytest.param(
        State(dp_task(), awaiting()),
        refused(),
        [
            ("close_round", RoundStatus.ABANDONED, WHY),
            ("log", "privacy_spend_refused", WHY),
            ("state", COMPLETED, StopReason.PRIVACY_BUDGET_EXHAUSTED),
            ("log", "completed", f"privacy_budget_exhausted: {WHY}"),
            CHANGED,
        ],
        COMPLETED,
        RoundStatus.ABANDONED,
        id="refused-completes",
    ),
    pytest.param(
        State(dp_task(), awaiting()),
        refused("invalid"),
        [
            ("close_round", RoundStatus.ABANDONED, WHY.replace("budget_exhausted", "invalid")),
            ("log", "privacy_spend_refused", WHY.replace("budget_exhausted", "invalid")),
            ("state", FAILED, StopReason.ERROR),
            ("log", "failed", f"error: {WHY.replace('budget_exhausted', 'invalid')}"),
            CHANGED,
        ],
        FAILED,
        RoundStatus.ABANDONED,
        id="invalid-fails",
    ),
    pytest.param(
        State(dp_task(), round_(RoundStatus.ABANDONED)),
        approved(),
        [("ignored",)],
        RUNNING,
        RoundStatus.ABANDONED,
        id="approval-for-an-abandoned-try-ignored",
    ),
    pytest.param(
        State(dp_task(), awaiting()),
        Ticked(),
        [],
        RUNNING,
        AWAITING,
        id="tick-waits-for-the-spend",
    ),
    pytest.param(
        State(dp_task(), awaiting()),
        command(Command.CANCEL),
        [
            ("log", "cancel", None),
            ("close_round", RoundStatus.ABANDONED, "task cancelled"),
            ("state", CANCELLED, StopReason.CANCELLED),
            ("log", "cancelled", "cancelled: round 1 abandoned"),
            CHANGED,
        ],
        CANCELLED,
        RoundStatus.ABANDONED,
        id="cancel-abandons-the-waiting-try",
    ),
    pytest.param(
        State(dp_task(), awaiting()),
        SpendTimedOut(600.0),
        [
            ("close_round", RoundStatus.ABANDONED, TIMED_OUT),
            ("log", "privacy_spend_timed_out", TIMED_OUT),
            ("state", FAILED, StopReason.ERROR),
            ("log", "failed", f"error: {TIMED_OUT}"),
            CHANGED,
        ],
        FAILED,
        RoundStatus.ABANDONED,
        id="spend-timeout-fails-the-task",
    ),
    pytest.param(
        State(dp_task(PAUSED), awaiting()),
        SpendTimedOut(600.0),
        [
            ("close_round", RoundStatus.ABANDONED, TIMED_OUT),
            ("log", "privacy_spend_timed_out", TIMED_OUT),
            ("state", FAILED, StopReason.ERROR),
            ("log", "failed", f"error: {TIMED_OUT}"),
            CHANGED,
        ],
        FAILED,
        RoundStatus.ABANDONED,
        id="spend-timeout-fails-a-paused-task-too",
    ),
    pytest.param(
        State(dp_task(CANCELLED), awaiting()),
        SpendTimedOut(600.0),
        [
            ("close_round", RoundStatus.ABANDONED, TIMED_OUT),
            ("log", "privacy_spend_timed_out", TIMED_OUT),
        ],
        CANCELLED,
        RoundStatus.ABANDONED,
        id="spend-timeout-of-a-finished-task-only-closes-the-try",
    ),
    pytest.param(
        State(dp_task(), round_(RoundStatus.OPEN)),
        SpendTimedOut(600.0),
        [("ignored",)],
        RUNNING,
        RoundStatus.OPEN,
        id="spend-timeout-after-the-approval-ignored",
    ),
    pytest.param(
        State(dp_task(), round_(RoundStatus.ABANDONED)),
        SpendTimedOut(600.0),
        [("ignored",)],
        RUNNING,
        RoundStatus.ABANDONED,
        id="spend-timeout-after-the-refusal-ignored",
    ),
    pytest.param(
        State(dp_task(COMPLETED), awaiting()),
        refused(),
        [
            ("close_round", RoundStatus.ABANDONED, WHY),
            ("log", "privacy_spend_refused", WHY),
        ],
        COMPLETED,
        RoundStatus.ABANDONED,
        id="refusal-of-a-finished-task-only-closes-the-try",
    ),
]


@pytest.mark.parametrize(("state", "event", "effects", "task_after", "round_after"), CASES)
def test_decide(state, event, effects, task_after, round_after) -> None:  # type: ignore[no-untyped-def]
    # Execute
    after, done = decide(state, event)

    # Assert
    got = [
        (e[0], e[1], None) if e[:2] == ("log", "privacy_spend_approved") else e
        for e in summary(done)
    ]
    got = [
        ("log", e[1], None) if e[:2] in {("log", "cancel")} else e  # issued_by, not detail
        for e in got
    ]
    assert got == effects
    assert after.task is not None and after.task.state == task_after
    assert after.round is not None and after.round.status == round_after


def test_the_spend_request_carries_the_budget_the_rate_and_the_owner() -> None:
    # Execute
    _, effects = decide(State(replace(dp_task(), created_by="alice")), offered(80, 80, 80, 80))

    # Assert
    (request,) = [e.message for e in effects if isinstance(e, Emit)]
    assert isinstance(request, PrivacySpendRequested)
    assert request.sample_rate == pytest.approx(0.5)  # 2 per round of 4 eligible
    assert request.budget.epsilon == 1.0 and request.planned_rounds == 3
    assert request.on_behalf_of == "alice"
    (insert,) = [e for e in effects if isinstance(e, InsertRound)]
    assert request.round_id == insert.round.round_id
    assert insert.round.expected_participants == pytest.approx(2.0)


def test_a_named_population_fixes_the_rate_whoever_is_online() -> None:
    # Arrange: the task names 8 devices, 4 a round; only 4 of them are online now.
    named = dp_task(participating_devices=[f"d{i}" for i in range(8)], devices_per_round=4)

    # Execute
    _, effects = decide(State(named), offered(80, 80, 80, 80))

    # Assert: q stays 4 / 8; the denominator is q times the 8, not the 4 online.
    (request,) = [e.message for e in effects if isinstance(e, Emit)]
    assert isinstance(request, PrivacySpendRequested)
    assert request.sample_rate == pytest.approx(0.5)
    (insert,) = [e for e in effects if isinstance(e, InsertRound)]
    assert insert.round.expected_participants == pytest.approx(4.0)


def test_an_approved_try_tells_the_aggregator_its_noise_and_publishes_no_participants() -> None:
    # Execute
    _, effects = decide(State(dp_task(), awaiting(expected_participants=2.5)), approved())

    # Assert
    (approve,) = [e for e in effects if isinstance(e, ApproveRound)]
    assert approve.approval_id == APPROVAL_ID and approve.epsilon_spent == 0.4
    assert approve.deadline == NOW + timedelta(seconds=60)
    messages = [e.message for e in effects if isinstance(e, Emit)]
    (opened,) = [m for m in messages if isinstance(m, RoundOpened)]
    assert opened.privacy is not None
    assert opened.privacy.approval_id == APPROVAL_ID
    assert opened.privacy.noise_multiplier == 5.0 and opened.privacy.clip_norm == 1.0
    assert opened.privacy.expected_participants == 2.5
    assert [p.device_id for p in opened.participants] == ["d0", "d1"]
    (started,) = [m for m in messages if isinstance(m, RoundStarted)]
    assert started.participants == []


def test_an_answer_naming_another_try_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        decide(State(dp_task(), awaiting()), approved(attempt=3))


def test_a_plain_task_opens_at_once_without_asking() -> None:
    # Execute
    _, effects = decide(State(task()), offered(80, 80))

    # Assert
    assert not any(isinstance(e, Emit) and e.base == topics.PRIVACY for e in effects)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_the_draw_is_poisson_at_rate_q(q: float) -> None:
    # Arrange: 200 draws of 100 devices; each device's join count is Binomial(200, q).
    pool = candidates(*([80.0] * 100))

    # Execute
    counts = np.zeros(100)
    for seed in range(200):
        for c in spend.poisson_draw(pool, q=q, secret_seed=seed):
            counts[int(c.device_id[1:])] += 1

    # Assert: the mean rate within 5 standard errors (false-failure rate < 1e-6)
    standard_error = np.sqrt(q * (1 - q) / (200 * 100))
    assert abs(counts.mean() / 200 - q) < 5 * standard_error


def test_an_empty_draw_is_not_drawn_again_and_releases_pure_noise() -> None:
    # Arrange: q so small that the draw of 3 devices is empty for some seeds
    pool = candidates(80, 80, 80)
    empty_seed = next(
        seed for seed in range(1000) if not spend.poisson_draw(pool, q=0.05, secret_seed=seed)
    )
    waiting = awaiting(participants=(), expected_participants=0.15)

    # Execute: the try is approved with nobody drawn
    after, effects = decide(State(dp_task(), waiting), approved())

    # Assert: it opens all the same, telling the aggregator to release noise alone.
    assert empty_seed >= 0
    assert after.round is not None and after.round.status == RoundStatus.OPEN
    messages = [e.message for e in effects if isinstance(e, Emit)]
    (opened,) = [m for m in messages if isinstance(m, RoundOpened)]
    assert opened.participants == [] and opened.privacy is not None
    assert not [m for m in messages if m.type == "train.requested"]


def test_a_round_without_privacy_needs_participants() -> None:
    # Arrange
    _, effects = decide(State(task()), offered(80, 80))
    (opened,) = [
        e.message for e in effects if isinstance(e, Emit) and e.message.type == "round.opened"
    ]
    assert isinstance(opened, RoundOpened)

    # Execute / Assert
    with pytest.raises(ValueError, match="needs participants"):
        RoundOpened.model_validate(opened.model_dump() | {"participants": []})


def test_privacy_with_a_robust_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="differential privacy cannot be used with strategy krum"):
        TaskSpec.model_validate(
            {
                "task_name": "t",
                "devices_per_round": 10,
                "min_devices": 7,
                "strategy": KrumStrategy().model_dump(),
                "privacy": BUDGET,
            }
        )


# --- adaptive clipping ------------------------------------------------------------------------

ADAPTIVE_BUDGET = BUDGET | {"adaptive_clipping": {"target_quantile": 0.5, "learning_rate": 0.2}}


def adaptive_task(**fields: object):  # type: ignore[no-untyped-def]
    return task(RUNNING, privacy=ADAPTIVE_BUDGET, **fields)


def test_an_adaptive_task_asks_at_its_current_c_with_the_expected_participants() -> None:
    # Prepare: a task whose C has moved to 0.37 after earlier rounds.
    moved = replace(adaptive_task(), dp_clip_norm=0.37)

    # Execute
    _, first = decide(State(adaptive_task()), offered(80, 80, 80, 80))
    _, later = decide(State(moved), offered(80, 80, 80, 80))

    # Assert: the first try asks at the section's C, a later one at the moved C.
    requests = [
        next(e.message for e in effects if isinstance(e, Emit)) for effects in (first, later)
    ]
    assert all(isinstance(r, PrivacySpendRequested) for r in requests)
    assert [r.clip_norm for r in requests] == [1.0, 0.37]  # type: ignore[union-attr]
    assert [r.expected_participants for r in requests] == [2.0, 2.0]  # type: ignore[union-attr]
    (insert,) = [e for e in later if isinstance(e, InsertRound)]
    assert insert.round.clip_norm == 0.37


def test_an_approved_adaptive_try_passes_the_split_to_the_aggregator() -> None:
    # Execute
    _, effects = decide(
        State(adaptive_task(), awaiting(clip_norm=0.37)),
        approved(clip_norm=0.37, update_noise_multiplier=5.2, count_noise_std=5.0),
    )

    # Assert
    (opened,) = [e.message for e in effects if isinstance(e, Emit) and e.base == topics.UPDATES]
    assert isinstance(opened, RoundOpened) and opened.privacy is not None
    assert opened.privacy.clip_norm == 0.37
    assert opened.privacy.noise_multiplier == 5.0
    assert (opened.privacy.update_noise_multiplier, opened.privacy.count_noise_std) == (5.2, 5.0)


@pytest.mark.parametrize(("fraction", "factor"), [(0.9, math.exp(-0.08)), (0.1, math.exp(0.08))])
def test_an_applied_adaptive_round_moves_c_by_its_noised_fraction(
    fraction: float, factor: float
) -> None:
    # Prepare: round 1 ran at C = 0.5 and released b̃ = fraction.
    state = State(adaptive_task(), replace(round_(), sample_rate=1.0, clip_norm=0.5))
    event = applied(0.8)
    event = replace(
        event,
        result=event.result.model_copy(update={"privacy_unclipped_fraction": fraction}),
    )

    # Execute
    after, effects = decide(state, event)

    # Assert: C·exp(−0.2·(b̃ − 0.5)), stored with the round's advance.
    (advance,) = [e for e in effects if isinstance(e, AdvanceTask)]
    assert advance.dp_clip_norm == pytest.approx(0.5 * factor)
    assert after.task is not None and after.task.dp_clip_norm == advance.dp_clip_norm


def test_a_fixed_clip_task_keeps_its_c() -> None:
    state = State(dp_task(), replace(round_(), sample_rate=1.0, clip_norm=1.0))

    after, effects = decide(state, applied(0.8))

    (advance,) = [e for e in effects if isinstance(e, AdvanceTask)]
    assert advance.dp_clip_norm is None
    assert after.task is not None and after.task.dp_clip_norm is None


def test_a_count_noise_too_small_for_a_given_z_is_refused_at_creation() -> None:
    section = ADAPTIVE_BUDGET | {"adaptive_clipping": {"count_noise_std": 2.5}}  # z = 5

    with pytest.raises(ValueError, match="count_noise_std must be above"):
        TaskSpec.model_validate(
            {"task_name": "t", "participating_devices": ["d0"], "privacy": section}
        )
