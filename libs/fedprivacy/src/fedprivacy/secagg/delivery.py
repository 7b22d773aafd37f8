"""Wire formats of what the server sends to one device, and their deterministic message ids.

Three deliveries, each addressed to one recipient and signed by the aggregator with its
service key over ``signing_bytes()`` (a domain label apart from the devices' one, then the
full canonical bytes, which name task, round, stage and recipient):

- ``AdvertDelivery`` (before stage 2): the neighbours' ``KeyAdvertisement`` bytes, each with
  the device's own Ed25519 signature, so the recipient checks every key it will use against
  its owner's identity (a server that swapped a key in would read that neighbour's shares);
- ``ShareDelivery`` (before stage 3): the stage-2 ciphertexts addressed to the recipient;
- ``UnmaskingDelivery`` (stage 4): the ``UnmaskingRequest`` (U3 and the dropped), addressed.

Layout (little-endian), after a common header
``version u8 = 1 | stage u8 | kind u8 | task_id 16 | round u32 | recipient u32``:

    kind 1 AdvertDelivery     count u32 | count x (advertisement 122 | signature 64)
    kind 2 ShareDelivery      count u32 | count x (sender u32 | ciphertext 109)
    kind 3 UnmaskingDelivery  count u32 | survivors u32... | count u32 | dropped u32...

Every list is strictly increasing by device index (one encoding per content), counts are
checked against the bytes left before anything is allocated, and trailing bytes are refused.

``message_id`` derives the bus message id from (task, round, attempt, stage, recipient) with
UUIDv5, so an aggregator restarted mid-stage re-sends the same ids (and, the content being
a pure function of its restored state, the same bytes).
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from fedprivacy.secagg.config import TASK_ID_BYTES
from fedprivacy.secagg.encryption import NONCE_BYTES, TAG_BYTES
from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.messages import (
    SERVER_SENDER,
    WIRE_VERSION,
    Header,
    KeyAdvertisement,
    Reader,
    Stage,
    UnmaskingRequest,
)

SERVER_SIGNING_LABEL = b"fedplat/secagg/v1/server-message\x00"
SIGNATURE_BYTES = 64  # Ed25519
ADVERT_BYTES = 26 + 3 * 32
SHARE_PLAINTEXT_BYTES = 1 + 4 + 4 + 2 * 36
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES
NO_RECIPIENT = 0xFFFFFFFF
# Fixed namespace of FedEngine SecAgg+ message ids (uuid5 of the DNS name below).
MESSAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "secagg.fedplat.invalid")
_HEADER = struct.Struct("<BBB16sII")


class DeliveryKind(IntEnum):
    ADVERTS = 1
    SHARES = 2
    UNMASKING = 3


def message_id(
    *, task_id: bytes, round_number: int, attempt: int, stage: Stage, recipient: int | None
) -> uuid.UUID:
    """The deterministic id of the server's message of one stage to one recipient (or, with
    ``recipient=None``, its one message of that stage to all)."""
    if len(task_id) != TASK_ID_BYTES:
        raise ValueError(f"task_id must be {TASK_ID_BYTES} bytes")
    target = NO_RECIPIENT if recipient is None else recipient
    for name, value in (
        ("round_number", round_number),
        ("attempt", attempt),
        ("recipient", target),
    ):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{name} must fit in u32, got {value}")
    name = task_id.hex() + struct.pack("<IIBI", round_number, attempt, stage, target).hex()
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, name)


@dataclass(frozen=True, slots=True)
class DeliveryHeader:
    """Which task, round and stage a server message belongs to, and its one recipient."""

    task_id: bytes
    round_number: int
    recipient: int

    def __post_init__(self) -> None:
        if len(self.task_id) != TASK_ID_BYTES:
            raise InvalidSecAggMessage(f"task_id must be {TASK_ID_BYTES} bytes")
        if not 0 <= self.round_number <= 0xFFFFFFFF or not 0 <= self.recipient < SERVER_SENDER:
            raise InvalidSecAggMessage("round or recipient out of range")

    def pack(self, stage: Stage, kind: DeliveryKind) -> bytes:
        return _HEADER.pack(
            WIRE_VERSION, stage, kind, self.task_id, self.round_number, self.recipient
        )


class _Reader(Reader):
    """The device messages' reader, with the deliveries' header."""

    def delivery_header(self, stage: Stage, kind: DeliveryKind) -> DeliveryHeader:
        version, got_stage, got_kind, task_id, round_number, recipient = _HEADER.unpack(
            self.take(_HEADER.size)
        )
        if (version, got_stage, got_kind) != (WIRE_VERSION, stage, kind):
            raise InvalidSecAggMessage(
                f"{self._name}: version/stage/kind {version}/{got_stage}/{got_kind}, expected "
                f"{WIRE_VERSION}/{int(stage)}/{int(kind)}"
            )
        return DeliveryHeader(task_id=task_id, round_number=round_number, recipient=recipient)


def _strictly_increasing(values: list[int], name: str) -> None:
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise InvalidSecAggMessage(f"{name}: devices must be listed once, in increasing order")


@dataclass(frozen=True, slots=True)
class AdvertDelivery:
    """The recipient's neighbours' key advertisements, each with its device's signature."""

    header: DeliveryHeader
    adverts: tuple[tuple[KeyAdvertisement, bytes], ...]

    def __post_init__(self) -> None:
        senders = [advert.header.sender for advert, _ in self.adverts]
        _strictly_increasing(senders, "AdvertDelivery")
        for advert, signature in self.adverts:
            if len(signature) != SIGNATURE_BYTES:
                raise InvalidSecAggMessage(
                    f"AdvertDelivery: signatures are {SIGNATURE_BYTES} bytes"
                )
            if (advert.header.task_id, advert.header.round_number) != (
                self.header.task_id,
                self.header.round_number,
            ) or advert.header.sender == self.header.recipient:
                raise InvalidSecAggMessage("AdvertDelivery: an advertisement of another round")

    def to_bytes(self) -> bytes:
        return b"".join(
            [
                self.header.pack(Stage.SHARE_KEYS, DeliveryKind.ADVERTS),
                struct.pack("<I", len(self.adverts)),
                *(advert.to_bytes() + signature for advert, signature in self.adverts),
            ]
        )

    def signing_bytes(self) -> bytes:
        return SERVER_SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertDelivery:
        reader = _Reader(data, name="AdvertDelivery")
        header = reader.delivery_header(Stage.SHARE_KEYS, DeliveryKind.ADVERTS)
        adverts = tuple(
            (KeyAdvertisement.from_bytes(reader.take(ADVERT_BYTES)), reader.take(SIGNATURE_BYTES))
            for _ in range(reader.count(ADVERT_BYTES + SIGNATURE_BYTES))
        )
        reader.finish()
        return cls(header=header, adverts=adverts)


@dataclass(frozen=True, slots=True)
class ShareDelivery:
    """The stage-2 ciphertexts addressed to the recipient, as ``(sender, ciphertext)``."""

    header: DeliveryHeader
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        senders = [sender for sender, _ in self.ciphertexts]
        _strictly_increasing(senders, "ShareDelivery")
        if self.header.recipient in senders:
            raise InvalidSecAggMessage("ShareDelivery: a ciphertext from the recipient itself")
        if any(len(ct) != CIPHERTEXT_BYTES for _, ct in self.ciphertexts):
            raise InvalidSecAggMessage(f"ShareDelivery: ciphertexts are {CIPHERTEXT_BYTES} bytes")
        if any(not 0 <= sender < SERVER_SENDER for sender in senders):
            raise InvalidSecAggMessage("ShareDelivery: sender out of range")

    def to_bytes(self) -> bytes:
        return b"".join(
            [
                self.header.pack(Stage.MASKED_INPUT, DeliveryKind.SHARES),
                struct.pack("<I", len(self.ciphertexts)),
                *(struct.pack("<I", sender) + ct for sender, ct in self.ciphertexts),
            ]
        )

    def signing_bytes(self) -> bytes:
        return SERVER_SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareDelivery:
        reader = _Reader(data, name="ShareDelivery")
        header = reader.delivery_header(Stage.MASKED_INPUT, DeliveryKind.SHARES)
        items = tuple(
            (reader.u32(), reader.take(CIPHERTEXT_BYTES))
            for _ in range(reader.count(4 + CIPHERTEXT_BYTES))
        )
        reader.finish()
        return cls(header=header, ciphertexts=items)


@dataclass(frozen=True, slots=True)
class UnmaskingDelivery:
    """The unmasking request (U3, and U2 minus U3) addressed to one survivor."""

    header: DeliveryHeader
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def __post_init__(self) -> None:
        _strictly_increasing(list(self.survivors), "UnmaskingDelivery survivors")
        _strictly_increasing(list(self.dropped), "UnmaskingDelivery dropped")
        if set(self.survivors) & set(self.dropped):
            raise InvalidSecAggMessage("UnmaskingDelivery: a device both survived and dropped")
        if self.header.recipient not in self.survivors:
            raise InvalidSecAggMessage("UnmaskingDelivery: the recipient is not a survivor")
        if any(not 0 <= d < SERVER_SENDER for d in self.survivors + self.dropped):
            raise InvalidSecAggMessage("UnmaskingDelivery: device index out of range")

    @classmethod
    def of(cls, request: UnmaskingRequest, *, recipient: int) -> UnmaskingDelivery:
        """Address the server's request to one survivor."""
        return cls(
            header=DeliveryHeader(
                task_id=request.header.task_id,
                round_number=request.header.round_number,
                recipient=recipient,
            ),
            survivors=request.survivors,
            dropped=request.dropped,
        )

    def request(self) -> UnmaskingRequest:
        """The request as ``SecAggClient.unmask`` takes it."""
        return UnmaskingRequest(
            header=Header(
                task_id=self.header.task_id,
                round_number=self.header.round_number,
                sender=SERVER_SENDER,
            ),
            survivors=self.survivors,
            dropped=self.dropped,
        )

    def to_bytes(self) -> bytes:
        parts = [self.header.pack(Stage.UNMASKING, DeliveryKind.UNMASKING)]
        for group in (self.survivors, self.dropped):
            parts.append(struct.pack(f"<I{len(group)}I", len(group), *group))
        return b"".join(parts)

    def signing_bytes(self) -> bytes:
        return SERVER_SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskingDelivery:
        reader = _Reader(data, name="UnmaskingDelivery")
        header = reader.delivery_header(Stage.UNMASKING, DeliveryKind.UNMASKING)
        survivors = tuple(reader.u32() for _ in range(reader.count(4)))
        dropped = tuple(reader.u32() for _ in range(reader.count(4)))
        reader.finish()
        return cls(header=header, survivors=survivors, dropped=dropped)
