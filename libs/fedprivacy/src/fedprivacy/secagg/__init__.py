"""SecAgg+: secure aggregation with a sparse neighbour graph, as pure state machines.

Bonawitz et al. 2017 (https://eprint.iacr.org/2017/281) with the neighbour graph of Bell
et al. 2020 (https://eprint.iacr.org/2020/704). The protocol and Shamir sharing are written
by hand (no well-kept library provides them); X25519, HKDF, AES-GCM and ChaCha20 come from
``cryptography``. Modules: ``config`` (round parameters, graph), ``client`` / ``server``
(the state machines), ``messages`` (device wire formats), ``delivery`` (server-to-device
wire formats, deterministic message ids), ``encoding`` (fixed point, packing), ``masking``,
``pairing``, ``keys``, ``encryption``, ``shamir``, ``errors``.
"""

from fedprivacy.secagg.client import ProtocolStateError, SecAggClient
from fedprivacy.secagg.config import RoundConfig, build_neighbours, choose_degree
from fedprivacy.secagg.errors import InvalidSecAggMessage, SecAggError, ThresholdNotMet
from fedprivacy.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    Stage,
    UnmaskingRequest,
    UnmaskingShares,
)
from fedprivacy.secagg.server import AggregateResult, SecAggServer
from fedprivacy.secagg.shamir import SecureAggregationProtocol, Share

__all__ = [
    "AggregateResult",
    "EncryptedShares",
    "InvalidSecAggMessage",
    "KeyAdvertisement",
    "MaskedInput",
    "ProtocolStateError",
    "RoundConfig",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "SecureAggregationProtocol",
    "Share",
    "Stage",
    "ThresholdNotMet",
    "UnmaskingRequest",
    "UnmaskingShares",
    "build_neighbours",
    "choose_degree",
]
