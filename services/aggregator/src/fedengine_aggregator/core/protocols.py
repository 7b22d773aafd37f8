"""Which protocol a round runs, from its round.opened alone: the one place it is chosen.

A DP round's sum strategy runs DP-FedAvg (:class:`.exchange.PrivateExchange`); a round with
secure aggregation runs SecAgg+ (:class:`.secure_exchange.SecureExchange`, with or without
DP); any other round the plain update exchange (:class:`.exchange.UpdateExchange`). A round
that none can serve (DP or secure aggregation with a robust strategy, too few devices for
SecAgg+) gets the plain exchange and the reason it is refused: it fails at once, through the
same close as any other round.
"""

from __future__ import annotations

from fedcommon.failures import describe
from fedcommon.messages.v1 import RoundOpened, SecAggSubmitted, UpdateDeclined, UpdateSubmitted
from fedengine_aggregator.core import dp_fedavg, secure_exchange
from fedengine_aggregator.core.exchange import PrivateExchange, UpdateExchange, round_accumulator
from fedengine_aggregator.core.protocol import RoundProtocol

# Every message type some protocol takes as a stage record (the shell routes these).
RECORD_TYPES = (UpdateSubmitted, UpdateDeclined, SecAggSubmitted)


def protocol_for(opened: RoundOpened) -> tuple[RoundProtocol, str | None]:
    """The round's protocol, and why the round is refused (None: it is not).

    Raises ``ValueError`` for a strategy or parameter the catalog does not know (the round's
    definition itself is bad).
    """
    accumulator = round_accumulator(opened)
    reason = dp_fedavg.refusal(opened)
    # A DP round whose draw came out empty releases pure noise, as without secure
    # aggregation: there is nobody's update to hide.
    if opened.secure_aggregation is not None and (opened.participants or opened.privacy is None):
        reason = reason or secure_exchange.refusal(opened)
        if reason is None:
            try:
                return secure_exchange.SecureExchange(opened), None
            except ValueError as exc:
                reason = f"secure aggregation: {describe(exc)}"
    if opened.privacy is not None and reason is None:
        return PrivateExchange(opened, accumulator), None
    return UpdateExchange(opened, accumulator), reason
