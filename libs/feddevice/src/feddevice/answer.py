"""From a train or evaluate request to the signed answer a device sends: pure, no I/O.

The runtime fetches the model and runs the user's ``fit`` or ``evaluate``; what comes back is
checked here as its receiver will check it (every tensor of the model, by name, with its
shape, finite; an evaluation's loss, example count and metrics within the wire's bounds), so
that a mistake in user code is reported on the device, naming the tensor or metric, rather
than as a bare refusal at the aggregator or the coordinator.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors

from fedcommon import arrays, signing, tensor_order
from fedcommon.constraints import (
    MAX_EXAMPLES_PER_UPDATE,
    MAX_METRICS,
    MAX_SETTING,
    MAX_TIMEOUT_S,
    METRIC_NAME_PATTERN,
)
from fedcommon.messages.v1 import (
    DeclineReason,
    EvaluateRequested,
    EvaluationSubmitted,
    TrainRequested,
    UpdateDeclined,
    UpdateMetrics,
    UpdateSubmitted,
)
from feddevice.client import EvaluateResult, FitResult
from feddevice.state import Identity

PRODUCER = "feddevice"
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


class FitRefused(ValueError):
    """What the user's fit returned cannot be sent (the reason names the tensor or field)."""

    def __init__(self, detail: str, reason: DeclineReason = DeclineReason.WRONG_TENSORS) -> None:
        super().__init__(detail)
        self.reason = reason


class EvaluationRefused(ValueError):
    """What the user's evaluate returned cannot be sent (the message names the field or
    metric). No decline exists for an evaluation: the device sends nothing, and the
    coordinator's deadline counts it out."""


class GlobalModel:
    """A global model version as a device sees it: named tensors and the wire order."""

    def __init__(self, data: bytes) -> None:
        self.order = tensor_order.order_of(data)
        try:
            loaded = load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error type for a bad file
            raise tensor_order.BadModelFile(f"model file does not load: {exc}") from exc
        self.parameters: dict[str, np.ndarray] = {}
        for name in self.order:
            array = loaded[name]
            # Read-only: a fit that changed the global model in place would compute a zero
            # update from it, silently; it raises instead, and the device declines.
            array.setflags(write=False)
            self.parameters[name] = array


def device_seed(task_seed: int, round_number: int, device_id: str) -> int:
    """This device's seed for a round: reproducible, and different for every device."""
    digest = hashlib.sha256(f"{task_seed}/{round_number}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _built_in(request: TrainRequested | EvaluateRequested) -> dict[str, str | int | bool]:
    """The task's built-in data set and model names, where it has them (a task on an
    uploaded model has neither, and its config then carries neither key), with the MLP's
    hidden units and ``standardize`` where the task sets them."""
    names: dict[str, str | int | bool] = {}
    if request.dataset is not None:
        names["dataset"] = request.dataset
    if request.model_architecture is not None:
        names["model_architecture"] = request.model_architecture.value
    if request.model_hidden is not None:
        names["model_hidden"] = request.model_hidden
    if request.standardize:
        names["standardize"] = True
    return names


def config_for(request: TrainRequested) -> dict[str, bool | int | float | str]:
    """The config a client's fit receives for ``request``."""
    return {
        "task_id": str(request.task_id),
        "round_number": request.round_number,
        "model_version": request.model_version,
        "learning_rate": request.learning_rate,
        "local_epochs": request.local_epochs,
        "batch_size": request.batch_size,
        "seed": device_seed(request.seed, request.round_number, request.device_id),
        "proximal_mu": request.proximal_mu,
        **_built_in(request),
        **(
            {}
            if request.local_dp is None
            else {
                "local_dp.noise_multiplier": request.local_dp.noise_multiplier,
                "local_dp.sample_rate": request.local_dp.sample_rate,
                "local_dp.steps": request.local_dp.steps,
                "local_dp.max_grad_norm": request.local_dp.max_grad_norm,
            }
        ),
    }


def config_for_evaluation(request: EvaluateRequested) -> dict[str, bool | int | float | str]:
    """The config a client's evaluate receives for ``request``: ``task_id``,
    ``round_number`` and ``model_version`` (which version of which task it scores),
    ``batch_size``, ``seed`` (this device's, as for training in that round) and, where the
    task has them, ``dataset`` and ``model_architecture``."""
    return {
        "task_id": str(request.task_id),
        "round_number": request.round_number,
        "model_version": request.model_version,
        "batch_size": request.batch_size,
        "seed": device_seed(request.seed, request.round_number, request.device_id),
        **_built_in(request),
    }


def delta_of(model: GlobalModel, result: FitResult) -> list[np.ndarray]:
    """The update (new minus global, float32, in the wire order); FitRefused if ``result``
    does not hold exactly the model's tensors, with their shapes, all finite."""
    given, wanted = set(result.parameters), set(model.order)
    if given != wanted:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise FitRefused(
            "fit returned other tensors than the model's: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"unexpected {', '.join(extra[:5])}" if extra else "",
                )
                if part
            )
        )
    delta = []
    for name in model.order:
        before = model.parameters[name]
        after = np.asarray(result.parameters[name])
        if after.shape != before.shape:
            raise FitRefused(
                f"fit returned {name} with shape {list(after.shape)}, "
                f"the model's is {list(before.shape)}"
            )
        if not np.issubdtype(after.dtype, np.number) or np.issubdtype(
            after.dtype, np.complexfloating
        ):
            raise FitRefused(f"fit returned {name} as {after.dtype}, not real numbers")
        change = after.astype(np.float32) - before.astype(np.float32)
        if not np.isfinite(change).all():
            raise FitRefused(f"fit returned {name} with values that are not finite")
        delta.append(change)
    if isinstance(result.num_examples, bool) or not isinstance(result.num_examples, int):
        raise FitRefused(
            "fit returned num_examples that is not an integer", DeclineReason.FIT_FAILED
        )
    if not 1 <= result.num_examples <= 2**31 - 1:
        raise FitRefused(
            f"fit returned num_examples {result.num_examples}, not 1..2^31-1",
            DeclineReason.FIT_FAILED,
        )
    return delta


def _metric(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, int | float) and math.isfinite(value) and abs(value) <= MAX_SETTING:
        return float(value)
    return None


def _answering(request: TrainRequested, identity: Identity, producer: str) -> dict[str, Any]:
    """The fields every answer to ``request`` carries: whose, for which try of which round."""
    if request.round_id is None:
        raise FitRefused("train request without round_id")
    return {
        "producer": producer,
        "round_id": request.round_id,
        "correlation_id": request.message_id,
        "task_id": request.task_id,
        "device_id": identity.device_id,
        "round_number": request.round_number,
        "model_version": request.model_version,
    }


def signed_update(
    request: TrainRequested,
    identity: Identity,
    delta: list[np.ndarray],
    result: FitResult,
    *,
    duration_s: float,
    producer: str = PRODUCER,
) -> UpdateSubmitted:
    """The update.submitted answering ``request``, signed with the device's key."""
    fields = _answering(request, identity, producer)
    update = arrays.to_bytes(delta)
    payload = signing.update_payload(
        task_id=request.task_id,
        round_id=fields["round_id"],
        device_id=identity.device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=result.num_examples,
        update=update,
    )
    loss = _metric(result.metrics, "train_loss")
    accuracy = _metric(result.metrics, "train_accuracy")
    return UpdateSubmitted(
        **fields,
        num_examples=result.num_examples,
        update=update,
        metrics=UpdateMetrics(
            train_loss=loss if loss is not None else 0.0,
            train_accuracy=min(max(accuracy, 0.0), 1.0) if accuracy is not None else 0.0,
            duration_s=min(max(duration_s, 0.0), MAX_TIMEOUT_S),
        ),
        signature=identity.key.sign(payload),
    )


def signed_decline(
    request: TrainRequested,
    identity: Identity,
    reason: DeclineReason,
    *,
    producer: str = PRODUCER,
) -> UpdateDeclined:
    """The update.declined answering ``request``: this device has no update, for ``reason``
    (the round need not wait for it; the reason is counted)."""
    fields = _answering(request, identity, producer)
    return UpdateDeclined(
        **fields,
        reason=reason,
        signature=identity.key.sign(
            signing.decline_payload(
                task_id=request.task_id,
                round_id=fields["round_id"],
                device_id=identity.device_id,
                round_number=request.round_number,
                model_version=request.model_version,
                reason=reason.value,
            )
        ),
    )


def _bounded_number(value: object, what: str) -> float:
    """``value`` as a float, if it is a real number (not a bool), finite and within the wire's
    bound; EvaluationRefused naming ``what`` otherwise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise EvaluationRefused(f"evaluate returned {what} as {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise EvaluationRefused(f"evaluate returned {what} {number}, not finite")
    if abs(number) > MAX_SETTING:
        raise EvaluationRefused(f"evaluate returned {what} {number:g}, beyond ±{MAX_SETTING:g}")
    return number


def evaluation_of(result: object) -> EvaluateResult:
    """``result`` as the wire can carry it (plain float loss and metrics, int count), or
    EvaluationRefused naming what the coordinator would refuse: a loss or metric that is not
    a finite number within ±1e9, an example count outside 1..1e8, more than 16 metrics, a
    metric name outside ``[A-Za-z0-9_.-]{1,64}``, an ``accuracy`` outside [0, 1]."""
    if not isinstance(result, EvaluateResult):
        raise EvaluationRefused(
            f"evaluate returned a {type(result).__name__}, not an EvaluateResult"
        )
    loss = _bounded_number(result.loss, "loss")
    examples = result.num_examples
    if isinstance(examples, bool | np.bool_) or not isinstance(examples, numbers.Integral):
        raise EvaluationRefused("evaluate returned num_examples that is not an integer")
    if not 1 <= int(examples) <= MAX_EXAMPLES_PER_UPDATE:
        raise EvaluationRefused(
            f"evaluate returned num_examples {examples}, not 1..{MAX_EXAMPLES_PER_UPDATE}"
        )
    if not isinstance(result.metrics, Mapping):
        raise EvaluationRefused(
            f"evaluate returned metrics as {type(result.metrics).__name__}, not a mapping"
        )
    if len(result.metrics) > MAX_METRICS:
        raise EvaluationRefused(
            f"evaluate returned {len(result.metrics)} metrics, at most {MAX_METRICS} are sent"
        )
    metrics: dict[str, float] = {}
    for name, value in result.metrics.items():
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise EvaluationRefused(
                f"evaluate returned a metric named {str(name)[:70]!r}: names are 1 to 64 of "
                "A-Z a-z 0-9 _ . -"
            )
        metrics[name] = _bounded_number(value, f"metric {name}")
    accuracy = metrics.get("accuracy")
    if accuracy is not None and not 0.0 <= accuracy <= 1.0:
        raise EvaluationRefused(f"evaluate returned accuracy {accuracy:g}, not in [0, 1]")
    return EvaluateResult(loss=loss, num_examples=int(examples), metrics=metrics)


def signed_evaluation(
    request: EvaluateRequested,
    identity: Identity,
    result: object,
    *,
    producer: str = PRODUCER,
) -> EvaluationSubmitted:
    """The evaluation.submitted answering ``request``, signed with the device's key over
    ``signing.evaluation_payload``; EvaluationRefused when ``result`` (what the user's
    evaluate returned) cannot be sent (:func:`evaluation_of`)."""
    checked = evaluation_of(result)
    metrics = dict(checked.metrics)
    payload = signing.evaluation_payload(
        task_id=request.task_id,
        evaluation_id=request.evaluation_id,
        device_id=identity.device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=checked.num_examples,
        loss=checked.loss,
        metrics=metrics,
    )
    return EvaluationSubmitted(
        producer=producer,
        round_id=request.round_id,
        correlation_id=request.message_id,
        task_id=request.task_id,
        evaluation_id=request.evaluation_id,
        device_id=identity.device_id,
        round_number=request.round_number,
        model_version=request.model_version,
        num_examples=checked.num_examples,
        loss=checked.loss,
        metrics=metrics,
        signature=identity.key.sign(payload),
    )
