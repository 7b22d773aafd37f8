"""One small error hierarchy, so the consume loop can tell retryable from permanent failures."""


class FedError(Exception):
    """Base of every FedEngine error."""


class InvalidMessage(FedError):
    """A message that can never be processed: never retried, sent to the dead-letter topic."""


class ProtocolViolation(InvalidMessage):
    """A well-formed message that breaks the protocol (wrong round, stage, signature, ...)."""


class TransientError(FedError):
    """The database or broker is unavailable for now; the caller retries."""
