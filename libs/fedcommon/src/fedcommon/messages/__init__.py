"""Bus messages; the current version is re-exported here."""

from fedcommon.messages.v1 import *  # noqa: F403
from fedcommon.messages.v1 import AnyMessage, Envelope

__all__ = ["AnyMessage", "Envelope"]
