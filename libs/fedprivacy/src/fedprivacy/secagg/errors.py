"""Typed errors of the secure-aggregation protocol.

fedprivacy depends on numpy and cryptography only, so it cannot raise fedcommon's
``InvalidMessage``; the aggregator and device shells map these at their edge:
``InvalidSecAggMessage`` -> ``fedcommon.errors.ProtocolViolation`` (dead-lettered, never
retried), ``ThresholdNotMet`` -> the round fails closed and is reported failed.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class InvalidSecAggMessage(SecAggError, ValueError):
    """A message or key that is malformed, tampered with, misaddressed or proves nothing."""


class ThresholdNotMet(SecAggError):
    """Too few devices survive a stage to finish the round; the round must fail closed.

    Raised instead of ever returning a sum that is missing masks (which would be a wrong sum).
    """

    def __init__(self, *, stage: str, available: int, required: int, detail: str = "") -> None:
        self.stage = stage
        self.available = available
        self.required = required
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"secure aggregation failed closed at stage {stage!r}: {available} available, "
            f"{required} required{suffix}"
        )
