"""The SecAgg+ server's state as bytes, so that an aggregator killed mid-stage resumes with
the same running sum and the same decisions: an explicit, versioned layout tied to the round's
configuration, never pickle. Split from ``server`` (the state machine) to keep each module one
concept; it reads and writes the server's fields directly, as part of it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import TYPE_CHECKING

import numpy as np

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.messages import Stage
from fedprivacy.secagg.shamir import SHARE_BYTES, Share

if TYPE_CHECKING:
    from fedprivacy.secagg.server import SecAggServer

SELF_SEED, MASK_KEY = 0, 1  # the two secrets of a device: self-mask seed b, mask private key
PENDING, RECOVERED, FAILED = 0, 1, 2
KEYS_BYTES = 96  # encryption public key | mask public key | self-mask commitment
STATE_MAGIC = b"FSAS"
STATE_VERSION = 1
_STATE_HEAD = struct.Struct("<4sB32sBII")


def config_digest(config: RoundConfig) -> bytes:
    """SHA-256 of every public parameter of the round, in a fixed layout."""
    return hashlib.sha256(
        b"fedplat/secagg/v1/round-config\x00"
        + config.task_id
        + struct.pack(
            "<IIIIdIIIB",
            config.round_number,
            config.num_clients,
            config.dim,
            config.bits,
            config.clip_norm,
            config.weight_cap,
            config.degree,
            config.threshold,
            int(config.clip_bit),
        )
        + config.graph_seed
    ).digest()


def export_state(server: SecAggServer) -> bytes:
    """The whole server state as bytes (never pickle), so that an aggregator killed
    mid-stage resumes with the same running sum and the same decisions.

    Layout (little-endian)::

        magic "FSAS" | version u8 = 1 | config digest 32 | stage u8 | n u32 | length u32
        keys n x 96 | U1, U2, U3, U4 bitmaps ceil(n / 8) each | status 2 x n (i8)
        accumulator length x u64
        twice (self-mask seeds, mask keys): count u32 | count x (owner u32 | shares u16 |
        shares x 36)

    Shares waiting for their threshold are secret-shares of device secrets: store the
    export as the aggregator stores the round (it held the same shares in memory).
    """
    config = server.config
    parts = [
        _STATE_HEAD.pack(
            STATE_MAGIC,
            STATE_VERSION,
            config_digest(config),
            server._stage,
            config.num_clients,
            config.vector_length,
        ),
        server._keys.tobytes(),
        *(
            np.packbits(bitmap, bitorder="little").tobytes()
            for bitmap in (server._advertised, server._shared, server._masked, server._unmasked)
        ),
        server._status.tobytes(),
        server._accumulator.astype("<u8").tobytes(),
    ]
    for pending in server._pending:
        parts.append(struct.pack("<I", len(pending)))
        for owner in sorted(pending):
            shares = pending[owner]
            parts.append(struct.pack("<IH", owner, len(shares) // SHARE_BYTES) + shares)
    return b"".join(parts)


def restore_into(server: SecAggServer, data: bytes) -> None:
    """Load ``export_state`` bytes of the same round into a fresh ``server``.

    Raises
    ------
    InvalidSecAggMessage
        Bytes of another round or version, truncated, trailing, or inconsistent.
    """
    config = server.config
    n, length = config.num_clients, config.vector_length
    view = memoryview(bytes(data))
    offset = 0

    def take(size: int) -> memoryview:
        nonlocal offset
        if size < 0 or offset + size > len(view):
            raise InvalidSecAggMessage("server state: truncated")
        offset += size
        return view[offset - size : offset]

    magic, version, digest, stage, got_n, got_length = _STATE_HEAD.unpack(take(_STATE_HEAD.size))
    if (magic, version) != (STATE_MAGIC, STATE_VERSION):
        raise InvalidSecAggMessage("server state: unknown format or version")
    if not hmac.compare_digest(digest, config_digest(config)) or (got_n, got_length) != (
        n,
        length,
    ):
        raise InvalidSecAggMessage("server state: of another round configuration")
    if stage not in tuple(Stage):
        raise InvalidSecAggMessage(f"server state: unknown stage {stage}")
    server._stage = Stage(stage)
    server._keys = np.frombuffer(take(n * KEYS_BYTES), dtype=np.uint8).reshape(n, -1).copy()
    bitmaps = [
        np.unpackbits(np.frombuffer(take((n + 7) // 8), dtype=np.uint8), bitorder="little")
        for _ in range(4)
    ]
    if any(bitmap[n:].any() for bitmap in bitmaps):
        raise InvalidSecAggMessage("server state: nonzero bitmap padding")
    advertised, shared, masked, unmasked = (bitmap[:n].astype(bool) for bitmap in bitmaps)
    if (
        (shared & ~advertised).any()
        or (masked & ~shared).any()
        or (unmasked & ~masked).any()
        or (~advertised & server._keys.any(axis=1)).any()
    ):
        raise InvalidSecAggMessage("server state: inconsistent device sets")
    server._advertised, server._shared = advertised, shared
    server._masked, server._unmasked = masked, unmasked
    status = np.frombuffer(take(2 * n), dtype=np.int8).reshape(2, n).copy()
    if not np.isin(status, (PENDING, RECOVERED, FAILED)).all():
        raise InvalidSecAggMessage("server state: unknown secret status")
    server._status = status
    accumulator = np.frombuffer(take(8 * length), dtype="<u8").astype(np.uint64)
    if length and int(accumulator.max()) >= 1 << config.modulus_bits:
        raise InvalidSecAggMessage("server state: accumulator outside the modulus")
    server._accumulator = accumulator
    for kind in (SELF_SEED, MASK_KEY):
        (count,) = struct.unpack("<I", take(4))
        if count > n:
            raise InvalidSecAggMessage("server state: too many pending owners")
        for _ in range(count):
            owner, shares = struct.unpack("<IH", take(6))
            if owner >= n or owner in server._pending[kind] or status[kind, owner]:
                raise InvalidSecAggMessage("server state: bad pending owner")
            if not 1 <= shares < config.threshold:
                raise InvalidSecAggMessage("server state: bad pending share count")
            pending = bytearray(take(shares * SHARE_BYTES))
            for i in range(0, len(pending), SHARE_BYTES):
                Share.from_bytes(bytes(pending[i : i + SHARE_BYTES]))
            server._pending[kind][owner] = pending
    if offset != len(view):
        raise InvalidSecAggMessage("server state: trailing bytes")
