"""Client apps for the device-runtime tests: user code that misbehaves in each way a real
user's might (importable as ``tests.integration.device_apps:<name>``)."""

from __future__ import annotations

import time

from feddevice.app import DeviceContext
from feddevice.client import Config, EvaluateResult, FitResult, Parameters


class RaisingClient:
    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        raise ValueError("the user's data loader is broken")

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        raise ValueError("the user's data loader is broken")


class HangingClient:
    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        time.sleep(3600)
        raise AssertionError("unreachable")

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        time.sleep(3600)
        raise AssertionError("unreachable")


class WrongTensorsClient:
    """Returns the model without its last tensor and one of its own."""

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        names = list(parameters)
        returned = {name: parameters[name] for name in names[:-1]}
        returned["extra.weight"] = parameters[names[0]]
        return FitResult(returned, 10)

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        return EvaluateResult(0.0, 1)


def raising(context: DeviceContext) -> RaisingClient:
    return RaisingClient()


def hanging(context: DeviceContext) -> HangingClient:
    return HangingClient()


def wrong_tensors(context: DeviceContext) -> WrongTensorsClient:
    return WrongTensorsClient()
