"""Wire formats of the SecAgg+ messages: explicit, versioned, length-checked bytes.

Never pickle: each message has ``to_bytes`` / ``from_bytes`` over the layout below, and
``from_bytes`` refuses anything malformed (wrong version or stage, short or trailing bytes,
counts that do not fit) with ``InvalidSecAggMessage``. ``signing_bytes`` is what the shell
signs with the device's Ed25519 identity key: a domain label and the full canonical bytes,
which name the task, round, stage and sender.

Every device message starts with the same header (little-endian)::

    version u8 = 1 | stage u8 | task_id 16 bytes | round u32 | sender u32

then, by stage:

    1 KeyAdvertisement  encryption_public_key 32 | mask_public_key 32 |
                        self_mask_commitment 32 (SHA-256 of the self-mask seed, ``pairing``)
    2 EncryptedShares   count u32 | count x (recipient u32 | length u32 | ciphertext)
    3 MaskedInput       length u32 | bits u8 | packed bytes (ceil(length * bits / 8))
    4 UnmaskingShares   count u32 | count x (owner u32 | self-mask share 36)
                        count u32 | count x (owner u32 | mask-key share 36)

Server-to-device messages (``UnmaskingRequest``) use the same header with sender 0xFFFFFFFF.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from enum import IntEnum

from fedprivacy.secagg.config import TASK_ID_BYTES
from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.shamir import SHARE_BYTES, Share

WIRE_VERSION = 1
SERVER_SENDER = 0xFFFFFFFF
SIGNING_LABEL = b"fedplat/secagg/v1/signed-message\x00"
_HEADER = struct.Struct("<BB16sII")


class Stage(IntEnum):
    """The protocol's stages, in order."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASKING = 4


@dataclass(frozen=True, slots=True)
class Header:
    """Who sent a message, for which task, round and stage."""

    task_id: bytes
    round_number: int
    sender: int

    def to_bytes(self, stage: Stage) -> bytes:
        return _HEADER.pack(WIRE_VERSION, stage, self.task_id, self.round_number, self.sender)


class Reader:
    """A bounds-checked cursor over received bytes (the device messages' and, subclassed,
    the server deliveries')."""

    def __init__(self, data: bytes, *, name: str) -> None:
        self._data = bytes(data)
        self._offset = 0
        self._name = name

    def take(self, size: int) -> bytes:
        if size < 0 or self._offset + size > len(self._data):
            raise InvalidSecAggMessage(f"{self._name}: truncated message")
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def u8(self) -> int:
        return self.take(1)[0]

    def header(self, stage: Stage) -> Header:
        version, got_stage, task_id, round_number, sender = _HEADER.unpack(self.take(_HEADER.size))
        if version != WIRE_VERSION:
            raise InvalidSecAggMessage(f"{self._name}: unknown wire version {version}")
        if got_stage != stage:
            raise InvalidSecAggMessage(f"{self._name}: stage {got_stage}, expected {int(stage)}")
        return Header(task_id=task_id, round_number=round_number, sender=sender)

    def count(self, item_size: int) -> int:
        count = self.u32()
        if count * item_size > len(self._data) - self._offset:
            raise InvalidSecAggMessage(f"{self._name}: count {count} exceeds the message")
        return count

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise InvalidSecAggMessage(
                f"{self._name}: {len(self._data) - self._offset} trailing bytes"
            )


def _check_header(header: Header) -> None:
    if len(header.task_id) != TASK_ID_BYTES:
        raise InvalidSecAggMessage(f"task_id must be {TASK_ID_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class KeyAdvertisement:
    """Stage 1, device -> server: the round's two fresh X25519 public keys."""

    header: Header
    encryption_public_key: bytes
    mask_public_key: bytes
    self_mask_commitment: bytes

    def __post_init__(self) -> None:
        _check_header(self.header)
        if len(self.encryption_public_key) != 32 or len(self.mask_public_key) != 32:
            raise InvalidSecAggMessage("X25519 public keys are 32 bytes")
        if len(self.self_mask_commitment) != 32:
            raise InvalidSecAggMessage("the self-mask commitment is 32 bytes")

    def to_bytes(self) -> bytes:
        return (
            self.header.to_bytes(Stage.ADVERTISE_KEYS)
            + self.encryption_public_key
            + self.mask_public_key
            + self.self_mask_commitment
        )

    def signing_bytes(self) -> bytes:
        return SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvertisement:
        reader = Reader(data, name="KeyAdvertisement")
        header = reader.header(Stage.ADVERTISE_KEYS)
        encryption, mask, commitment = reader.take(32), reader.take(32), reader.take(32)
        reader.finish()
        return cls(
            header=header,
            encryption_public_key=encryption,
            mask_public_key=mask,
            self_mask_commitment=commitment,
        )


@dataclass(frozen=True, slots=True)
class EncryptedShares:
    """Stage 2, device -> server: one AES-GCM ciphertext per neighbour, routed by the server."""

    header: Header
    ciphertexts: tuple[tuple[int, bytes], ...]  # (recipient, nonce || ciphertext)

    def __post_init__(self) -> None:
        _check_header(self.header)
        recipients = [recipient for recipient, _ in self.ciphertexts]
        if len(set(recipients)) != len(recipients):
            raise InvalidSecAggMessage("EncryptedShares: a recipient appears twice")

    def to_bytes(self) -> bytes:
        parts = [self.header.to_bytes(Stage.SHARE_KEYS), struct.pack("<I", len(self.ciphertexts))]
        for recipient, ciphertext in self.ciphertexts:
            parts.append(struct.pack("<II", recipient, len(ciphertext)) + ciphertext)
        return b"".join(parts)

    def signing_bytes(self) -> bytes:
        return SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShares:
        reader = Reader(data, name="EncryptedShares")
        header = reader.header(Stage.SHARE_KEYS)
        items = []
        for _ in range(reader.count(8)):
            recipient, length = reader.u32(), reader.u32()
            items.append((recipient, reader.take(length)))
        reader.finish()
        return cls(header=header, ciphertexts=tuple(items))


@dataclass(frozen=True, slots=True)
class SharePlaintext:
    """What one ciphertext of stage 2 carries: the sender's shares for one recipient.

    Layout: version u8 | sender u32 | recipient u32 | self-mask share 36 | mask-key share 36.
    """

    sender: int
    recipient: int
    self_mask_share: Share
    mask_key_share: Share

    def to_bytes(self) -> bytes:
        return (
            struct.pack("<BII", WIRE_VERSION, self.sender, self.recipient)
            + self.self_mask_share.to_bytes()
            + self.mask_key_share.to_bytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SharePlaintext:
        reader = Reader(data, name="SharePlaintext")
        if reader.u8() != WIRE_VERSION:
            raise InvalidSecAggMessage("SharePlaintext: unknown version")
        sender, recipient = reader.u32(), reader.u32()
        self_mask = Share.from_bytes(reader.take(SHARE_BYTES))
        mask_key = Share.from_bytes(reader.take(SHARE_BYTES))
        reader.finish()
        return cls(
            sender=sender, recipient=recipient, self_mask_share=self_mask, mask_key_share=mask_key
        )


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Stage 3, device -> server: the masked vector, packed to ``bits`` bits per element."""

    header: Header
    length: int
    bits: int
    packed: bytes

    def __post_init__(self) -> None:
        _check_header(self.header)
        if len(self.packed) != (self.length * self.bits + 7) // 8:
            raise InvalidSecAggMessage("MaskedInput: packed size does not match length * bits")

    def to_bytes(self) -> bytes:
        return (
            self.header.to_bytes(Stage.MASKED_INPUT)
            + struct.pack("<IB", self.length, self.bits)
            + self.packed
        )

    def signing_bytes(self) -> bytes:
        return SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        reader = Reader(data, name="MaskedInput")
        header = reader.header(Stage.MASKED_INPUT)
        length, bits = reader.u32(), reader.u8()
        packed = reader.take((length * bits + 7) // 8)
        reader.finish()
        return cls(header=header, length=length, bits=bits, packed=packed)


def _shares_to_bytes(shares: tuple[tuple[int, Share], ...]) -> bytes:
    return struct.pack("<I", len(shares)) + b"".join(
        struct.pack("<I", owner) + share.to_bytes() for owner, share in shares
    )


def _shares_from(reader: Reader) -> tuple[tuple[int, Share], ...]:
    return tuple(
        (reader.u32(), Share.from_bytes(reader.take(SHARE_BYTES)))
        for _ in range(reader.count(4 + SHARE_BYTES))
    )


@dataclass(frozen=True, slots=True)
class UnmaskingShares:
    """Stage 4, device -> server: self-mask shares of survivors, mask-key shares of dropouts."""

    header: Header
    self_mask_shares: tuple[tuple[int, Share], ...]
    mask_key_shares: tuple[tuple[int, Share], ...]

    def __post_init__(self) -> None:
        _check_header(self.header)
        owners = [owner for owner, _ in self.self_mask_shares + self.mask_key_shares]
        if len(set(owners)) != len(owners):
            raise InvalidSecAggMessage("UnmaskingShares: an owner appears twice")

    def to_bytes(self) -> bytes:
        return (
            self.header.to_bytes(Stage.UNMASKING)
            + _shares_to_bytes(self.self_mask_shares)
            + _shares_to_bytes(self.mask_key_shares)
        )

    def signing_bytes(self) -> bytes:
        return SIGNING_LABEL + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskingShares:
        reader = Reader(data, name="UnmaskingShares")
        header = reader.header(Stage.UNMASKING)
        self_mask, mask_key = _shares_from(reader), _shares_from(reader)
        reader.finish()
        return cls(header=header, self_mask_shares=self_mask, mask_key_shares=mask_key)


@dataclass(frozen=True, slots=True)
class UnmaskingRequest:
    """Server -> devices after stage 3: who sent a masked input, and who dropped before.

    Layout: header (stage 4, sender 0xFFFFFFFF) | count u32 | survivors u32... |
    count u32 | dropped u32...
    """

    header: Header
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def check(self) -> None:
        """Refuse a request not from the server, listing a device twice or unsorted, or
        naming one device both survivor and dropped (``from_bytes`` calls it; the client
        checks what concerns it again)."""
        _check_header(self.header)
        if self.header.sender != SERVER_SENDER:
            raise InvalidSecAggMessage("UnmaskingRequest: not sent by the server")
        for group in (self.survivors, self.dropped):
            if any(b <= a for a, b in itertools.pairwise(group)):
                raise InvalidSecAggMessage("UnmaskingRequest: devices listed twice or unsorted")
        if set(self.survivors) & set(self.dropped):
            raise InvalidSecAggMessage("UnmaskingRequest: a device both survived and dropped")

    def to_bytes(self) -> bytes:
        parts = [self.header.to_bytes(Stage.UNMASKING)]
        for group in (self.survivors, self.dropped):
            parts.append(struct.pack(f"<I{len(group)}I", len(group), *group))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskingRequest:
        reader = Reader(data, name="UnmaskingRequest")
        header = reader.header(Stage.UNMASKING)
        survivors = tuple(reader.u32() for _ in range(reader.count(4)))
        dropped = tuple(reader.u32() for _ in range(reader.count(4)))
        reader.finish()
        request = cls(header=header, survivors=survivors, dropped=dropped)
        request.check()
        return request
