"""SecAgg+ as the aggregator runs it: four stages over fed.secagg, pure (no I/O, no clock).

A secure round (its round.opened carries ``secure_aggregation``) replaces the update exchange
with the four stages of ``fedprivacy.secagg`` (Bonawitz et al. 2017 with Bell et al.'s 2020
sparse graph): key advertisement (which also waits for training), key sharing, masked input
and unmasking. The protocol itself is the library's ``SecAggServer``; this module is the
aggregator's side of it: it maps device ids to the protocol's indices (the order of the
round's participants), checks what a device sends (the protocol's canonical bytes, from the
sender it claims), routes the ciphertexts of stage 2, and builds what each device is sent when
a stage begins (``begin``), with message ids derived from task, round, attempt, stage and
recipient, so that an aggregator restarted mid-stage sends the same message, never another.

The shell persists the server state when each stage begins (``checkpoint``), with that stage's
deliveries and in the same transaction: a restarted aggregator resumes there (``restore``),
re-reading only the current stage's records, and never decides a stage twice.

What the aggregator learns: the keys, the routed ciphertexts (encrypted device to device),
who answered each stage, and the unmasked sum. Not any device's update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

import numpy as np
import numpy.typing as npt

from fedcommon import arrays, secagg_round, signing, topics
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    DP_STRATEGIES,
    SECAGG_MIN_PARTICIPANTS,
    AnyMessage,
    RoundAggregated,
    RoundOpened,
    SecAggDelivered,
    SecAggSubmitted,
)
from fedcommon.server_opt import Float64Arrays, to_float32
from fedengine_aggregator.core import dp_fedavg, results
from fedengine_aggregator.core.exchange import stage_deadline
from fedengine_aggregator.core.protocol import Outgoing, RoundProtocol, StageFailed, StageLog
from fedengine_aggregator.core.stages import Stage as RoundStage
from fedengine_aggregator.core.stages import StageSpec
from fedengine_aggregator.core.validation import Rejected, RejectReason
from fedprivacy.secagg import (
    AggregateResult,
    EncryptedShares,
    InvalidSecAggMessage,
    KeyAdvertisement,
    MaskedInput,
    RoundConfig,
    SecAggServer,
    Stage,
    ThresholdNotMet,
    UnmaskingShares,
)
from fedprivacy.secagg.client import ProtocolStateError
from fedprivacy.secagg.delivery import (
    AdvertDelivery,
    DeliveryHeader,
    ShareDelivery,
    UnmaskingDelivery,
    message_id,
)
from fedprivacy.secagg.encoding import dequantize_sum

if TYPE_CHECKING:
    from fedengine_aggregator.core.stages import RoundStages
    from fedengine_aggregator.core.window import OpenRound, RoundResult


class StageName(StrEnum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASKING = "unmasking"


STAGE_NAMES: dict[Stage, StageName] = {
    Stage.ADVERTISE_KEYS: StageName.ADVERTISE_KEYS,
    Stage.SHARE_KEYS: StageName.SHARE_KEYS,
    Stage.MASKED_INPUT: StageName.MASKED_INPUT,
    Stage.UNMASKING: StageName.UNMASKING,
}
STAGE_OF_NAME: dict[str, Stage] = {name.value: stage for stage, name in STAGE_NAMES.items()}

DeviceMessage = KeyAdvertisement | EncryptedShares | MaskedInput | UnmaskingShares
_PARSERS: dict[Stage, Callable[[bytes], DeviceMessage]] = {
    Stage.ADVERTISE_KEYS: KeyAdvertisement.from_bytes,
    Stage.SHARE_KEYS: EncryptedShares.from_bytes,
    Stage.MASKED_INPUT: MaskedInput.from_bytes,
    Stage.UNMASKING: UnmaskingShares.from_bytes,
}


def refusal(opened: RoundOpened) -> str | None:
    """Why a secure round cannot run at all, or None (also None for a round without it)."""
    if opened.secure_aggregation is None:
        return None
    if opened.strategy.name not in DP_STRATEGIES:
        return (
            f"secure aggregation cannot be used with strategy {opened.strategy.name}: the "
            "aggregator sees only the sum, and this strategy needs every update"
        )
    if len(opened.participants) < SECAGG_MIN_PARTICIPANTS:
        return (
            f"secure aggregation needs at least {SECAGG_MIN_PARTICIPANTS} participants, the "
            f"round has {len(opened.participants)}"
        )
    return None


def round_config(opened: RoundOpened) -> RoundConfig:
    """The protocol's parameters for ``opened`` (``ValueError`` if they are inconsistent)."""
    secagg = opened.secure_aggregation
    if secagg is None:
        raise ValueError(f"round {opened.round_id} has no secure aggregation")
    return RoundConfig(
        **secagg_round.config_fields(  # type: ignore[arg-type]
            secagg,
            task_id=opened.task_id,
            round_number=opened.round_number,
            num_clients=len(opened.participants),
            dim=secagg_round.dim_of(opened.param_shapes),
        )
    )


def secure_plan(opened: RoundOpened, *, received_at: datetime | None) -> list[StageSpec]:
    """The four stages: the first waits for training and key advertisement until the round's
    deadline; each later one runs ``stage_timeout_s`` from its own start. The protocol checks
    its thresholds itself when a stage closes (``begin``), so no stage has a minimum here."""
    secagg = opened.secure_aggregation
    if secagg is None:
        raise ValueError(f"round {opened.round_id} has no secure aggregation")
    deadline = stage_deadline(opened, received_at)
    timeout = timedelta(seconds=secagg.stage_timeout_s)
    return [
        StageSpec(
            name=STAGE_NAMES[stage].value,
            topics=frozenset({topics.SECAGG}),
            deadline=deadline,
            timeout=None if stage == Stage.ADVERTISE_KEYS else timeout,
            min_senders=0,
            expected=(
                {p.device_id: p for p in opened.participants}
                if stage == Stage.ADVERTISE_KEYS
                else None
            ),
        )
        for stage in Stage
    ]


@dataclass(frozen=True)
class Delivery:
    """One message to one device when a stage begins: the protocol's bytes and its id."""

    device_id: str
    stage: Stage
    payload: bytes
    message_id: UUID


@dataclass
class StageTally:
    """What the secagg log records of one stage: bytes each way and rejected messages."""

    bytes_up: int = 0
    bytes_down: int = 0
    rejected: int = 0


class SecureExchange(RoundProtocol):
    """The aggregator's state of one secure round, around the library's ``SecAggServer``."""

    def __init__(self, opened: RoundOpened) -> None:
        """Raise ``ValueError`` when the round cannot run (:func:`refusal`, bad parameters)."""
        reason = refusal(opened)
        if reason is not None:
            raise ValueError(reason)
        super().__init__(opened)
        self.config = round_config(opened)
        self.server = SecAggServer(self.config)
        self.ids = [p.device_id for p in opened.participants]
        self.index_of = {device_id: i for i, device_id in enumerate(self.ids)}
        # Stage-1 signatures, forwarded with the advertisements so neighbours check each key.
        self._advert_signatures: dict[int, bytes] = {}
        # Stage-2 ciphertexts by recipient: (sender, nonce || ciphertext).
        self._inbox: dict[int, list[tuple[int, bytes]]] = {}
        # The message counted for each (stage, device): a redelivery is not a second message.
        self._accepted: dict[tuple[Stage, str], UUID] = {}
        # Later stages' messages held until their stage (one per stage and device).
        self._held: set[tuple[Stage, str]] = set()
        # Records of stages before this one were decided before a restart (``restore``).
        self.resumed_at = Stage.ADVERTISE_KEYS
        self.tallies = {stage: StageTally() for stage in Stage}

    # What the round reads ---------------------------------------------------------------
    def plan(self, *, received_at: datetime | None) -> list[StageSpec]:
        return secure_plan(self.opened, received_at=received_at)

    def stage_of(self, message: AnyMessage) -> str | None:
        if isinstance(message, SecAggSubmitted):
            return STAGE_NAMES[Stage(message.stage)].value
        return None

    # Records ---------------------------------------------------------------------------
    def is_redelivery(self, stage: str, message: AnyMessage) -> bool:
        return isinstance(message, SecAggSubmitted) and self.redelivered(
            STAGE_OF_NAME[stage], message.device_id, message.message_id
        )

    def decided_before_restart(self, stage: str) -> bool:
        """Whether ``stage`` was over before a restart: its records were counted then."""
        return STAGE_OF_NAME[stage] < self.resumed_at

    def screen(self, stage: str, message: AnyMessage) -> None:
        """Hold a later stage's message only from a participant, within the stage's size
        bound, once per (stage, device)."""
        if not isinstance(message, SecAggSubmitted):
            raise Rejected(RejectReason.UNKNOWN_ROUND, f"{message.type} is no SecAgg+ message")
        number = STAGE_OF_NAME[stage]
        if message.device_id not in self.index_of:
            raise Rejected(RejectReason.NOT_SELECTED, f"{message.device_id} was not selected")
        limit = max_payload(self.config, number)
        if len(message.payload) > limit:
            raise Rejected(RejectReason.TOO_LARGE, f"{len(message.payload)} bytes > {limit}")
        if (number, message.device_id) in self._held:
            raise Rejected(
                RejectReason.DUPLICATE, f"{message.device_id} already sent stage {stage}"
            )
        self._held.add((number, message.device_id))

    def redelivered(self, stage: Stage, device_id: str, message_id: UUID) -> bool:
        return self._accepted.get((stage, device_id)) == message_id

    def check(self, stage: RoundStage, message: AnyMessage) -> None:
        """The checks in order: task and round, the sender (expected in this stage: selected,
        and through the stages before), the size, the device's signature over task, round id,
        stage and payload (so that a replay from another try or a relabelled message fails),
        a repeat, then the protocol's own checks (:meth:`accept`)."""
        if not isinstance(message, SecAggSubmitted):
            raise Rejected(RejectReason.UNKNOWN_ROUND, f"{message.type} is no SecAgg+ message")
        number = Stage(message.stage)
        opened = self.opened
        if message.task_id != opened.task_id or message.round_number != opened.round_number:
            raise Rejected(RejectReason.UNKNOWN_ROUND, "task or round number does not match")
        participant = stage.expects(message.device_id)
        if participant is None:
            raise Rejected(
                RejectReason.NOT_SELECTED,
                f"{message.device_id} is not expected in stage {STAGE_NAMES[number]}",
            )
        limit = max_payload(self.config, number)
        if len(message.payload) > limit:
            raise Rejected(RejectReason.TOO_LARGE, f"{len(message.payload)} bytes > {limit}")
        if opened.round_id is None:
            raise Rejected(RejectReason.UNKNOWN_ROUND, "round.opened carries no round_id")
        try:
            signing.verify(
                public_key=participant.public_key,
                signature=message.signature,
                payload=signing.secagg_payload(
                    task_id=message.task_id,
                    round_id=opened.round_id,
                    device_id=message.device_id,
                    round_number=message.round_number,
                    stage=message.stage,
                    payload=message.payload,
                ),
            )
        except ProtocolViolation as exc:
            raise Rejected(RejectReason.BAD_SIGNATURE, str(exc)) from exc
        if stage.delivered(message.device_id):
            raise Rejected(RejectReason.DUPLICATE, f"{message.device_id} already sent this stage")
        self.accept(
            number, message.device_id, message.payload, message.message_id, message.signature
        )

    def commit(self, stage: RoundStage, message: AnyMessage, checked: Any) -> None:
        """Nothing more: :meth:`check` handed the message to the protocol (its checks and
        its fold are one step in ``SecAggServer``), and no acceptance is recorded."""

    def accept(
        self, stage: Stage, device_id: str, payload: bytes, message_id: UUID, signature: bytes
    ) -> None:
        """Take a device's (signature-checked) message of the current stage into the server.

        Raises ``Rejected``: MALFORMED for bytes that do not parse or say another sender,
        task or round, or that the protocol refuses (a small-order key, a repeat, a masked
        input of the wrong length or modulus, shares of the wrong owners).
        """
        index = self.index_of[device_id]
        try:
            message = _PARSERS[stage](payload)
            if message.header.sender != index:
                raise InvalidSecAggMessage(
                    f"names sender {message.header.sender}, the device's index is {index}"
                )
            if isinstance(message, KeyAdvertisement):
                self.server.receive_advertisement(message)
                self._advert_signatures[index] = signature
            elif isinstance(message, EncryptedShares):
                self.server.receive_encrypted_shares(message)
                for recipient, ciphertext in message.ciphertexts:
                    self._inbox.setdefault(recipient, []).append((index, ciphertext))
            elif isinstance(message, MaskedInput):
                self.server.receive_masked_input(message)
            else:
                self.server.receive_unmasking(message)
        except (InvalidSecAggMessage, ProtocolStateError) as exc:
            raise Rejected(RejectReason.MALFORMED, f"{STAGE_NAMES[stage]}: {exc}") from exc
        self._accepted[(stage, device_id)] = message_id
        self.tallies[stage].bytes_up += len(payload)

    def count_rejection(self, stage: str) -> None:
        self.tallies[STAGE_OF_NAME[stage]].rejected += 1

    # Stages ----------------------------------------------------------------------------
    def begin(self, stage: str, *, now: datetime) -> list[Outgoing]:
        """Close the stage before ``stage`` in the server; each device that goes on is sent
        its delivery on its command topic (dated ``now``: the same bytes if stored again).
        Raises ``StageFailed`` when too few are left (fail closed)."""
        opened = self.opened
        return [
            Outgoing(
                base=topics.DEVICE_COMMANDS,
                key=delivery.device_id,
                message=SecAggDelivered(
                    message_id=delivery.message_id,
                    producer=results.PRODUCER,
                    round_id=opened.round_id,
                    correlation_id=opened.message_id,
                    sent_at=now,
                    task_id=opened.task_id,
                    device_id=delivery.device_id,
                    round_number=opened.round_number,
                    stage=delivery.stage.value,
                    payload=delivery.payload,
                ),
            )
            for delivery in self.deliveries(stage)
        ]

    def deliveries(self, stage: str) -> list[Delivery]:
        """Close the stage before ``stage`` in the server and return what each device that
        goes on is sent. Raises ``StageFailed`` when too few are left (fail closed)."""
        number = STAGE_OF_NAME[stage]
        try:
            if number == Stage.SHARE_KEYS:
                deliveries = self._adverts()
            elif number == Stage.MASKED_INPUT:
                deliveries = self._shares()
            elif number == Stage.UNMASKING:
                request = self.server.close_masked_input()
                self._check_enough(len(request.survivors))
                deliveries = [
                    self._delivery(number, i, UnmaskingDelivery.of(request, recipient=i).to_bytes())
                    for i in request.survivors
                ]
            else:
                raise ValueError("the first stage begins with the round")
        except ThresholdNotMet as exc:
            raise StageFailed(str(exc)) from exc
        self.tallies[number].bytes_down += sum(len(d.payload) for d in deliveries)
        return deliveries

    def _check_enough(self, masked: int) -> None:
        """A round without DP needs the task's minimum of updates, as in the clear (never more
        than it has participants); a DP round releases whatever it has (its count is secret)."""
        opened = self.opened
        needed = min(opened.min_updates, len(opened.participants))
        if opened.privacy is None and masked < needed:
            raise StageFailed(f"{masked} of {needed} masked inputs by the deadline")

    def _adverts(self) -> list[Delivery]:
        adverts = self.server.close_advertisement()
        deliveries = []
        for i in adverts:
            delivery = AdvertDelivery(
                header=self._header(i),
                adverts=tuple(
                    (advert, self._advert_signatures[advert.header.sender]) for advert in adverts[i]
                ),
            )
            deliveries.append(self._delivery(Stage.SHARE_KEYS, i, delivery.to_bytes()))
        self._advert_signatures.clear()
        return deliveries

    def _shares(self) -> list[Delivery]:
        shared = self.server.close_share_keys()
        deliveries = []
        for i in sorted(shared):
            inbox = sorted((s, ct) for s, ct in self._inbox.get(i, []) if s in shared)
            delivery = ShareDelivery(header=self._header(i), ciphertexts=tuple(inbox))
            deliveries.append(self._delivery(Stage.MASKED_INPUT, i, delivery.to_bytes()))
        self._inbox.clear()
        return deliveries

    def _header(self, recipient: int) -> DeliveryHeader:
        return DeliveryHeader(
            task_id=self.config.task_id,
            round_number=self.config.round_number,
            recipient=recipient,
        )

    def _delivery(self, stage: Stage, recipient: int, payload: bytes) -> Delivery:
        return Delivery(
            device_id=self.ids[recipient],
            stage=stage,
            payload=payload,
            message_id=message_id(
                task_id=self.config.task_id,
                round_number=self.config.round_number,
                attempt=self.opened.attempt,
                stage=stage,
                recipient=recipient,
            ),
        )

    def checkpoint(self) -> bytes:
        """The server state as bytes (never pickle), taken when a stage begins."""
        return self.server.export_state()

    def restore(self, stage: str, state: bytes) -> None:
        """Resume at the start of ``stage`` from its checkpoint (``InvalidSecAggMessage`` for
        a state of another round)."""
        self.server = SecAggServer.restore(self.config, state)
        self.resumed_at = STAGE_OF_NAME[stage]
        self._advert_signatures.clear()
        self._inbox.clear()

    def stage_logs(self, stages: Sequence[RoundStage], *, now: datetime) -> list[StageLog]:
        """One row per stage begun: expected, delivered and rejected, its seconds (to the next
        stage's start, or ``now``) and bytes each way."""
        rows = []
        for stage, after in zip(stages, [*stages[1:], None], strict=True):
            number = STAGE_OF_NAME[stage.name]
            tally = self.tallies[number]
            began = stage.started_at or self.opened.sent_at
            ended = after.started_at if after is not None and after.started_at else now
            rows.append(
                StageLog(
                    stage=int(number),
                    stage_name=stage.name,
                    expected=len(stage.expected),
                    delivered=len(stage.survivors),
                    rejected=tally.rejected,
                    seconds=max(0.0, (ended - began).total_seconds()),
                    bytes_up=tally.bytes_up,
                    bytes_down=tally.bytes_down,
                )
            )
        return rows

    # The result ------------------------------------------------------------------------
    def contributors(self, stages: RoundStages[Any]) -> list[str]:
        """Who sent a masked input (U3): their updates are in the sum. From the protocol's
        state, which a restart restores (the stages before a resumed one keep no senders)."""
        return sorted(self.ids[i] for i in self.server.masked_senders())

    def bytes_up(self) -> int:
        return sum(t.bytes_up for t in self.tallies.values())

    def finish(self) -> AggregateResult:
        """The unmasked sum (``ThresholdNotMet`` / ``InvalidSecAggMessage``: fail closed)."""
        return self.server.finish()

    def result(self, state: OpenRound, *, now: datetime, rng: np.random.Generator) -> RoundResult:
        """Unmask the sum and build the round's result; a sum that cannot be unmasked (too
        few shares, a forged share) fails the round closed with the reason, never a wrong
        sum. A DP round's noise comes from ``rng``."""
        try:
            total = self.finish()
            check_total(total)
        except (ThresholdNotMet, InvalidSecAggMessage) as exc:
            return results.failed(state, str(exc)[:500], producer=results.PRODUCER)
        if self.opened.privacy is not None:
            return secure_private_aggregated(
                state, self, total, producer=results.PRODUCER, now=now, rng=rng
            )
        return secure_aggregated(state, self, total, producer=results.PRODUCER, now=now)


def secure_aggregated(
    state: OpenRound,
    secure: SecureExchange,
    total: AggregateResult,
    *,
    producer: str,
    now: datetime,
) -> RoundAggregated:
    """A secure round's result: the weighted mean the unmasked sum gives, and who sent a
    masked input (the aggregator knows who answered; it never saw an update)."""
    opened = state.opened
    delta = split(total.weighted_mean(), opened.param_shapes)
    return RoundAggregated(
        **results.about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(to_float32(delta))),
        participants=sorted(secure.ids[i] for i in total.contributors),
        dropped=state.dropped(),
        rejected=dict(state.rejected),
        num_examples=total.weight_sum,
        # Each device's loss would be one more thing it tells about its data: not sent.
        train_loss=0.0,
        bytes_up=secure.bytes_up(),
        duration_s=results.duration_s(state, now),
    )


def secure_private_aggregated(
    state: OpenRound,
    secure: SecureExchange,
    total: AggregateResult,
    *,
    producer: str,
    now: datetime,
    rng: np.random.Generator,
) -> RoundAggregated:
    """A DP round with secure aggregation: the unmasked sum of the clipped updates (each
    device clipped and weighted 1 itself), noised here exactly as a DP round in the clear,
    and nothing per device. The aggregator sees the un-noised sum before it adds the noise
    (docs/architecture.md, trust model). One call, one release: the caller stores it.

    Raises ``ValueError`` if the round is not a DP round or its masking does not match the
    approval (another clip norm, example weights).
    """
    opened, approval = state.opened, state.opened.privacy
    if approval is None:
        raise ValueError(f"round {state.round_id} is not a DP round")
    config = secure.config
    if config.clip_norm != approval.clip_norm or config.weight_cap != 1:
        raise ValueError(
            f"round {state.round_id}: masked with clip norm {config.clip_norm} and weight cap "
            f"{config.weight_cap}, the approval needs {approval.clip_norm} and 1"
        )
    count = len(total.contributors)
    summed = dequantize_sum(
        total.total[: config.dim], count=count, clip_norm=config.clip_norm, bits=config.bits
    )
    unclipped = total.unclipped_count
    released = dp_fedavg.release_sum(
        split(summed, opened.param_shapes),
        centered_count=0.0 if unclipped is None else unclipped - count / 2,
        approval=approval,
        rng=rng,
    )
    return RoundAggregated(
        **results.about(state, producer=producer),
        model_version=opened.model_version,
        delta=arrays.to_bytes(list(released.delta)),
        participants=[],
        dropped=[],
        rejected={},
        num_examples=0,
        train_loss=0.0,
        bytes_up=0,
        duration_s=results.duration_s(state, now),
        privacy_approval_id=approval.approval_id,
        privacy_unclipped_fraction=released.unclipped_fraction,
    )


def check_total(total: AggregateResult) -> None:
    """Refuse (``InvalidSecAggMessage``: the round fails closed) an unmasked sum that honest
    devices cannot have produced: a coordinate above n(2^B - 1), a weight sum above n·W, an
    unclipped count above n, or a weighted mean longer than C plus what quantisation can add
    (a weighted mean of vectors clipped to C is no longer than C; with DP every weight is 1).
    A masked input is uniform modulo 2^k, so one malicious device could otherwise wrap the
    sum anywhere; within these bounds it still chooses its own contribution (each coordinate
    in [-C, C]): there are no range proofs (documented)."""
    config, count = total.config, len(total.contributors)
    levels = (1 << config.bits) - 1
    values = total.total[: config.dim]
    if count and int(values.max(initial=0)) > count * levels:
        raise InvalidSecAggMessage("the unmasked sum has a coordinate no honest devices send")
    if total.weight_sum > count * config.weight_cap:
        raise InvalidSecAggMessage(f"the weight sum {total.weight_sum} is above {count} devices'")
    unclipped = total.unclipped_count
    if unclipped is not None and unclipped > count:
        raise InvalidSecAggMessage(f"the unclipped count {unclipped} is above {count} devices'")
    if total.weight_sum:
        step = 2.0 * config.clip_norm / levels
        slack = config.weight_cap * count * math.sqrt(config.dim) * step / total.weight_sum
        norm = float(np.linalg.norm(total.weighted_mean()))
        if norm > config.clip_norm + slack + 1e-9:
            raise InvalidSecAggMessage(
                f"the weighted mean's norm {norm:.4g} is above the clip norm {config.clip_norm:g}"
            )


def split(vector: npt.NDArray[np.float64], shapes: list[list[int]]) -> Float64Arrays:
    """The flat vector cut into the model's tensors, as float64."""
    if vector.size != secagg_round.dim_of(shapes):
        raise ValueError(f"a vector of {vector.size} does not fill shapes {shapes}")
    arrays: Float64Arrays = []
    offset = 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.asarray(vector[offset : offset + size], dtype=np.float64).reshape(shape))
        offset += size
    return arrays


def max_payload(config: RoundConfig, stage: Stage) -> int:
    """The most bytes a device's message of ``stage`` can take (checked before hashing)."""
    per_neighbour = 256  # a ciphertext (109 bytes) or two shares (2 x 40) with their framing
    if stage == Stage.MASKED_INPUT:
        return 64 + (config.vector_length * config.modulus_bits + 7) // 8
    return 256 + config.degree * per_neighbour
