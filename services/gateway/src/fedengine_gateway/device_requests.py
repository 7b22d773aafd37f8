"""The headers with which a device signs a request as itself, checked before anything is looked up.

Pure: the caller passes the gateway's clock; no I/O, no logging. The signature itself is
checked afterwards, against the device's enrolled key (``fedengine_gateway.device_models``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedcommon.constraints import INT64_MAX

SENT_AT_HEADER = "X-Device-Sent-At"
SIGNATURE_HEADER = "X-Device-Signature"
SIGNATURE_HEX_CHARS = 128

# ASCII digits only: int() would also take "+1", " 1", "1_000" and other scripts' digits.
# Nineteen digits hold every value up to INT64_MAX (the signed payload packs it as int64).
_MICROSECONDS = re.compile(r"[0-9]{1,19}")
_SIGNATURE = re.compile(rf"[0-9a-fA-F]{{{SIGNATURE_HEX_CHARS}}}")


class DeviceRequestRefused(ValueError):
    """The request's headers do not let it be checked at all."""


class MalformedHeader(DeviceRequestRefused):
    """A header is missing or not in its format; the message names it."""


class OutsideWindow(DeviceRequestRefused):
    """The request's send time is too far from the gateway's clock."""


@dataclass(frozen=True)
class DeviceRequest:
    sent_at_us: int
    signature: bytes


def check_headers(
    *, sent_at: str | None, signature: str | None, now_us: int, window_s: float
) -> DeviceRequest:
    """Parse a device request's headers and check its send time against the gateway's clock.

    Parameters
    ----------
    sent_at
        The ``X-Device-Sent-At`` header: integer microseconds since the Unix epoch.
    signature
        The ``X-Device-Signature`` header: 128 hex characters (an Ed25519 signature).
    now_us
        The gateway's clock, in microseconds since the Unix epoch.
    window_s
        How far the send time may be from ``now_us``, either way, in seconds.

    Returns
    -------
    DeviceRequest
        The send time and the signature's 64 bytes.

    Raises
    ------
    MalformedHeader
        A header is missing, not in its format, or out of range; the message names it.
    OutsideWindow
        The send time is more than ``window_s`` from ``now_us``.
    """
    if sent_at is None:
        raise MalformedHeader(
            f"missing header {SENT_AT_HEADER} (integer microseconds since the Unix epoch)"
        )
    if _MICROSECONDS.fullmatch(sent_at) is None or int(sent_at) > INT64_MAX:
        raise MalformedHeader(
            f"header {SENT_AT_HEADER} must be an integer count of microseconds since the Unix "
            f"epoch, from 0 to {INT64_MAX}"
        )
    if signature is None:
        raise MalformedHeader(
            f"missing header {SIGNATURE_HEADER} (an Ed25519 signature, {SIGNATURE_HEX_CHARS} hex "
            "characters)"
        )
    if _SIGNATURE.fullmatch(signature) is None:
        raise MalformedHeader(
            f"header {SIGNATURE_HEADER} must be an Ed25519 signature of exactly "
            f"{SIGNATURE_HEX_CHARS} hex characters"
        )
    sent_at_us = int(sent_at)
    skew_us = sent_at_us - now_us
    if abs(skew_us) > window_s * 1_000_000:
        direction = "ahead of" if skew_us > 0 else "behind"
        raise OutsideWindow(
            f"the request time is outside the window: {SENT_AT_HEADER} is "
            f"{abs(skew_us) / 1_000_000:.1f} s {direction} the gateway's clock, and at most "
            f"{window_s:g} s either way is accepted"
        )
    return DeviceRequest(sent_at_us=sent_at_us, signature=bytes.fromhex(signature))
