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

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

import numpy as np
import numpy.typing as npt

from fedcommon import secagg_round, topics
from fedcommon.messages.v1 import DP_STRATEGIES, SECAGG_MIN_PARTICIPANTS, RoundOpened
from fedcommon.server_opt import Float64Arrays
from fedengine_aggregator.core.exchange import stage_deadline
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


@dataclass
class SecureExchange:
    """The aggregator's state of one secure round, around the library's ``SecAggServer``."""

    opened: RoundOpened
    config: RoundConfig
    server: SecAggServer
    ids: list[str]
    index_of: dict[str, int]
    # Stage-1 signatures, forwarded with the advertisements so neighbours check each key.
    _advert_signatures: dict[int, bytes] = field(default_factory=dict)
    # Stage-2 ciphertexts by recipient: (sender, nonce || ciphertext).
    _inbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    # The message counted for each (stage, device): a redelivery is not a second message.
    _accepted: dict[tuple[Stage, str], UUID] = field(default_factory=dict)
    # Records of stages before this one were decided before a restart (``restore``).
    resumed_at: Stage = Stage.ADVERTISE_KEYS
    tallies: dict[Stage, StageTally] = field(
        default_factory=lambda: {stage: StageTally() for stage in Stage}
    )

    @classmethod
    def start(cls, opened: RoundOpened) -> SecureExchange:
        """Raise ``ValueError`` when the round cannot run (:func:`refusal`, bad parameters)."""
        reason = refusal(opened)
        if reason is not None:
            raise ValueError(reason)
        config = round_config(opened)
        ids = [p.device_id for p in opened.participants]
        return cls(
            opened=opened,
            config=config,
            server=SecAggServer(config),
            ids=ids,
            index_of={device_id: i for i, device_id in enumerate(ids)},
        )

    # Records ---------------------------------------------------------------------------
    def decided_before_restart(self, stage: Stage) -> bool:
        """Whether ``stage`` was over before a restart: its records were counted then."""
        return stage < self.resumed_at

    def redelivered(self, stage: Stage, device_id: str, message_id: UUID) -> bool:
        return self._accepted.get((stage, device_id)) == message_id

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

    def count_rejection(self, stage: Stage) -> None:
        self.tallies[stage].rejected += 1

    # Stages ----------------------------------------------------------------------------
    def begin(self, stage: Stage) -> list[Delivery]:
        """Close the stage before ``stage`` in the server and return what each device that
        goes on is sent. Raises ``ThresholdNotMet`` when too few are left (fail closed)."""
        if stage == Stage.SHARE_KEYS:
            deliveries = self._adverts()
        elif stage == Stage.MASKED_INPUT:
            deliveries = self._shares()
        elif stage == Stage.UNMASKING:
            request = self.server.close_masked_input()
            deliveries = [
                self._delivery(stage, i, UnmaskingDelivery.of(request, recipient=i).to_bytes())
                for i in request.survivors
            ]
        else:
            raise ValueError("the first stage begins with the round")
        self.tallies[stage].bytes_down += sum(len(d.payload) for d in deliveries)
        return deliveries

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

    def finish(self) -> AggregateResult:
        """The unmasked sum (``ThresholdNotMet`` / ``InvalidSecAggMessage``: fail closed)."""
        return self.server.finish()

    # Restart ---------------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        """The server state as bytes (never pickle), taken when a stage begins."""
        return self.server.export_state()

    def restore(self, stage: Stage, state: bytes) -> None:
        """Resume at the start of ``stage`` from its checkpoint (``InvalidSecAggMessage`` for
        a state of another round)."""
        self.server = SecAggServer.restore(self.config, state)
        self.resumed_at = stage
        self._advert_signatures.clear()
        self._inbox.clear()

    # Results ---------------------------------------------------------------------------
    def contributors(self, result: AggregateResult) -> list[str]:
        return sorted(self.ids[i] for i in result.contributors)

    def bytes_up(self) -> int:
        return sum(t.bytes_up for t in self.tallies.values())


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
