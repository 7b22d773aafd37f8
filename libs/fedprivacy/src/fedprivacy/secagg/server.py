"""The server side of SecAgg+ as a pure state machine (no I/O, no asyncio, no clock).

Bonawitz et al. 2017 (https://eprint.iacr.org/2017/281), §4, over Bell et al.'s 2020 sparse
graph (``config``); written by hand, every primitive from ``cryptography``. The shell calls:

    receive_advertisement(msg) ...   close_advertisement() -> {device: neighbour adverts}
    receive_encrypted_shares(msg)    (the shell stores msg.ciphertexts to route them)
                                     close_share_keys() -> the devices that shared (U2)
    receive_masked_input(msg) ...    close_masked_input() -> UnmaskingRequest for U3
    receive_unmasking(msg) ...       finish() -> AggregateResult

The shell decides when a stage closes (all expected messages, or its deadline); whoever has
not sent by then has dropped. Every close checks the threshold and raises ``ThresholdNotMet``
naming the stage and counts, so a round with too few survivors fails closed and never yields
a wrong sum. Memory: masked inputs are added into one modular accumulator as they arrive
(never kept); routed ciphertexts are handed to the shell (its store holds them, as it would
in PostgreSQL); unmasking shares are kept only until their owner has ``threshold`` of them,
then the secret is rebuilt, checked against its owner's advertisement (the mask public
key, or the self-mask commitment) and its masks removed from the accumulator at once; a
secret that does not check out (a forged share) makes ``finish`` refuse, never a wrong sum.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedprivacy.secagg.client import ProtocolStateError, check_header
from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import dequantize_sum, unpack
from fedprivacy.secagg.errors import InvalidSecAggMessage, ThresholdNotMet
from fedprivacy.secagg.keys import check_public_key, public_key_of
from fedprivacy.secagg.masking import MaskedVector, add_mod, subtract_mod
from fedprivacy.secagg.messages import (
    SERVER_SENDER,
    EncryptedShares,
    Header,
    KeyAdvertisement,
    MaskedInput,
    Stage,
    UnmaskingRequest,
    UnmaskingShares,
)
from fedprivacy.secagg.pairing import pairwise_mask, self_mask, self_mask_commitment
from fedprivacy.secagg.shamir import SHARE_BYTES, Share, combine_shares, element_to_secret


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum modulo 2^k over the devices that sent a masked input.

    ``total`` holds ``vector_length`` integers: the quantised, device-weighted update sum,
    then the sum of weights, then (with the clip bit) the number of unclipped devices.
    """

    total: MaskedVector
    contributors: tuple[int, ...]
    config: RoundConfig

    @property
    def weight_sum(self) -> int:
        return int(self.total[self.config.dim])

    @property
    def unclipped_count(self) -> int | None:
        return int(self.total[self.config.dim + 1]) if self.config.clip_bit else None

    def weighted_mean(self) -> npt.NDArray[np.float64]:
        """``sum(w_i x_i) / sum(w_i)`` of the clipped updates (zeros when no weight)."""
        config = self.config
        summed = dequantize_sum(
            self.total[: config.dim],
            count=len(self.contributors),
            clip_norm=config.clip_norm,
            bits=config.bits,
        )
        if self.weight_sum == 0:
            return np.zeros(config.dim)
        return summed * (config.weight_cap / self.weight_sum)


class SecAggServer:
    """The server's side of one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        config.neighbours  # noqa: B018  build the graph from the public seed now, as its owner
        self._stage = Stage.ADVERTISE_KEYS
        self._adverts: dict[int, KeyAdvertisement] = {}
        self._shared: set[int] = set()  # U2
        self._masked: set[int] = set()  # U3
        self._dropped: set[int] = set()  # U2 \ U3
        self._unmasked: set[int] = set()  # U4
        self._accumulator = np.zeros(config.vector_length, dtype=np.uint64)
        # Shares waiting for their owner's threshold, kept as their 36-byte wire encodings
        # (a third of the memory of Share objects): up to n * (t - 1) of them at once.
        self._pending: dict[tuple[str, int], bytearray] = {}
        self._recovered: set[tuple[str, int]] = set()
        # Secrets whose rebuilt value did not match the owner's advertisement (a forged
        # share): the round can then never finish, so no wrong sum ever comes out.
        self._failed: set[tuple[str, int]] = set()

    def _expect(self, stage: Stage, header: Header, name: str) -> int:
        if self._stage != stage:
            raise ProtocolStateError(f"{name} arrived in stage {self._stage.name}")
        check_header(header, self.config, name=name)
        return header.sender

    def _require(self, stage: str, available: int, detail: str = "") -> None:
        if available < self.config.threshold:
            raise ThresholdNotMet(
                stage=stage, available=available, required=self.config.threshold, detail=detail
            )

    # Stage 1 ---------------------------------------------------------------------------
    def receive_advertisement(self, message: KeyAdvertisement) -> None:
        """Record a device's keys; refuse duplicates and small-order keys."""
        sender = self._expect(Stage.ADVERTISE_KEYS, message.header, "KeyAdvertisement")
        if sender in self._adverts:
            raise InvalidSecAggMessage(f"KeyAdvertisement: device {sender} advertised twice")
        check_public_key(message.encryption_public_key)
        check_public_key(message.mask_public_key)
        self._adverts[sender] = message

    def close_advertisement(self) -> dict[int, tuple[KeyAdvertisement, ...]]:
        """Close stage 1 (U1 = who advertised); return, per device of U1, its live
        neighbours' advertisements to forward."""
        self._require("advertise-keys", len(self._adverts))
        self._stage = Stage.SHARE_KEYS
        return {
            device: tuple(
                self._adverts[n] for n in self.config.neighbours[device] if n in self._adverts
            )
            for device in sorted(self._adverts)
        }

    # Stage 2 ---------------------------------------------------------------------------
    def receive_encrypted_shares(self, message: EncryptedShares) -> None:
        """Accept a device's ciphertexts (addressed to exactly its live neighbours). The shell
        stores ``message.ciphertexts`` and, once the stage closes, delivers each to its
        recipient if that recipient is in U2; the server keeps only who shared."""
        sender = self._expect(Stage.SHARE_KEYS, message.header, "EncryptedShares")
        if sender not in self._adverts or sender in self._shared:
            raise InvalidSecAggMessage(f"EncryptedShares: unexpected or repeated sender {sender}")
        expected = {n for n in self.config.neighbours[sender] if n in self._adverts}
        if {recipient for recipient, _ in message.ciphertexts} != expected:
            raise InvalidSecAggMessage(
                f"EncryptedShares: device {sender} must share with exactly its live neighbours"
            )
        self._shared.add(sender)

    def close_share_keys(self) -> frozenset[int]:
        """Close stage 2; return U2. The shell delivers to each device of U2 the stored
        ciphertexts addressed to it (all of their senders are in U2)."""
        self._require("share-keys", len(self._shared))
        self._stage = Stage.MASKED_INPUT
        return frozenset(self._shared)

    # Stage 3 ---------------------------------------------------------------------------
    def receive_masked_input(self, message: MaskedInput) -> None:
        """Validate a masked input (integers of the right length and modulus) and add it
        into the modular accumulator. A norm check means nothing on masked values."""
        sender = self._expect(Stage.MASKED_INPUT, message.header, "MaskedInput")
        if sender not in self._shared or sender in self._masked:
            raise InvalidSecAggMessage(f"MaskedInput: unexpected or repeated sender {sender}")
        config = self.config
        if message.length != config.vector_length or message.bits != config.modulus_bits:
            raise InvalidSecAggMessage(
                f"MaskedInput: {message.length} elements of {message.bits} bits, expected "
                f"{config.vector_length} of {config.modulus_bits}"
            )
        values = unpack(message.packed, length=config.vector_length, bits=config.modulus_bits)
        self._accumulator = add_mod(self._accumulator, values, bits=config.modulus_bits)
        self._masked.add(sender)

    def close_masked_input(self) -> UnmaskingRequest:
        """Close stage 3 (U3 = who sent a masked input); fail closed now if some device's
        secret could not be rebuilt even if every device of U3 answered."""
        self._require("masked-input", len(self._masked))
        self._dropped = self._shared - self._masked
        for owner in sorted(self._shared):
            # Owner's shares went to its neighbours in U2; only those in U3 will answer.
            holders = sum(1 for n in self.config.neighbours[owner] if n in self._masked)
            self._require("masked-input", holders, f"live holders of device {owner}'s shares")
        self._stage = Stage.UNMASKING
        return UnmaskingRequest(
            header=Header(
                task_id=self.config.task_id,
                round_number=self.config.round_number,
                sender=SERVER_SENDER,
            ),
            survivors=tuple(sorted(self._masked)),
            dropped=tuple(sorted(self._dropped)),
        )

    # Stage 4 ---------------------------------------------------------------------------
    def receive_unmasking(self, message: UnmaskingShares) -> None:
        """Take a survivor's shares; rebuild each secret as soon as it has ``threshold``
        shares and remove its masks from the accumulator."""
        sender = self._expect(Stage.UNMASKING, message.header, "UnmaskingShares")
        if sender not in self._masked or sender in self._unmasked:
            raise InvalidSecAggMessage(f"UnmaskingShares: unexpected or repeated sender {sender}")
        neighbours = self.config.neighbours[sender]
        expected_self = {n for n in neighbours if n in self._masked}
        expected_key = {n for n in neighbours if n in self._dropped}
        if {o for o, _ in message.self_mask_shares} != expected_self or {
            o for o, _ in message.mask_key_shares
        } != expected_key:
            raise InvalidSecAggMessage(f"UnmaskingShares: device {sender} sent the wrong owners")
        for owner, share in message.self_mask_shares + message.mask_key_shares:
            if share.x != self.config.neighbours[owner].index(sender) + 1:
                raise InvalidSecAggMessage(f"UnmaskingShares: share of {owner} has wrong x")
        self._unmasked.add(sender)
        for kind, shares in (("b", message.self_mask_shares), ("sk", message.mask_key_shares)):
            for owner, share in shares:
                if (kind, owner) in self._recovered or (kind, owner) in self._failed:
                    continue
                pending = self._pending.setdefault((kind, owner), bytearray())
                pending += share.to_bytes()
                if len(pending) >= self.config.threshold * SHARE_BYTES:
                    self._recover(kind, owner, pending)

    def _recover(self, kind: str, owner: int, pending: bytearray) -> None:
        config = self.config
        bits = config.modulus_bits
        shares = [
            Share.from_bytes(bytes(pending[i : i + SHARE_BYTES]))
            for i in range(0, len(pending), SHARE_BYTES)
        ]
        del self._pending[(kind, owner)]
        # Check the rebuilt secret against the owner's advertisement before it touches the
        # accumulator; a mismatch (a forged share) fails the round closed.
        try:
            secret = element_to_secret(combine_shares(shares, threshold=config.threshold))
        except InvalidSecAggMessage:
            secret = b""
        advert = self._adverts[owner]
        if kind == "b":
            expected, got = (
                advert.self_mask_commitment,
                (self_mask_commitment(config, seed=secret, owner=owner) if secret else b""),
            )
        else:
            expected, got = advert.mask_public_key, public_key_of(secret) if secret else b""
        if not hmac.compare_digest(expected, got):
            self._failed.add((kind, owner))
            raise InvalidSecAggMessage(
                f"rebuilt {'self-mask seed' if kind == 'b' else 'mask key'} of device {owner} "
                "does not match its advertisement (a forged share): the round cannot finish"
            )
        self._recovered.add((kind, owner))
        if kind == "b":
            mask = self_mask(config, seed=secret, owner=owner)
            self._accumulator = subtract_mod(self._accumulator, mask, bits=bits)
            return
        for neighbour in config.neighbours[owner]:
            if neighbour not in self._masked:
                continue
            mask = pairwise_mask(
                config,
                private_key=secret,
                peer_public_key=self._adverts[neighbour].mask_public_key,
                pair=(owner, neighbour),
            )
            # The neighbour added the mask if its index is the lower one: take back its term.
            if neighbour < owner:
                self._accumulator = subtract_mod(self._accumulator, mask, bits=bits)
            else:
                self._accumulator = add_mod(self._accumulator, mask, bits=bits)

    def finish(self) -> AggregateResult:
        """Return the unmasked sum once every needed secret is rebuilt.

        Raises
        ------
        ThresholdNotMet
            Some self-mask seed (of U3) or mask key (of U2 minus U3) lacks ``threshold``
            shares among the devices that answered.

        InvalidSecAggMessage
            A rebuilt secret did not match its owner's advertisement (a forged share).
        """
        if self._stage != Stage.UNMASKING:
            raise ProtocolStateError(f"finish called in stage {self._stage.name}")
        if self._failed:
            raise InvalidSecAggMessage(
                f"{len(self._failed)} rebuilt secrets did not match their advertisements "
                "(forged shares): no sum is released"
            )
        needed = [("b", o) for o in self._masked] + [("sk", o) for o in self._dropped]
        missing = [key for key in needed if key not in self._recovered]
        if missing:
            fewest = min(len(self._pending.get(key, b"")) // SHARE_BYTES for key in missing)
            self._require("unmasking", fewest, f"{len(missing)} secrets cannot be rebuilt")
        return AggregateResult(
            total=self._accumulator.copy(),
            contributors=tuple(sorted(self._masked)),
            config=self.config,
        )
