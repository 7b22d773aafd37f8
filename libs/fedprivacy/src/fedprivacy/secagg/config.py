"""The public parameters of one SecAgg+ round, and its sparse neighbour graph.

The graph (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", https://eprint.iacr.org/2020/704, §3-4): a random k-regular graph, built as the
Harary graph H(k, n) (each node joined to the k/2 nodes on either side of it on a ring) over
a random permutation of the devices. The permutation comes from a 32-byte public seed the
server announces: devices are ordered by SHA-256(seed || index), so every party computes the
same graph and the server cannot choose it after seeing the devices' keys (the seed is fixed
in the round's setup, before key advertisement).

Degree and threshold: ``k = c * log2(n)`` rounded up to an even number (capped at n - 1,
where the graph is complete), with ``c = 3`` by default (k = 20 at n = 100, k = 30 at
n = 1000), and ``t = k // 2 + 1`` of a device's k neighbours, as Bell et al. A majority
threshold means a server can never obtain both a survivor's self-mask seed and its mask
key from honest neighbours (each honest neighbour reveals one or the other, never both).

Security parameter, stated plainly: Bell et al. prove security and correctness with failure
probability 2^-sigma (sigma = 40) and 2^-eta for k = O(log n + sigma) chosen from their bound
given the corrupted fraction gamma and dropout fraction delta; c = 3 is a practical
heuristic, not that bound. A deployment
that must tolerate a given gamma and delta should compute k from Bell et al.'s Theorem and
pass it as ``degree``.

What the defaults withstand (computed from the hypergeometric tail, a random graph):

- an honest-but-curious server with a fraction gamma of colluding devices learns device i's
  input only if t of i's k neighbours collude (they rebuild its mask key; the server gets
  its self-mask seed legitimately). Probability that some device is exposed, n = 1000,
  k = 30, t = 16: gamma = 0.05: 1e-11 (about 2^-36); 0.1: 1.4e-6; 0.2: 0.04; 1/3: certain.
  n = 100, k = 20, t = 11: gamma = 0.1: 0 (10 colluders < t); 0.2: 0.009. Bell et al. reach
  2^-40 at gamma = 1/3 only with a much larger k: take their bound for that.
- a server that deviates (sends different ``UnmaskingRequest``s to different neighbours of
  one device, some naming it a survivor, some dropped) needs |A| + c >= t and |B| + c >= t
  with |A| + |B| + c <= k, so c >= 2t - k = 2 colluding neighbours suffice. Defeating that
  needs Bonawitz et al.'s consistency round (devices sign U3; answer only on t matching
  signatures), which this library does not have: it is secure against a semi-honest server.
- the graph seed is the server's: a server that grinds seeds before the round can place
  colluding devices around a target (about 1 / (n * p) tries, p the per-device tail above:
  about 7e5 tries at gamma = 0.1, n = 1000). A deviating server must not choose the seed
  alone (derive it from a public beacon, or a commit-reveal with the devices).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from fedprivacy.secagg.encoding import modulus_bits

DEFAULT_DEGREE_FACTOR = 3.0
TASK_ID_BYTES = 16
SEED_BYTES = 32

NeighbourArray = npt.NDArray[np.int32]


def choose_degree(num_clients: int, *, factor: float = DEFAULT_DEGREE_FACTOR) -> int:
    """Return k = factor * log2(n) rounded up to even, at most n - 1."""
    if num_clients < 2:
        raise ValueError(f"num_clients must be >= 2, got {num_clients}")
    k = math.ceil(factor * math.log2(num_clients))
    k += k % 2
    return min(max(k, 2), num_clients - 1)


def build_neighbour_array(*, num_clients: int, degree: int, seed: bytes) -> NeighbourArray:
    """Return an ``(n, degree)`` int32 array: row i holds device i's sorted neighbours in the
    permuted Harary graph H(degree, n) (the complete graph when degree >= n - 1).

    The server's compact form of the graph: 4 bytes per edge end instead of Python tuples.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if degree >= num_clients - 1:
        everyone = np.arange(num_clients, dtype=np.int32)
        return np.stack([np.delete(everyone, i) for i in range(num_clients)])
    if degree < 2 or degree % 2:
        raise ValueError(f"degree below n - 1 must be even and >= 2, got {degree}")
    ring = np.array(
        sorted(
            range(num_clients),
            key=lambda i: hashlib.sha256(seed + struct.pack("<I", i)).digest(),
        ),
        dtype=np.int64,
    )
    position = np.empty(num_clients, dtype=np.int64)
    position[ring] = np.arange(num_clients)
    half = degree // 2
    steps = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    around = ring[(position[:, None] + steps[None, :]) % num_clients]
    return np.sort(around, axis=1).astype(np.int32)


def build_neighbours(*, num_clients: int, degree: int, seed: bytes) -> tuple[tuple[int, ...], ...]:
    """Return each device's sorted neighbours in the permuted Harary graph H(degree, n)."""
    array = build_neighbour_array(num_clients=num_clients, degree=degree, seed=seed)
    return tuple(tuple(int(j) for j in row) for row in array)


@dataclass(frozen=True)
class RoundConfig:
    """Everything public about one round, announced by the server before key advertisement.

    Devices are indices 0..num_clients-1 of the round's (server-announced) participant list;
    the shells map indices to device ids.
    """

    task_id: bytes
    round_number: int
    num_clients: int
    dim: int
    bits: int
    clip_norm: float
    weight_cap: int
    graph_seed: bytes
    degree: int
    threshold: int
    clip_bit: bool = False

    def __post_init__(self) -> None:
        if len(self.task_id) != TASK_ID_BYTES:
            raise ValueError(f"task_id must be {TASK_ID_BYTES} bytes, got {len(self.task_id)}")
        if not 0 <= self.round_number < 2**32:
            raise ValueError(f"round_number must fit in u32, got {self.round_number}")
        if not 2 <= self.num_clients < 2**32:
            raise ValueError(f"num_clients must be >= 2, got {self.num_clients}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        modulus_bits(bits=self.bits, num_clients=self.num_clients)
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if not 1 <= self.weight_cap <= (1 << self.bits) - 1:
            raise ValueError(f"weight_cap must be in 1..2^bits-1, got {self.weight_cap}")
        if not 1 <= self.degree <= self.num_clients - 1:
            raise ValueError(f"degree must be in 1..num_clients-1, got {self.degree}")
        if not self.degree // 2 < self.threshold <= self.degree:
            raise ValueError(
                f"threshold must be a majority of the degree {self.degree}, got {self.threshold}"
            )

    @classmethod
    def create(
        cls,
        *,
        task_id: bytes,
        round_number: int,
        num_clients: int,
        dim: int,
        bits: int,
        clip_norm: float,
        weight_cap: int,
        graph_seed: bytes,
        clip_bit: bool = False,
        degree_factor: float = DEFAULT_DEGREE_FACTOR,
    ) -> RoundConfig:
        """Build a config with the default degree and majority threshold of the docstring."""
        degree = choose_degree(num_clients, factor=degree_factor)
        return cls(
            task_id=task_id,
            round_number=round_number,
            num_clients=num_clients,
            dim=dim,
            bits=bits,
            clip_norm=clip_norm,
            weight_cap=weight_cap,
            graph_seed=graph_seed,
            degree=degree,
            threshold=degree // 2 + 1,
            clip_bit=clip_bit,
        )

    @property
    def modulus_bits(self) -> int:
        """k = bits + ceil(log2 num_clients): the modulus is 2^k."""
        return modulus_bits(bits=self.bits, num_clients=self.num_clients)

    @property
    def vector_length(self) -> int:
        """Masked elements per device: dim, the weight, and the clip bit if asked."""
        return self.dim + 1 + int(self.clip_bit)

    @cached_property
    def neighbour_array(self) -> NeighbourArray:
        """The graph as an ``(n, degree)`` int32 array of sorted rows (the server's form)."""
        return build_neighbour_array(
            num_clients=self.num_clients, degree=self.degree, seed=self.graph_seed
        )

    @cached_property
    def neighbours(self) -> tuple[tuple[int, ...], ...]:
        """Each device's neighbours (sorted), derived from the public graph seed."""
        return build_neighbours(
            num_clients=self.num_clients, degree=self.degree, seed=self.graph_seed
        )
