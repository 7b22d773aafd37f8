"""The closed sets of privacy options, importable without loading dp-accounting (0.6 s)."""

from enum import StrEnum


class Accountant(StrEnum):
    """How ε is computed from the releases.

    `rdp` and `pld` may enforce a budget. The others exist to check published numbers:
    `exact` (q = 1 only: Balle & Wang's exact ε); `moments`, the 2016 moments accountant of
    Abadi et al. (classic RDP-to-ε conversion, integer orders 2..33); `classic`, the same
    conversion over dp-accounting's default orders (how FL4Health reproduces McMahan et al.
    2018). Both classic conversions are looser than `rdp`.
    """

    RDP = "rdp"
    PLD = "pld"
    EXACT = "exact"
    MOMENTS = "moments"
    CLASSIC = "classic"
