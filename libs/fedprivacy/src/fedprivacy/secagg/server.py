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
a wrong sum.

Memory (O(n * degree) small integers and O(n) keys, besides the O(dim) accumulator): the
graph is an int32 array; the advertised keys one (n, 96) byte array, advertisements being
rebuilt on demand for the shell (``close_advertisement`` returns a lazy mapping); masked
inputs are added into one modular accumulator as they arrive (never kept); routed
ciphertexts are handed to the shell (its store holds them, as it would in PostgreSQL).
Unmasking shares wait as 36-byte wire encodings only until their owner has ``threshold``
of them (any ``threshold``: a holder that leaves during stage 4 costs nothing while enough
others answer; rebuilding from a fixed set of holders would store less but lose that), then
the secret is rebuilt and later shares of it are dropped. A rebuilt secret is checked against
its owner's advertisement (the mask public key, or the self-mask commitment) before its
masks leave the accumulator; one that does not check out (a forged share) makes ``finish``
refuse, never a wrong sum.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedprivacy.secagg import server_state
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
from fedprivacy.secagg.server_state import (
    FAILED,
    KEYS_BYTES,
    MASK_KEY,
    PENDING,
    RECOVERED,
    SELF_SEED,
)
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


class _Advertisements(Mapping[int, tuple[KeyAdvertisement, ...]]):
    """Per device of U1, its live neighbours' advertisements, built when asked for."""

    def __init__(self, server: SecAggServer, devices: tuple[int, ...]) -> None:
        self._server, self._devices = server, devices

    def __getitem__(self, device: int) -> tuple[KeyAdvertisement, ...]:
        if device not in self._devices:
            raise KeyError(device)
        return self._server.neighbour_advertisements(device)

    def __iter__(self) -> Iterator[int]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)


class SecAggServer:
    """The server's side of one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        n = config.num_clients
        self._graph = config.neighbour_array  # built from the public seed now, as its owner
        self._stage = Stage.ADVERTISE_KEYS
        self._keys = np.zeros((n, KEYS_BYTES), dtype=np.uint8)
        self._advertised = np.zeros(n, dtype=bool)  # U1
        self._shared = np.zeros(n, dtype=bool)  # U2
        self._masked = np.zeros(n, dtype=bool)  # U3
        self._unmasked = np.zeros(n, dtype=bool)  # U4
        self._accumulator = np.zeros(config.vector_length, dtype=np.uint64)
        # Per secret (self-mask seed, mask key) and owner: pending, recovered or failed (a
        # rebuilt value that did not match the advertisement: the round can never finish);
        # and the shares waiting for their owner's threshold, as 36-byte wire encodings.
        self._status = np.zeros((2, n), dtype=np.int8)
        self._pending: tuple[dict[int, bytearray], dict[int, bytearray]] = ({}, {})

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

    def _live(self, device: int, among: npt.NDArray[np.bool_]) -> npt.NDArray[np.int32]:
        neighbours = self._graph[device]
        live: npt.NDArray[np.int32] = neighbours[among[neighbours]]
        return live

    def _x_of(self, owner: int, holder: int) -> int:
        """The Shamir x at which ``owner`` evaluated ``holder``'s share (1-based position)."""
        return int(np.searchsorted(self._graph[owner], holder)) + 1

    # Restart (the byte layout is server_state's) -------------------------------------
    def export_state(self) -> bytes:
        """The whole server state as bytes (never pickle), so that an aggregator killed
        mid-stage resumes with the same running sum and the same decisions."""
        return server_state.export_state(self)

    @classmethod
    def restore(cls, config: RoundConfig, data: bytes) -> SecAggServer:
        """Rebuild a server from ``export_state`` bytes of the same round (raises
        ``InvalidSecAggMessage`` for another round's, a truncated or an inconsistent state)."""
        server = cls(config)
        server_state.restore_into(server, data)
        return server

    # Stage 1 ---------------------------------------------------------------------------
    def receive_advertisement(self, message: KeyAdvertisement) -> None:
        """Record a device's keys; refuse duplicates and small-order keys."""
        sender = self._expect(Stage.ADVERTISE_KEYS, message.header, "KeyAdvertisement")
        if self._advertised[sender]:
            raise InvalidSecAggMessage(f"KeyAdvertisement: device {sender} advertised twice")
        check_public_key(message.encryption_public_key)
        check_public_key(message.mask_public_key)
        self._keys[sender] = np.frombuffer(
            message.encryption_public_key + message.mask_public_key + message.self_mask_commitment,
            dtype=np.uint8,
        )
        self._advertised[sender] = True

    def advertisement(self, device: int) -> KeyAdvertisement:
        """Rebuild device's advertisement (its canonical bytes) from the stored keys."""
        if not self._advertised[device]:
            raise KeyError(device)
        keys = self._keys[device].tobytes()
        return KeyAdvertisement(
            header=Header(
                task_id=self.config.task_id, round_number=self.config.round_number, sender=device
            ),
            encryption_public_key=keys[:32],
            mask_public_key=keys[32:64],
            self_mask_commitment=keys[64:],
        )

    def neighbour_advertisements(self, device: int) -> tuple[KeyAdvertisement, ...]:
        """The advertisements of ``device``'s neighbours in U1 (what it is sent for stage 2)."""
        return tuple(self.advertisement(int(n)) for n in self._live(device, self._advertised))

    def close_advertisement(self) -> Mapping[int, tuple[KeyAdvertisement, ...]]:
        """Close stage 1 (U1 = who advertised); return, per device of U1, its live
        neighbours' advertisements to forward (a lazy mapping: each is built when read)."""
        self._require("advertise-keys", int(self._advertised.sum()))
        self._stage = Stage.SHARE_KEYS
        return _Advertisements(self, tuple(int(d) for d in np.flatnonzero(self._advertised)))

    # Stage 2 ---------------------------------------------------------------------------
    def receive_encrypted_shares(self, message: EncryptedShares) -> None:
        """Accept a device's ciphertexts (addressed to exactly its live neighbours). The shell
        stores ``message.ciphertexts`` and, once the stage closes, delivers each to its
        recipient if that recipient is in U2; the server keeps only who shared."""
        sender = self._expect(Stage.SHARE_KEYS, message.header, "EncryptedShares")
        if not self._advertised[sender] or self._shared[sender]:
            raise InvalidSecAggMessage(f"EncryptedShares: unexpected or repeated sender {sender}")
        expected = {int(n) for n in self._live(sender, self._advertised)}
        if {recipient for recipient, _ in message.ciphertexts} != expected:
            raise InvalidSecAggMessage(
                f"EncryptedShares: device {sender} must share with exactly its live neighbours"
            )
        self._shared[sender] = True

    def close_share_keys(self) -> frozenset[int]:
        """Close stage 2; return U2. The shell delivers to each device of U2 the stored
        ciphertexts addressed to it (all of their senders are in U2)."""
        self._require("share-keys", int(self._shared.sum()))
        self._stage = Stage.MASKED_INPUT
        return frozenset(int(d) for d in np.flatnonzero(self._shared))

    # Stage 3 ---------------------------------------------------------------------------
    def receive_masked_input(self, message: MaskedInput) -> None:
        """Validate a masked input (integers of the right length and modulus) and add it
        into the modular accumulator. A norm check means nothing on masked values."""
        sender = self._expect(Stage.MASKED_INPUT, message.header, "MaskedInput")
        if not self._shared[sender] or self._masked[sender]:
            raise InvalidSecAggMessage(f"MaskedInput: unexpected or repeated sender {sender}")
        config = self.config
        if message.length != config.vector_length or message.bits != config.modulus_bits:
            raise InvalidSecAggMessage(
                f"MaskedInput: {message.length} elements of {message.bits} bits, expected "
                f"{config.vector_length} of {config.modulus_bits}"
            )
        values = unpack(message.packed, length=config.vector_length, bits=config.modulus_bits)
        self._accumulator = add_mod(self._accumulator, values, bits=config.modulus_bits)
        self._masked[sender] = True

    def masked_senders(self) -> tuple[int, ...]:
        """The devices whose masked input is in the sum so far (U3 once stage 3 closed)."""
        return tuple(int(d) for d in np.flatnonzero(self._masked))

    @property
    def _dropped(self) -> npt.NDArray[np.bool_]:
        dropped: npt.NDArray[np.bool_] = self._shared & ~self._masked
        return dropped

    def close_masked_input(self) -> UnmaskingRequest:
        """Close stage 3 (U3 = who sent a masked input); fail closed now if some device's
        secret could not be rebuilt even if every device of U3 answered."""
        self._require("masked-input", int(self._masked.sum()))
        for owner in np.flatnonzero(self._shared):
            # Owner's shares went to its neighbours in U2; only those in U3 will answer.
            holders = int(self._masked[self._graph[owner]].sum())
            self._require("masked-input", holders, f"live holders of device {owner}'s shares")
        self._stage = Stage.UNMASKING
        return UnmaskingRequest(
            header=Header(
                task_id=self.config.task_id,
                round_number=self.config.round_number,
                sender=SERVER_SENDER,
            ),
            survivors=tuple(int(d) for d in np.flatnonzero(self._masked)),
            dropped=tuple(int(d) for d in np.flatnonzero(self._dropped)),
        )

    # Stage 4 ---------------------------------------------------------------------------
    def receive_unmasking(self, message: UnmaskingShares) -> None:
        """Take a survivor's shares (all checked first); rebuild each secret as soon as it has
        ``threshold`` shares and remove its masks from the accumulator."""
        sender = self._expect(Stage.UNMASKING, message.header, "UnmaskingShares")
        if not self._masked[sender] or self._unmasked[sender]:
            raise InvalidSecAggMessage(f"UnmaskingShares: unexpected or repeated sender {sender}")
        expected_self = {int(n) for n in self._live(sender, self._masked)}
        expected_key = {int(n) for n in self._live(sender, self._dropped)}
        if {o for o, _ in message.self_mask_shares} != expected_self or {
            o for o, _ in message.mask_key_shares
        } != expected_key:
            raise InvalidSecAggMessage(f"UnmaskingShares: device {sender} sent the wrong owners")
        for owner, share in message.self_mask_shares + message.mask_key_shares:
            if share.x != self._x_of(owner, sender):
                raise InvalidSecAggMessage(f"UnmaskingShares: share of {owner} has wrong x")
        self._unmasked[sender] = True
        forged: InvalidSecAggMessage | None = None
        for kind, shares in (
            (SELF_SEED, message.self_mask_shares),
            (MASK_KEY, message.mask_key_shares),
        ):
            for owner, share in shares:
                if self._status[kind, owner] != PENDING:
                    continue  # already rebuilt (or failed): a late share is dropped
                pending = self._pending[kind].setdefault(owner, bytearray())
                pending += share.to_bytes()
                if len(pending) == self.config.threshold * SHARE_BYTES:
                    del self._pending[kind][owner]
                    try:
                        self._recover(kind, owner, pending)
                    except InvalidSecAggMessage as exc:
                        forged = forged or exc  # take the message's other shares first
        if forged:
            raise forged

    def _recover(self, kind: int, owner: int, pending: bytearray) -> None:
        config = self.config
        bits = config.modulus_bits
        shares = [
            Share.from_bytes(bytes(pending[i : i + SHARE_BYTES]))
            for i in range(0, len(pending), SHARE_BYTES)
        ]
        element = combine_shares(shares, threshold=config.threshold)
        # Check the rebuilt secret against the owner's advertisement before it touches the
        # accumulator; a mismatch (a forged share) fails the round closed.
        try:
            secret = element_to_secret(element)
        except InvalidSecAggMessage:
            secret = b""
        keys = self._keys[owner].tobytes()
        if kind == SELF_SEED:
            expected = keys[64:]
            got = self_mask_commitment(config, seed=secret, owner=owner) if secret else b""
        else:
            expected, got = keys[32:64], public_key_of(secret) if secret else b""
        if not hmac.compare_digest(expected, got):
            self._status[kind, owner] = FAILED
            which = "self-mask seed" if kind == SELF_SEED else "mask key"
            raise InvalidSecAggMessage(
                f"rebuilt {which} of device {owner} "
                "does not match its advertisement (a forged share): the round cannot finish"
            )
        self._status[kind, owner] = RECOVERED
        if kind == SELF_SEED:
            mask = self_mask(config, seed=secret, owner=owner)
            self._accumulator = subtract_mod(self._accumulator, mask, bits=bits)
            return
        for neighbour in self._live(owner, self._masked):
            mask = pairwise_mask(
                config,
                private_key=secret,
                peer_public_key=self._keys[neighbour, 32:64].tobytes(),
                pair=(owner, int(neighbour)),
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
        failed = int((self._status == FAILED).sum())
        if failed:
            raise InvalidSecAggMessage(
                f"{failed} rebuilt secrets did not match their advertisements "
                "(forged shares): no sum is released"
            )
        needed = (np.flatnonzero(self._masked), np.flatnonzero(self._dropped))
        missing = [
            (kind, int(owner))
            for kind, owners in enumerate(needed)
            for owner in owners
            if self._status[kind, owner] != RECOVERED
        ]
        if missing:
            fewest = min(
                len(self._pending[kind].get(owner, b"")) // SHARE_BYTES for kind, owner in missing
            )
            self._require("unmasking", fewest, f"{len(missing)} secrets cannot be rebuilt")
        return AggregateResult(
            total=self._accumulator.copy(),
            contributors=tuple(int(d) for d in np.flatnonzero(self._masked)),
            config=self.config,
        )
