"""The device side of secure rounds: one SecAgg+ state per (round, device), in memory.

Shared by the device runtime (one device per process) and the simulator (many devices in one),
so that the SecAgg+ client side exists once; each passes how it sends a record and, where it
exports metrics, what to count.

A device of a round with secure aggregation sends no update.submitted: after training it keeps
its flat update in a ``core.secagg_device.DeviceRound`` and answers the aggregator's
secagg.delivered (fed.device.commands) one stage at a time with signed secagg.submitted
(fed.secagg). The states live in this process only: a restart loses them, and those devices
have dropped out, which the protocol tolerates. Each is forgotten once it finishes, or at the
train request's deadline plus four stage timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast
from uuid import UUID

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import topics
from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import (
    Envelope,
    SecAggAssignment,
    SecAggDelivered,
    SecAggStage,
    SecAggSubmitted,
    TrainRequested,
)
from feddevice.secagg_device import (
    Action,
    DeviceRound,
    DeviceRounds,
    DropPolicy,
    RoundIdentity,
    Step,
    flatten,
    submission_id,
)

logger = logging.getLogger(__name__)

# Sends one record: (topic base, record key, message), waiting for the broker.
Send = Callable[[str, str, Envelope], Awaitable[None]]


class Counts(Protocol):
    """What a shell counts of its secure rounds (the simulator exports these as metrics)."""

    def sent(self, stage: int) -> None: ...

    def dropped(self, stage: int, cause: str) -> None: ...

    def ignored(self, why: str) -> None: ...


class NoCounts:
    def sent(self, stage: int) -> None:
        pass

    def dropped(self, stage: int, cause: str) -> None:
        pass

    def ignored(self, why: str) -> None:
        pass


# How long a device keeps a secure round's state past the train request's deadline, in
# stage timeouts: one per stage after training.
SECAGG_STAGES_AFTER_DEADLINE = 4


class SecureRounds:
    """The fleet's secure rounds in progress, and the I/O around each device's state."""

    def __init__(
        self,
        send: Send,
        *,
        keys: Mapping[str, Ed25519PrivateKey],
        producer: str,
        drop_policy: DropPolicy | None = None,
        counts: Counts | None = None,
    ) -> None:
        self.send = send
        self.keys = keys
        self.producer = producer
        self.drop_policy = drop_policy or DropPolicy()
        self.counts: Counts = counts or NoCounts()
        self.rounds = DeviceRounds()

    def pending(self, round_id: UUID, device_id: str) -> DeviceRound | None:
        """The state of a round this device already started (its stage 1 sent or not)."""
        return self.rounds.get(round_id, device_id)

    async def start(
        self,
        message: TrainRequested,
        *,
        round_id: UUID,
        assignment: SecAggAssignment,
        device_id: str,
        num_examples: int,
        delta: NDArrays,
    ) -> None:
        """Keep the flat update in this round's state and send stage 1 (the device's keys)."""
        self.forget_expired()
        try:
            state = DeviceRound(
                identity=RoundIdentity(
                    task_id=message.task_id,
                    round_id=round_id,
                    round_number=message.round_number,
                    device_id=device_id,
                    request_id=message.message_id,
                ),
                assignment=assignment,
                update=flatten(delta),
                num_examples=num_examples,
                expires_at=message.deadline
                + SECAGG_STAGES_AFTER_DEADLINE
                * timedelta(seconds=assignment.round.stage_timeout_s),
                # Stochastic rounding from the OS's entropy, as DP noise is.
                rng=np.random.default_rng(secrets.randbits(128)),
                drop_policy=self.drop_policy,
            )
        except ValueError as exc:
            self.counts.dropped(1, "assignment")
            logger.warning(
                "device %s cannot take part in secure round %s of task %s: %s",
                device_id,
                message.round_number,
                message.task_id,
                exc,
                extra={"round_id": str(round_id), "message_id": str(message.message_id)},
            )
            return
        self.rounds.add(state)
        await self.step(state, state.advertise())

    async def handle(self, message: SecAggDelivered) -> None:
        """Run the stage the aggregator's delivery asks for (its service signature was checked
        by the consume loop against the aggregator key in the enrolment token)."""
        self.forget_expired()
        state = self.rounds.get(message.round_id, message.device_id)
        if state is None:
            # Finished, dropped out, expired, or lost with a restart: nothing to answer.
            self.counts.ignored("unknown_round")
            logger.debug(
                "device %s holds no secure round %s: stage %d delivery ignored",
                message.device_id,
                message.round_id,
                message.stage,
                extra={"message_id": str(message.message_id)},
            )
            return
        # Stage 3 expands one mask per neighbour over the whole update: off the event loop.
        # Records of one device share a partition, so its state is never used twice at once.
        step = await asyncio.to_thread(
            state.on_delivery,
            task_id=message.task_id,
            round_id=message.round_id,
            round_number=message.round_number,
            device_id=message.device_id,
            stage=message.stage,
            payload=message.payload,
        )
        await self.step(state, step)

    async def step(self, state: DeviceRound, step: Step) -> None:
        """Carry out one step: send the stage's answer, or log why nothing is sent."""
        identity = state.identity
        extra = {"round_id": str(identity.round_id), "client_id": identity.device_id}
        if step.action is Action.SEND:
            signature = self.keys[identity.device_id].sign(
                state.signing_payload(stage=step.stage, payload=step.payload)
            )
            await self.send(
                topics.SECAGG,
                str(identity.task_id),
                SecAggSubmitted(
                    # The same id on a re-send of the same answer, so the aggregator sees one.
                    message_id=submission_id(
                        round_id=identity.round_id,
                        device_id=identity.device_id,
                        stage=step.stage,
                    ),
                    producer=self.producer,
                    round_id=identity.round_id,
                    correlation_id=identity.request_id,
                    task_id=identity.task_id,
                    device_id=identity.device_id,
                    round_number=identity.round_number,
                    stage=cast(SecAggStage, step.stage),
                    payload=step.payload,
                    signature=signature,
                ),
            )
            state.mark_sent(step.stage)
            self.counts.sent(step.stage)
            logger.debug(
                "device %s sent secure stage %d (%d bytes)",
                identity.device_id,
                step.stage,
                len(step.payload),
                extra=extra,
            )
        elif step.action is Action.DROP:
            cause = step.cause.value if step.cause is not None else "unknown"
            self.counts.dropped(step.stage, cause)
            logger.warning(
                "device %s leaves secure round %s of task %s at stage %d (%s): %s",
                identity.device_id,
                identity.round_number,
                identity.task_id,
                step.stage,
                cause,
                step.reason,
                extra=extra,
            )
        else:
            self.counts.ignored("repeat")
            logger.debug(
                "device %s: stage %d delivery changed nothing (%s)",
                identity.device_id,
                step.stage,
                step.reason,
                extra=extra,
            )
        if state.finished:
            self.rounds.forget(state)

    def forget_expired(self) -> None:
        """Forget secure rounds past their deadline plus four stage timeouts (bounded memory)."""
        for state in self.rounds.forget_expired(datetime.now(UTC)):
            if not state.finished:
                self.counts.dropped(0, "expired")
                logger.info(
                    "device %s: secure round %s of task %s expired before it finished",
                    state.identity.device_id,
                    state.identity.round_number,
                    state.identity.task_id,
                    extra={"round_id": str(state.identity.round_id)},
                )
