"""One simulated device's part in one SecAgg+ round: the state machine around ``SecAggClient``.

The protocol is ``fedprivacy.secagg`` (Bonawitz et al. 2017, https://eprint.iacr.org/2017/281,
with the neighbour graph of Bell et al. 2020, https://eprint.iacr.org/2020/704). This module
adds what a device of this platform checks and decides around it, with no I/O and no clock:

- the flat update: the training delta's arrays concatenated in order (``flatten``);
- each ``secagg.delivered`` checked against the round the device holds (task, round id and
  number, device, recipient index) before the client sees it;
- every neighbour's key advertisement checked against that neighbour's identity key from the
  train request's assignment (a server that swapped a key in would read its shares);
- at most one answer per stage: a redelivered delivery re-sends the same bytes while that
  answer is not yet on the log, and is a no-op once it is;
- the experiments' injected dropout (``DropPolicy``), a pure function of its inputs.

A device that cannot go on (too few neighbours, a bad or misaddressed delivery, a call out
of order) drops out of the round, which the protocol tolerates; it never raises to the shell.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from fedcommon import signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import SecAggAssignment
from fedcommon.secagg_round import config_fields
from fedprivacy.secagg import (
    InvalidSecAggMessage,
    ProtocolStateError,
    RoundConfig,
    SecAggClient,
    SecAggError,
    Stage,
    ThresholdNotMet,
)
from fedprivacy.secagg.delivery import (
    AdvertDelivery,
    DeliveryHeader,
    ShareDelivery,
    UnmaskingDelivery,
)
from fedprivacy.secagg.encoding import FloatVector
from fedprivacy.secagg.shamir import RandomBytes

# The stages a device answers after a delivery (stage 1 it sends unprompted, after training).
DELIVERED_STAGES = (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING)
_DROP_LABEL = b"fedengine/simulator/secagg-drop/v1\x00"
# Fixed namespace of the simulator's stage message ids (uuid5 of the DNS name below).
SUBMISSION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "secagg-device.fedengine.invalid")


def flatten(delta: Sequence[npt.NDArray[np.generic]]) -> FloatVector:
    """Return the update as one new float32 vector: each array raveled, in order."""
    if not delta:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(array, dtype=np.float32).ravel() for array in delta])


def submission_id(*, round_id: uuid.UUID, device_id: str, stage: int) -> uuid.UUID:
    """The id of a device's message of one stage: the same on every re-send of it."""
    return uuid.uuid5(SUBMISSION_ID_NAMESPACE, f"{round_id}/{stage}/{device_id}")


@dataclass(frozen=True, slots=True)
class DropPolicy:
    """Injected dropout: at each of ``stages``, a device still in the round stays silent from
    that stage on with probability ``probability``, decided by ``drops`` from ``seed``."""

    probability: float = 0.0
    stages: frozenset[int] = frozenset({2, 3, 4})
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.probability < 1:
            raise ValueError(f"probability must be in [0, 1), got {self.probability}")
        if not self.stages <= {1, 2, 3, 4}:
            raise ValueError(f"stages must be among 1..4, got {sorted(self.stages)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def drops(self, *, round_id: uuid.UUID, index: int, stage: int) -> bool:
        """Whether device ``index`` of round ``round_id`` goes silent at ``stage``.

        A uniform draw in [0, 1) from SHA-256 of (seed, round id, index, stage): the same
        inputs always decide the same, and the stages' draws are independent.
        """
        if stage not in self.stages or self.probability == 0:
            return False
        digest = hashlib.sha256(
            _DROP_LABEL
            + struct.pack("<Q", self.seed)
            + round_id.bytes
            + struct.pack("<IB", index, stage)
        ).digest()
        draw = int.from_bytes(digest[:8], "little") / 2**64
        return draw < self.probability


class Action(StrEnum):
    """What the shell does after a step."""

    SEND = "send"  # sign and publish ``payload`` as stage ``stage``, then ``mark_sent``
    IGNORE = "ignore"  # nothing (a repeat already answered, or a device already out)
    DROP = "drop"  # nothing, ever again: log ``reason``, count ``cause``, forget the round


class DropCause(StrEnum):
    INJECTED = "injected"  # the experiment's DropPolicy
    THRESHOLD = "threshold"  # too few neighbours left
    INVALID = "invalid"  # a delivery or advertisement that fails a check
    ORDER = "order"  # a delivery out of order


@dataclass(frozen=True, slots=True)
class Step:
    """One step's outcome: what to send, or why nothing."""

    action: Action
    stage: int
    payload: bytes = b""
    reason: str = ""
    cause: DropCause | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """A neighbour: its device id and Ed25519 identity key."""

    device_id: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class RoundIdentity:
    """Which round and device a state belongs to (what the deliveries must name), and the
    train request that started it (every stage message's correlation id)."""

    task_id: uuid.UUID
    round_id: uuid.UUID
    round_number: int
    device_id: str
    request_id: uuid.UUID | None = None


class DeviceRound:
    """One device's state in one secure round.

    Built after training, with the flat update; ``advertise`` gives stage 1, ``on_delivery``
    each later stage. Every ``SEND`` step is followed by ``mark_sent`` once it is on the log.

    Raises (construction)
    ---------------------
    ValueError
        An assignment this device cannot take part with: parameters the protocol refuses,
        neighbours other than the round graph's, or an update that is not ``dim`` long.
    """

    def __init__(
        self,
        *,
        identity: RoundIdentity,
        assignment: SecAggAssignment,
        update: FloatVector,
        num_examples: int,
        expires_at: datetime,
        rng: np.random.Generator,
        drop_policy: DropPolicy | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        config = RoundConfig(
            **config_fields(  # type: ignore[arg-type]
                assignment.round,
                task_id=identity.task_id,
                round_number=identity.round_number,
                num_clients=assignment.num_clients,
                dim=assignment.dim,
            )
        )
        if update.shape != (assignment.dim,):
            raise ValueError(
                f"the update has {update.size} parameters, the round masks {assignment.dim}"
            )
        client = SecAggClient(config, index=assignment.index, random_bytes=random_bytes)
        peers = {
            peer.index: Peer(peer.device_id, peer.public_key) for peer in assignment.neighbours
        }
        if len(peers) != len(assignment.neighbours) or set(peers) != set(
            config.neighbours[assignment.index]
        ):
            raise ValueError(
                "the assignment's neighbours are not this device's neighbours in the round graph"
            )
        self.identity = identity
        self.index = assignment.index
        self.expires_at = expires_at
        self._config = config
        self._client = client
        self._peers: Mapping[int, Peer] = peers
        self._update: FloatVector | None = update
        self._num_examples = num_examples
        self._rng = rng
        self._drop_policy = drop_policy or DropPolicy()
        self._answers: dict[int, bytes] = {}
        self._sent: set[int] = set()
        self.dropped: Step | None = None

    @property
    def finished(self) -> bool:
        """Whether the state can be forgotten: out of the round, or every stage on the log."""
        return self.dropped is not None or int(Stage.UNMASKING) in self._sent

    def signing_payload(self, *, stage: int, payload: bytes) -> bytes:
        """The bytes this device signs for its message of ``stage``."""
        identity = self.identity
        return signing.secagg_payload(
            task_id=identity.task_id,
            round_id=identity.round_id,
            device_id=identity.device_id,
            round_number=identity.round_number,
            stage=stage,
            payload=payload,
        )

    def mark_sent(self, stage: int) -> None:
        """Record that the answer of ``stage`` is on the log: a repeat is a no-op from now."""
        if stage not in self._answers:
            raise ValueError(f"stage {stage} has no answer to mark sent")
        self._sent.add(stage)

    def advertise(self) -> Step:
        """Stage 1: this round's public keys (the same bytes on a repeated call)."""
        return self._answer(Stage.ADVERTISE_KEYS, lambda: self._client.advertise_keys().to_bytes())

    def on_delivery(
        self,
        *,
        task_id: uuid.UUID,
        round_id: uuid.UUID | None,
        round_number: int,
        device_id: str,
        stage: int,
        payload: bytes,
    ) -> Step:
        """Answer the aggregator's delivery of ``stage`` (checked first; see the module)."""
        identity = self.identity
        if (task_id, round_id, round_number, device_id) != (
            identity.task_id,
            identity.round_id,
            identity.round_number,
            identity.device_id,
        ):
            # Not this state's: nothing to do with it, and no reason to leave the round.
            return Step(Action.IGNORE, stage, reason="a delivery of another round or device")
        if stage == Stage.SHARE_KEYS:
            return self._answer(Stage.SHARE_KEYS, lambda: self._share_keys(payload))
        if stage == Stage.MASKED_INPUT:
            return self._answer(Stage.MASKED_INPUT, lambda: self._masked_input(payload))
        if stage == Stage.UNMASKING:
            return self._answer(Stage.UNMASKING, lambda: self._unmask(payload))
        return self._drop(stage, DropCause.INVALID, f"no delivery precedes stage {stage}")

    def _answer(self, stage: Stage, run: Callable[[], bytes]) -> Step:
        if self.dropped is not None:
            return Step(
                Action.IGNORE, stage, reason=f"already out of the round: {self.dropped.reason}"
            )
        if stage in self._answers:
            if stage in self._sent:
                return Step(Action.IGNORE, stage, reason=f"stage {int(stage)} already answered")
            return Step(Action.SEND, stage, payload=self._answers[stage])
        if self._drop_policy.drops(round_id=self.identity.round_id, index=self.index, stage=stage):
            return self._drop(stage, DropCause.INJECTED, f"injected dropout at stage {int(stage)}")
        try:
            payload = run()
        except ThresholdNotMet as exc:
            return self._drop(stage, DropCause.THRESHOLD, str(exc))
        except ProtocolStateError as exc:
            return self._drop(stage, DropCause.ORDER, str(exc))
        except (SecAggError, ProtocolViolation) as exc:
            return self._drop(stage, DropCause.INVALID, str(exc))
        self._answers[stage] = payload
        return Step(Action.SEND, stage, payload=payload)

    def _drop(self, stage: int, cause: DropCause, reason: str) -> Step:
        step = Step(Action.DROP, stage, reason=reason, cause=cause)
        self.dropped = step
        self._update = None
        self._answers.clear()
        return step

    def _check_header(self, header: DeliveryHeader, name: str) -> None:
        config = self._config
        if header.task_id != config.task_id or header.round_number != config.round_number:
            raise InvalidSecAggMessage(f"{name}: of another task or round")
        if header.recipient != self.index:
            raise InvalidSecAggMessage(
                f"{name}: addressed to device {header.recipient}, not {self.index}"
            )

    def _share_keys(self, payload: bytes) -> bytes:
        delivery = AdvertDelivery.from_bytes(payload)
        self._check_header(delivery.header, "AdvertDelivery")
        identity = self.identity
        adverts = []
        for advert, signature in delivery.adverts:
            sender = advert.header.sender
            peer = self._peers.get(sender)
            if peer is None:
                raise InvalidSecAggMessage(
                    f"AdvertDelivery: an advertisement of device {sender}, not a neighbour"
                )
            # ProtocolViolation (bad signature, weak key) drops the device as invalid.
            signing.verify(
                public_key=peer.public_key,
                signature=signature,
                payload=signing.secagg_payload(
                    task_id=identity.task_id,
                    round_id=identity.round_id,
                    device_id=peer.device_id,
                    round_number=identity.round_number,
                    stage=int(Stage.ADVERTISE_KEYS),
                    payload=advert.to_bytes(),
                ),
            )
            adverts.append(advert)
        return self._client.share_keys(adverts).to_bytes()

    def _masked_input(self, payload: bytes) -> bytes:
        delivery = ShareDelivery.from_bytes(payload)
        self._check_header(delivery.header, "ShareDelivery")
        if self._update is None:
            raise ProtocolStateError("the update is gone: masked input already computed")
        masked = self._client.masked_input(
            delivery.ciphertexts,
            self._update,
            num_examples=self._num_examples,
            rng=self._rng,
            within_clip=None,
        )
        self._update = None  # the plain update is not needed again: do not keep it
        return masked.to_bytes()

    def _unmask(self, payload: bytes) -> bytes:
        delivery = UnmaskingDelivery.from_bytes(payload)
        self._check_header(delivery.header, "UnmaskingDelivery")
        return self._client.unmask(delivery.request()).to_bytes()


@dataclass
class DeviceRounds:
    """The rounds the fleet's devices are in, by (round_id, device_id), bounded by expiry."""

    rounds: dict[tuple[uuid.UUID, str], DeviceRound] = field(default_factory=dict)

    def get(self, round_id: uuid.UUID | None, device_id: str) -> DeviceRound | None:
        if round_id is None:
            return None
        return self.rounds.get((round_id, device_id))

    def add(self, state: DeviceRound) -> None:
        self.rounds[(state.identity.round_id, state.identity.device_id)] = state

    def forget(self, state: DeviceRound) -> None:
        self.rounds.pop((state.identity.round_id, state.identity.device_id), None)

    def forget_expired(self, now: datetime) -> list[DeviceRound]:
        """Forget and return every state whose round is past its expiry at ``now``."""
        expired = [state for state in self.rounds.values() if state.expires_at <= now]
        for state in expired:
            self.forget(state)
        return expired
