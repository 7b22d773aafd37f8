"""A DP task's round stage before a try opens: draw the devices, ask for the spend, then open
the try (approved) or end the task (refused).

The privacy service accounts a round as the Poisson-subsampled Gaussian mechanism at rate q.
That amplification is honest only if (1) each device of the task's population joins with
probability at most q, independently, (2) from randomness nobody else knows, and (3) who
joined is not published. So a DP try does not use the task's reproducible seeded selection:
the shell hands in a seed from the operating system's entropy (never stored or sent), and
each eligible device joins with probability q = min(1, devices_per_round / population); the
participant list goes to the aggregator alone (fed.events and the REST views show none).

The population is the task's ``participating_devices`` when it names them, else the devices
eligible now. Drawing at the population's rate from the eligible ones (offline, busy or
low-battery devices are as if drawn and then silent) keeps q fixed while devices come and go:
the rate the budget was calibrated for, and the rate every round is charged at. A device's
chance to join never exceeds q, which is all the accountant assumes. The aggregator divides by
q times the population (DP-FedAvg's fixed denominator), whoever was online. q = 1 is the plain
Gaussian mechanism, with no amplification claimed.

With adaptive clipping each try asks for its spend at the task's current C (``Task.dp_clip_norm``,
moved after every applied round by the round's noised unclipped fraction, :func:`next_clip`).

A draw that comes out empty is released all the same: the aggregator adds the noise to an
empty sum (the spend is charged as for any round). Drawing again instead would make each
device's chance to join q / (1 - (1 - q)^n), more than it is charged for.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedcommon import lifecycle, topics
from fedcommon.constraints import MAX_SETTING
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    MIN_ADAPTIVE_CLIP_NORM,
    Participant,
    PrivacySpendRequested,
    RoundAggregated,
    RoundPrivacy,
    StopReason,
    TaskSpec,
    TaskState,
)
from fedengine_coordinator.core import local_privacy, secure_aggregation
from fedengine_coordinator.core.effects import (
    ApproveRound,
    CloseRound,
    Effect,
    Emit,
    Ignored,
    InsertRound,
    LogEvent,
)
from fedengine_coordinator.core.events import (
    DevicesOffered,
    SpendApproved,
    SpendRefused,
    SpendTimedOut,
)
from fedengine_coordinator.core.opening import new_try, open_messages
from fedengine_coordinator.core.selection import Candidate
from fedengine_coordinator.core.state import Round, RoundStatus, State, Task
from fedengine_coordinator.core.transition import PRODUCER, Decision, move, required
from fedprivacy import adaptive_clipping


def population(spec: TaskSpec, pool: list[Candidate]) -> int:
    """The devices a DP task draws from: the ones it names, else those eligible now."""
    return len(set(spec.participating_devices)) if spec.participating_devices else len(pool)


def sample_rate(*, devices_per_round: int, population_size: int) -> float:
    """q: each device's chance to join, so that a round of the whole population expects
    devices_per_round."""
    if population_size < 1:
        raise ValueError("no devices to draw from")
    return min(1.0, devices_per_round / population_size)


def clip_norm(task: Task) -> float | None:
    """The C a DP task's next try asks for: adaptive clipping's current C, else the task's
    fixed clip_norm (None: not a DP task)."""
    section = task.spec.privacy
    if section is None:
        return None
    if section.adaptive_clipping is not None and task.dp_clip_norm is not None:
        return task.dp_clip_norm
    return section.clip_norm


def next_clip(task: Task, round_: Round, result: RoundAggregated) -> float | None:
    """Adaptive clipping's C after ``round_``'s result, or None when it does not move (no
    adaptive clipping, or no noised fraction in the result).

    Post-processing of the round's release (b̃ is noised): it costs no privacy.
    """
    section = task.spec.privacy
    fraction = result.privacy_unclipped_fraction
    if section is None or section.adaptive_clipping is None or fraction is None:
        return None
    if round_.clip_norm is None:
        raise ProtocolViolation(f"DP try {round_.round_id} has no clipping norm")
    settings = section.adaptive_clipping
    return adaptive_clipping.next_clip_norm(
        round_.clip_norm,
        fraction,
        target_quantile=settings.target_quantile,
        learning_rate=settings.learning_rate,
        lowest=MIN_ADAPTIVE_CLIP_NORM,
        highest=MAX_SETTING,
    )


def poisson_draw(pool: list[Candidate], *, q: float, secret_seed: int) -> list[Candidate]:
    """Each candidate joins independently with probability ``q``; the draw may be empty."""
    ordered = sorted(pool, key=lambda c: c.device_id)
    rng = np.random.default_rng(secret_seed)
    return [c for c, u in zip(ordered, rng.random(len(ordered)), strict=True) if u < q]


def request_spend(
    state: State, pool: list[Candidate], event: DevicesOffered, effects: list[Effect]
) -> Decision:
    """Store a try of ``event.round_number`` waiting for its spend, and ask for it."""
    task = required(state.task, event)
    spec = task.spec
    budget = spec.privacy
    if budget is None:
        raise ValueError(f"task {task.task_id} has no privacy section")
    size = population(spec, pool)
    q = sample_rate(devices_per_round=spec.devices_per_round, population_size=size)
    chosen = poisson_draw(pool, q=q, secret_seed=event.secret_seed)
    # Its deadline is set again when the spend is approved; an awaiting try is never lost.
    round_ = new_try(
        task,
        event,
        (c.device_id for c in chosen),
        status=RoundStatus.AWAITING_SPEND,
        sample_rate=q,
        expected_participants=q * size,
        clip_norm=clip_norm(task),
    )
    request = PrivacySpendRequested(
        producer=PRODUCER,
        round_id=round_.round_id,
        task_id=task.task_id,
        round_number=round_.round_number,
        attempt=round_.attempt,
        budget=budget,
        planned_rounds=spec.rounds,
        sample_rate=q,
        on_behalf_of=task.created_by,
        clip_norm=round_.clip_norm,
        expected_participants=round_.expected_participants,
    )
    return Decision(
        State(task, round_),
        [
            *effects,
            InsertRound(round_),
            Emit(topics.PRIVACY, str(task.task_id), request),
            LogEvent(
                task.task_id,
                "privacy_spend_requested",
                detail=f"round {round_.round_number} attempt {round_.attempt} at sampling "
                f"rate {q:.4g}",
            ),
        ],
    )


def _awaiting(state: State, *, task_id: object, round_number: int, attempt: int) -> Round | None:
    """The try an answer is for, if it still waits; the answer must name that try exactly."""
    round_ = state.round
    if round_ is None or round_.status != RoundStatus.AWAITING_SPEND:
        return None
    if (round_.task_id, round_.round_number, round_.attempt) != (task_id, round_number, attempt):
        raise ProtocolViolation(
            f"privacy answer for task {task_id} round {round_number} attempt {attempt} names "
            f"try {round_.round_id} of task {round_.task_id}"
        )
    return round_


def on_approved(state: State, event: SpendApproved) -> Decision:
    """Open the try under its approval (a paused task's too: the spend is already charged)."""
    approval = event.approval
    round_ = _awaiting(
        state,
        task_id=approval.task_id,
        round_number=approval.round_number,
        attempt=approval.attempt,
    )
    task = state.task
    if round_ is None or task is None:
        return Decision(state, [Ignored(f"approval {approval.approval_id} for no waiting try")])
    participants = [
        Participant(device_id=d, public_key=event.public_keys[d])
        for d in round_.participants
        if d in event.public_keys
    ]
    if round_.expected_participants is None:
        raise ProtocolViolation(f"try {round_.round_id} has no expected participant count")
    due = secure_aggregation.deadlines(task.spec, now=event.now)
    round_ = replace(
        round_,
        status=RoundStatus.OPEN,
        participants=tuple(p.device_id for p in participants),
        deadline=due.round,
    )
    detail = (
        f"round {round_.round_number} attempt {round_.attempt}: epsilon "
        f"{approval.epsilon_spent:.4g} of {approval.epsilon_budget:g} spent, noise multiplier "
        f"{approval.noise_multiplier:.4g}, clipping norm {approval.clip_norm:.4g}"
    )
    effects: list[Effect] = [
        ApproveRound(
            round_.round_id,
            approval_id=approval.approval_id,
            epsilon_spent=approval.epsilon_spent,
            noise_multiplier=approval.noise_multiplier,
            deadline=round_.deadline,
        ),
        LogEvent(task.task_id, "privacy_spend_approved", detail=detail),
    ]
    effects += open_messages(
        task,
        round_,
        participants,
        model_sha256=event.model_sha256,
        param_shapes=event.param_shapes,
        deadline=due.train,
        graph_seed=event.graph_seed,
        privacy=RoundPrivacy(
            approval_id=approval.approval_id,
            clip_norm=approval.clip_norm,
            noise_multiplier=approval.noise_multiplier,
            expected_participants=round_.expected_participants,
            update_noise_multiplier=approval.update_noise_multiplier,
            count_noise_std=approval.count_noise_std,
        ),
        local_dp=local_privacy.assign(
            round_.participants, levels=event.privacy_levels, settings=event.local_dp
        ),
    )
    return Decision(State(task, round_), effects)


def on_refused(state: State, event: SpendRefused) -> Decision:
    """Abandon the try; a task out of budget completes, one whose spend cannot be accounted
    fails (both with the service's reason)."""
    refusal = event.refusal
    round_ = _awaiting(
        state,
        task_id=refusal.task_id,
        round_number=refusal.round_number,
        attempt=refusal.attempt,
    )
    task = state.task
    if round_ is None or task is None:
        return Decision(state, [Ignored(f"refusal for round {refusal.round_number}: no try")])
    why = f"privacy spend refused ({refusal.reason}): {refusal.detail}"
    effects: list[Effect] = [
        CloseRound(round_.round_id, RoundStatus.ABANDONED, why[:500]),
        LogEvent(task.task_id, "privacy_spend_refused", detail=why),
    ]
    round_ = replace(round_, status=RoundStatus.ABANDONED)
    if task.state not in lifecycle.FINISHED:
        if refusal.reason == "budget_exhausted":
            task, moved = move(
                task, TaskState.COMPLETED, StopReason.PRIVACY_BUDGET_EXHAUSTED, detail=why
            )
        else:
            task, moved = move(task, TaskState.FAILED, StopReason.ERROR, detail=why)
        effects += moved
    return Decision(State(task, round_), effects)


def on_timed_out(state: State, event: SpendTimedOut) -> Decision:
    """Abandon a try whose spend got no answer in time, and fail its task saying so.

    The privacy service answers every request it can decode (an accountant error included) with
    an approval or a refusal; no answer within the timeout means it is down, lagging far behind
    or lost the request, and a round waiting for ever is the one thing worse than failing. An
    answer that comes later is ignored (its try no longer waits); an approval it charged stays
    in the ledger, spent on nothing: the safe side.
    """
    round_ = state.round
    task = state.task
    if round_ is None or task is None or round_.status != RoundStatus.AWAITING_SPEND:
        return Decision(state, [Ignored("spend timeout for no waiting try")])
    why = (
        f"no privacy spend answer for round {round_.round_number} attempt {round_.attempt} "
        f"within {event.timeout_s:g} s (COORDINATOR_SPEND_TIMEOUT_S)"
    )
    effects: list[Effect] = [
        CloseRound(round_.round_id, RoundStatus.ABANDONED, why),
        LogEvent(task.task_id, "privacy_spend_timed_out", detail=why),
    ]
    round_ = replace(round_, status=RoundStatus.ABANDONED)
    if task.state not in lifecycle.FINISHED:
        task, moved = move(task, TaskState.FAILED, StopReason.ERROR, detail=why)
        effects += moved
    return Decision(State(task, round_), effects)
