"""The device side of SecAgg+ as a pure state machine (no I/O, no asyncio, no clock).

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
(https://eprint.iacr.org/2017/281), §4 (the semi-honest protocol), over the sparse neighbour
graph of Bell et al. 2020 (``config``). The protocol is written by hand (no well-kept library
implements it); every primitive comes from ``cryptography``.

A shell drives one ``SecAggClient`` per device and round, calling the methods in order:

    advertise_keys() -> KeyAdvertisement
    share_keys(neighbour advertisements) -> EncryptedShares
    masked_input(ciphertexts addressed to this device, update, ...) -> MaskedInput
    unmask(UnmaskingRequest) -> UnmaskingShares

Calling a method out of order raises ``ProtocolStateError``; each runs at most once, so a
device can never be talked into revealing both shares of one neighbour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import FloatVector, encode_update, pack
from fedprivacy.secagg.encryption import decrypt, encrypt, share_associated_data
from fedprivacy.secagg.errors import InvalidSecAggMessage, SecAggError, ThresholdNotMet
from fedprivacy.secagg.keys import KeyPair, check_public_key
from fedprivacy.secagg.masking import add_mod, subtract_mod
from fedprivacy.secagg.messages import (
    SERVER_SENDER,
    EncryptedShares,
    Header,
    KeyAdvertisement,
    MaskedInput,
    SharePlaintext,
    Stage,
    UnmaskingRequest,
    UnmaskingShares,
)
from fedprivacy.secagg.pairing import (
    pairwise_mask,
    self_mask,
    self_mask_commitment,
    share_encryption_key,
)
from fedprivacy.secagg.shamir import RandomBytes, create_shares, secret_to_element


class ProtocolStateError(SecAggError):
    """A state machine method called out of order or twice."""


def check_header(header: Header, config: RoundConfig, *, name: str) -> None:
    """Refuse a message of another task or round, or from an index outside the round."""
    if header.task_id != config.task_id or header.round_number != config.round_number:
        raise InvalidSecAggMessage(f"{name}: message of another task or round")
    if not 0 <= header.sender < config.num_clients:
        raise InvalidSecAggMessage(f"{name}: sender {header.sender} is not in the round")


class SecAggClient:
    """One device's side of one round."""

    def __init__(
        self, config: RoundConfig, *, index: int, random_bytes: RandomBytes = os.urandom
    ) -> None:
        if not 0 <= index < config.num_clients:
            raise ValueError(f"index must be in 0..{config.num_clients - 1}, got {index}")
        self.config = config
        self.index = index
        self._random_bytes = random_bytes
        self._neighbours = config.neighbours[index]
        self._header = Header(
            task_id=config.task_id, round_number=config.round_number, sender=index
        )
        self._encryption = KeyPair.generate(random_bytes)
        self._mask = KeyPair.generate(random_bytes)
        self._self_mask_seed = random_bytes(32)
        self._next: Stage | None = Stage.ADVERTISE_KEYS
        self._peer_keys: dict[int, KeyAdvertisement] = {}
        self._received: dict[int, SharePlaintext] = {}

    def _advance(self, stage: Stage) -> None:
        if self._next != stage:
            raise ProtocolStateError(f"device {self.index}: {stage.name} called out of order")
        self._next = Stage(stage + 1) if stage < Stage.UNMASKING else None

    def advertise_keys(self) -> KeyAdvertisement:
        """Stage 1: the two fresh public keys of this round and the self-mask commitment."""
        self._advance(Stage.ADVERTISE_KEYS)
        return KeyAdvertisement(
            header=self._header,
            encryption_public_key=self._encryption.public_key,
            mask_public_key=self._mask.public_key,
            self_mask_commitment=self_mask_commitment(
                self.config, seed=self._self_mask_seed, owner=self.index
            ),
        )

    def share_keys(self, advertisements: Sequence[KeyAdvertisement]) -> EncryptedShares:
        """Stage 2: Shamir-share the self-mask seed and the mask private key among the live
        neighbours, one AES-GCM ciphertext each.

        Raises
        ------
        InvalidSecAggMessage
            An advertisement of another round, from a non-neighbour, twice, or a bad key.
        ThresholdNotMet
            Fewer than ``threshold`` neighbours advertised keys.
        """
        self._advance(Stage.SHARE_KEYS)
        config = self.config
        for advertisement in advertisements:
            check_header(advertisement.header, config, name="KeyAdvertisement")
            sender = advertisement.header.sender
            if sender not in self._neighbours or sender in self._peer_keys:
                raise InvalidSecAggMessage(f"KeyAdvertisement: unexpected sender {sender}")
            check_public_key(advertisement.encryption_public_key)
            check_public_key(advertisement.mask_public_key)
            self._peer_keys[sender] = advertisement
        if len(self._peer_keys) < config.threshold:
            raise ThresholdNotMet(
                stage="share-keys", available=len(self._peer_keys), required=config.threshold
            )
        shares = {
            name: create_shares(
                secret_to_element(secret),
                threshold=config.threshold,
                num_shares=len(self._neighbours),
                random_bytes=self._random_bytes,
            )
            for name, secret in (("b", self._self_mask_seed), ("sk", self._mask.private_key))
        }
        ciphertexts = []
        for position, neighbour in enumerate(self._neighbours):
            if neighbour not in self._peer_keys:
                continue
            plaintext = SharePlaintext(
                sender=self.index,
                recipient=neighbour,
                self_mask_share=shares["b"][position],
                mask_key_share=shares["sk"][position],
            )
            key, aad = self._channel(peer=neighbour, sender=self.index, recipient=neighbour)
            ciphertexts.append(
                (
                    neighbour,
                    encrypt(
                        key,
                        plaintext.to_bytes(),
                        associated_data=aad,
                        random_bytes=self._random_bytes,
                    ),
                )
            )
        return EncryptedShares(header=self._header, ciphertexts=tuple(ciphertexts))

    def _channel(self, *, peer: int, sender: int, recipient: int) -> tuple[bytes, bytes]:
        """The AES-GCM key shared with ``peer`` and the associated data of one share bundle
        from ``sender`` to ``recipient`` (one of them this device, the other ``peer``)."""
        config = self.config
        key = share_encryption_key(
            config,
            private_key=self._encryption.private_key,
            peer_public_key=self._peer_keys[peer].encryption_public_key,
            pair=(self.index, peer),
        )
        aad = share_associated_data(
            task_id=config.task_id,
            round_number=config.round_number,
            stage=Stage.SHARE_KEYS,
            sender=sender,
            recipient=recipient,
        )
        return key, aad

    def _open(self, sender: int, ciphertext: bytes) -> SharePlaintext:
        config = self.config
        if sender not in self._peer_keys or sender in self._received:
            raise InvalidSecAggMessage(f"encrypted share from unexpected sender {sender}")
        key, aad = self._channel(peer=sender, sender=sender, recipient=self.index)
        plaintext = SharePlaintext.from_bytes(decrypt(key, ciphertext, associated_data=aad))
        expected_x = config.neighbours[sender].index(self.index) + 1
        if (
            plaintext.sender != sender
            or plaintext.recipient != self.index
            or plaintext.self_mask_share.x != expected_x
            or plaintext.mask_key_share.x != expected_x
        ):
            raise InvalidSecAggMessage(f"encrypted share from {sender} is misaddressed")
        return plaintext

    def masked_input(
        self,
        ciphertexts: Sequence[tuple[int, bytes]],
        update: FloatVector,
        *,
        num_examples: int,
        rng: np.random.Generator,
        within_clip: bool | None = None,
    ) -> MaskedInput:
        """Stage 3: decrypt the neighbours' shares, then send the encoded update plus the
        self mask plus one pairwise mask per neighbour that shared keys.

        ``ciphertexts`` are ``(sender, nonce || ciphertext)`` addressed to this device.
        ``rng`` drives the stochastic rounding. With ``config.clip_bit`` the clip bit is
        computed from the update (its norm at most ``clip_norm``) unless ``within_clip``
        gives it (adaptive clipping with another clip norm than the masking one).

        Raises
        ------
        InvalidSecAggMessage
            A tampered, replayed or misaddressed ciphertext, or an update of the wrong size.
        ThresholdNotMet
            Fewer than ``threshold`` neighbours shared keys.
        """
        self._advance(Stage.MASKED_INPUT)
        config = self.config
        if update.shape != (config.dim,):
            raise InvalidSecAggMessage(
                f"update must have shape ({config.dim},), got {update.shape}"
            )
        for sender, ciphertext in ciphertexts:
            self._received[sender] = self._open(sender, ciphertext)
        if len(self._received) < config.threshold:
            raise ThresholdNotMet(
                stage="masked-input", available=len(self._received), required=config.threshold
            )
        encoded = encode_update(
            update,
            num_examples=num_examples,
            clip_norm=config.clip_norm,
            weight_cap=config.weight_cap,
            bits=config.bits,
            clip_bit=config.clip_bit,
            rng=rng,
        )
        if config.clip_bit and within_clip is not None:
            encoded[-1] = np.uint64(int(within_clip))
        bits = config.modulus_bits
        masked = add_mod(
            encoded, self_mask(config, seed=self._self_mask_seed, owner=self.index), bits=bits
        )
        for neighbour in sorted(self._received):
            mask = pairwise_mask(
                config,
                private_key=self._mask.private_key,
                peer_public_key=self._peer_keys[neighbour].mask_public_key,
                pair=(self.index, neighbour),
            )
            if self.index < neighbour:
                masked = add_mod(masked, mask, bits=bits)
            else:
                masked = subtract_mod(masked, mask, bits=bits)
        return MaskedInput(
            header=self._header,
            length=config.vector_length,
            bits=bits,
            packed=pack(masked, bits=bits),
        )

    def unmask(self, request: UnmaskingRequest) -> UnmaskingShares:
        """Stage 4: reveal self-mask shares of neighbours that sent a masked input and
        mask-key shares of neighbours that shared keys but sent none; never both for one.

        Raises
        ------
        InvalidSecAggMessage
            Overlapping sets, or this device named as dropped.
        ThresholdNotMet
            Fewer than ``threshold`` of this device's neighbours survive.
        """
        self._advance(Stage.UNMASKING)
        config = self.config
        header = request.header
        if (
            header.task_id != config.task_id
            or header.round_number != config.round_number
            or header.sender != SERVER_SENDER
        ):
            raise InvalidSecAggMessage("UnmaskingRequest: not the server's, or another round")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise InvalidSecAggMessage("UnmaskingRequest: a device is both survivor and dropped")
        if self.index in dropped or self.index not in survivors:
            raise InvalidSecAggMessage("UnmaskingRequest: this device sent its masked input")
        alive = [n for n in self._received if n in survivors]
        if len(alive) < config.threshold:
            raise ThresholdNotMet(
                stage="unmasking", available=len(alive), required=config.threshold
            )
        return UnmaskingShares(
            header=self._header,
            self_mask_shares=tuple((n, self._received[n].self_mask_share) for n in sorted(alive)),
            mask_key_shares=tuple(
                (n, self._received[n].mask_key_share)
                for n in sorted(self._received)
                if n in dropped
            ),
        )
