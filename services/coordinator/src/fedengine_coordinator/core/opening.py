"""The messages that open a round try, shared by a plain try and a DP try once approved."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from fedcommon import secagg_round, topics
from fedcommon.messages.v1 import (
    LocalDp,
    LocalDpAssigned,
    LocalDpAssignment,
    Participant,
    RoundOpened,
    RoundPrivacy,
    RoundStarted,
    TrainRequested,
)
from fedengine_coordinator.core import secure_aggregation, strategy
from fedengine_coordinator.core.effects import Effect, Emit
from fedengine_coordinator.core.events import DevicesOffered
from fedengine_coordinator.core.state import Round, RoundStatus, Task
from fedengine_coordinator.core.transition import PRODUCER


def new_try(
    task: Task,
    event: DevicesOffered,
    participants: Iterable[str],
    *,
    status: RoundStatus = RoundStatus.OPEN,
    sample_rate: float | None = None,
    expected_participants: float | None = None,
    clip_norm: float | None = None,
) -> Round:
    """The try ``event`` offers devices for, on the task's current model, due after the
    task's round timeout and a secure task's later stages (``secure_aggregation.deadlines``;
    a DP try's deadline is set again when its spend is approved)."""
    return Round(
        round_id=event.round_id,
        task_id=task.task_id,
        round_number=event.round_number,
        attempt=event.attempt,
        status=status,
        participants=tuple(participants),
        model_version_in=task.model_version,
        deadline=secure_aggregation.deadlines(task.spec, now=event.now).round,
        sample_rate=sample_rate,
        expected_participants=expected_participants,
        clip_norm=clip_norm,
    )


def open_messages(
    task: Task,
    round_: Round,
    participants: list[Participant],
    *,
    model_sha256: str,
    param_shapes: list[list[int]],
    deadline: datetime,
    graph_seed: bytes | None = None,
    privacy: RoundPrivacy | None = None,
    local_dp: Mapping[str, LocalDp] | None = None,
) -> list[Effect]:
    """The messages that open a try: to the aggregator, to each device, to the watchers.

    ``deadline`` is the first stage's (``secure_aggregation.deadlines(...).train``). A DP try
    (``privacy`` set) tells the aggregator what its approval paid for, and publishes no
    participant list to the watchers. Devices in ``local_dp`` train with DP-SGD at their
    settings, and the privacy service is told of them (charged) before they are asked. A task
    with secure aggregation gets the round's SecAgg+ parameters (graph from ``graph_seed``)
    and each device its index and neighbours, in ``participants``' order.
    """
    local = dict(local_dp or {})
    spec = task.spec
    key = str(task.task_id)
    secure = secure_aggregation.round_parameters(
        spec, num_clients=len(participants), graph_seed=graph_seed, dp=privacy
    )
    secure_assignments = (
        {}
        if secure is None
        else secure_aggregation.assignments(
            secure, participants, dim=secagg_round.dim_of(param_shapes)
        )
    )
    opened = RoundOpened(
        producer=PRODUCER,
        round_id=round_.round_id,
        task_id=task.task_id,
        round_number=round_.round_number,
        attempt=round_.attempt,
        model_version=round_.model_version_in,
        participants=participants,
        # Never below what the strategy needs (TaskSpec keeps min_devices at least that), so
        # the aggregator fails a round whose survivors are too few for it.
        min_updates=max(min(spec.min_devices, len(participants)), spec.strategy.params.min_updates),
        # Over-selected: enough once devices_per_round are in.
        target_updates=spec.devices_per_round
        if privacy is None and secure is None and len(participants) > spec.devices_per_round
        else None,
        deadline=deadline,
        param_shapes=param_shapes,
        max_update_norm=spec.max_update_norm,
        strategy=spec.strategy,
        privacy=privacy,
        secure_aggregation=secure,
    )
    effects: list[Effect] = [Emit(topics.UPDATES, key, opened)]
    # A secure try too small for the protocol (a DP draw of one or two devices) asks nobody:
    # the aggregator fails it with the reason, and no update travels in the clear.
    asked = [] if secure is not None and not secure_assignments else list(round_.participants)
    assignments = [LocalDpAssignment(device_id=d, settings=local[d]) for d in asked if d in local]
    if assignments:
        assigned = LocalDpAssigned(
            producer=PRODUCER,
            round_id=round_.round_id,
            task_id=task.task_id,
            round_number=round_.round_number,
            attempt=round_.attempt,
            planned_rounds=spec.rounds,
            assignments=assignments,
        )
        effects.append(Emit(topics.PRIVACY, key, assigned))
    for device_id in asked:
        request = TrainRequested(
            producer=PRODUCER,
            round_id=round_.round_id,
            task_id=task.task_id,
            device_id=device_id,
            round_number=round_.round_number,
            model_version=round_.model_version_in,
            model_sha256=model_sha256,
            deadline=deadline,
            model_architecture=spec.model_architecture,
            dataset=spec.dataset,
            model_hidden=spec.model_hidden,
            standardize=spec.standardize,
            learning_rate=spec.learning_rate,
            local_epochs=spec.local_epochs,
            batch_size=spec.batch_size,
            seed=spec.seed,
            proximal_mu=strategy.proximal_mu(spec.strategy),
            local_dp=local.get(device_id),
            secure_aggregation=secure_assignments.get(device_id),
        )
        effects.append(Emit(topics.DEVICE_COMMANDS, device_id, request))
    started = RoundStarted(
        producer=PRODUCER,
        round_id=round_.round_id,
        task_id=task.task_id,
        round_number=round_.round_number,
        attempt=round_.attempt,
        participants=[] if privacy is not None else list(round_.participants),
    )
    effects.append(Emit(topics.EVENTS, key, started))
    return effects
