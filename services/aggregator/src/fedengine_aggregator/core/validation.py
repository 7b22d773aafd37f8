"""Update validation: every check an update must pass before it counts, in a fixed order."""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from fedcommon import arrays, signing
from fedcommon.arrays import NDArrays
from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.messages.v1 import Participant, RoundOpened, UpdateDeclined, UpdateSubmitted


class RejectReason(StrEnum):
    UNKNOWN_ROUND = "unknown_round"
    LATE = "late"
    STALE_MODEL = "stale_model"
    NOT_SELECTED = "not_selected"
    TOO_LARGE = "too_large"
    BAD_SIGNATURE = "bad_signature"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    WRONG_SHAPE = "wrong_shape"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    # The device signed that it has no update this round (its own code failed: the reason it
    # gave is the detail).
    DECLINED = "declined"


# Refusals of a record its sender signed (found after the signature check): the sender
# answered, badly. Any other refusal may be anyone's forgery under the sender's name, so it
# never speaks for the sender (a stage still waits for its real record).
ANSWERED_BADLY = frozenset(
    {
        RejectReason.MALFORMED,
        RejectReason.WRONG_SHAPE,
        RejectReason.NON_FINITE,
        RejectReason.NORM_EXCEEDED,
        RejectReason.DECLINED,
    }
)


class Rejected(Exception):
    """An update that does not count, with the reason it is counted under."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _selected_for_this_try(
    opened: RoundOpened,
    message: UpdateSubmitted | UpdateDeclined,
    participant: Participant | None,
) -> Participant:
    """The sender as the round selected it, for the round and model version it names; raise
    ``Rejected`` (stale model, not selected) otherwise. The first checks of every answer."""
    if message.round_number != opened.round_number or message.model_version != opened.model_version:
        raise Rejected(
            RejectReason.STALE_MODEL,
            f"round {message.round_number} v{message.model_version}, "
            f"open is round {opened.round_number} v{opened.model_version}",
        )
    if participant is None or participant.device_id != message.device_id:
        raise Rejected(RejectReason.NOT_SELECTED, f"{message.device_id} was not selected")
    return participant


def max_update_bytes(param_shapes: list[list[int]]) -> int:
    """Return the largest encoding an update for ``param_shapes`` can have (float64 at most)."""
    header = 8 + sum(1 + 8 + 1 + 4 * len(shape) for shape in param_shapes)
    return header + 8 * sum(int(np.prod(shape, dtype=np.int64)) for shape in param_shapes)


def validate_update(
    opened: RoundOpened,
    message: UpdateSubmitted,
    *,
    participant: Participant | None,
    already_accepted: bool,
) -> NDArrays:
    """Return the decoded update arrays, or raise ``Rejected`` naming the first failed check.

    ``participant`` is the sender as the round expects it (None: not selected), found by the
    caller in its stage's expected senders: one look-up, not a scan of the participants.
    """
    participant = _selected_for_this_try(opened, message, participant)
    limit = max_update_bytes(opened.param_shapes)
    if len(message.update) > limit:
        # Checked before hashing or decoding: an oversize update costs nothing more.
        raise Rejected(RejectReason.TOO_LARGE, f"{len(message.update)} bytes > {limit}")
    if opened.round_id is None or message.round_id != opened.round_id:
        raise Rejected(RejectReason.UNKNOWN_ROUND, "round_id does not match")
    try:
        signing.verify(
            public_key=participant.public_key,
            signature=message.signature,
            payload=signing.update_payload(
                task_id=message.task_id,
                round_id=opened.round_id,
                device_id=message.device_id,
                round_number=message.round_number,
                model_version=message.model_version,
                num_examples=message.num_examples,
                update=message.update,
            ),
        )
    except ProtocolViolation as exc:
        raise Rejected(RejectReason.BAD_SIGNATURE, str(exc)) from exc
    if already_accepted:
        raise Rejected(RejectReason.DUPLICATE, f"{message.device_id} already submitted")
    try:
        decoded = arrays.from_bytes(message.update)
    except InvalidMessage as exc:
        raise Rejected(RejectReason.MALFORMED, str(exc)) from exc
    if arrays.shapes_of(decoded) != opened.param_shapes:
        raise Rejected(RejectReason.WRONG_SHAPE, f"shapes {arrays.shapes_of(decoded)}")
    if not all(np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() for a in decoded):
        raise Rejected(RejectReason.NON_FINITE, "NaN or infinite values")
    norm = arrays.global_norm(decoded)
    if norm > opened.max_update_norm:
        raise Rejected(
            RejectReason.NORM_EXCEEDED, f"norm {norm:.3g} > bound {opened.max_update_norm:.3g}"
        )
    return decoded


def judge_decline(
    opened: RoundOpened,
    message: UpdateDeclined,
    *,
    participant: Participant | None,
    already_accepted: bool,
) -> Rejected:
    """The verdict on a device's signed decline: ``DECLINED`` (it answered, with no update)
    when it is the selected device's own, for this try; else the first check it fails, as an
    update's would (a decline that is not the device's own never speaks for it)."""
    try:
        participant = _selected_for_this_try(opened, message, participant)
    except Rejected as rejected:
        return rejected
    if opened.round_id is None or message.round_id != opened.round_id:
        return Rejected(RejectReason.UNKNOWN_ROUND, "round_id does not match")
    try:
        signing.verify(
            public_key=participant.public_key,
            signature=message.signature,
            payload=signing.decline_payload(
                task_id=message.task_id,
                round_id=opened.round_id,
                device_id=message.device_id,
                round_number=message.round_number,
                model_version=message.model_version,
                reason=message.reason.value,
            ),
        )
    except ProtocolViolation as exc:
        return Rejected(RejectReason.BAD_SIGNATURE, str(exc))
    if already_accepted:
        return Rejected(RejectReason.DUPLICATE, f"{message.device_id} already submitted")
    return Rejected(RejectReason.DECLINED, message.reason.value)
