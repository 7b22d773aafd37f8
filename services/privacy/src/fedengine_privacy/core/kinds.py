"""The closed sets of privacy options, importable without loading dp-accounting (0.6 s)."""

from enum import StrEnum


class Accountant(StrEnum):
    """How ε is computed from the releases.

    `rdp` and `pld` may enforce a budget. `exact` (q = 1 only) and `moments` (the classic
    conversion of Abadi et al. 2016, looser than `rdp`) exist to check published numbers.
    """

    RDP = "rdp"
    PLD = "pld"
    EXACT = "exact"
    MOMENTS = "moments"
