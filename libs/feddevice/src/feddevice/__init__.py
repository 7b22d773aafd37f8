"""The FedEngine device runtime: bring your own model, data and training loop.

User code implements :class:`feddevice.client.Client` (``fit`` and ``evaluate`` over named
tensors); :func:`feddevice.runtime.run` keeps the device's identity, enrols it, heartbeats,
answers the train and evaluate requests addressed to it, and signs and sends what ``fit`` and
``evaluate`` return.
"""

from feddevice.client import Client, EvaluateResult, FitResult, Parameters

__all__ = ["Client", "EvaluateResult", "FitResult", "Parameters"]
