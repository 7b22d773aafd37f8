"""One set of value constraints from the edge to the database.

The gateway's input models and every bus message use these, so that a body the gateway accepts
with 202 is one that every service and PostgreSQL accept too: no NUL bytes (PostgreSQL's text
and jsonb refuse them), only finite floats (JSON cannot carry NaN; jsonb refuses it), integers
inside the range of the column they land in, and stated bounds on seeds, counts and sizes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Seeds feed numpy and torch generators; both take any value in [0, 2**32).
SEED_MAX = 2**32 - 1
# The most examples one update may claim. Above any single device's data set, and small enough
# that devices_per_round of them summed stay far inside a bigint.
MAX_EXAMPLES_PER_UPDATE = 100_000_000
MAX_DEVICES_PER_ROUND = 10_000
# A task's pool of allowed devices: 50,000 ids of at most 200 characters stay far inside the
# 16 MiB message limit (the gateway's body limit is tighter still).
MAX_PARTICIPATING_DEVICES = 50_000
MAX_LEARNING_RATE = 10.0
MAX_LOCAL_EPOCHS = 100
# The built-in MLP's hidden units: 4,096 keeps its largest (Fashion-MNIST) model under 13 MB.
MAX_MODEL_HIDDEN = 4096
MAX_BATCH_SIZE = 4096
MAX_MEMORY_MB = 2**40
MAX_ROUNDS = 10_000
MAX_ROUND_RETRIES = 100
# Devices asked per device a round needs, at most (Bonawitz et al. 2019 over-select 1.3x).
MAX_OVER_SELECTION = 4.0
MAX_TIMEOUT_S = 86_400.0
MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 2_000
# A bound on every float a task may set (learning rates, norms, thresholds): finite and
# printable, so that timedelta() and the JSON encoders never overflow.
MAX_SETTING = 1e9

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
# A fleet names a group of devices enrolled with one operator's tokens (and a simulator process).
FLEET_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# A metric a device reports with its evaluation ("accuracy", "auc", "f1.macro").
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_METRICS = 16
# How many devices one enrolment token may enrol.
MAX_TOKEN_DEVICES = 1_000_000

# Typed aliases the schemas share; a field's type says which column range it must fit.
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
PositiveInt32 = Annotated[int, Field(ge=1, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
ExampleCount = Annotated[int, Field(gt=0, le=MAX_EXAMPLES_PER_UPDATE)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL bytes")
    return value


DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
FleetName = Annotated[str, Field(pattern=FLEET_PATTERN)]
MetricName = Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]
# Text types refuse NUL themselves too, so that they hold outside a Constrained model.
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_no_nul)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH), AfterValidator(_no_nul)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PublicKey = Annotated[bytes, Field(min_length=32, max_length=32)]
Signature = Annotated[bytes, Field(min_length=64, max_length=64)]


def check_value(value: Any) -> Any:
    """Refuse NUL bytes in text and integers outside 64 bits, anywhere inside ``value``.

    Called on every field of every constrained model, so that no schema can forget a field.
    Bytes are left alone: binary fields travel as bytea or raw tensor data.
    """
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("integer outside the 64-bit range")
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            check_value(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key)
            check_value(item)
    return value


class Constrained(BaseModel):
    """Base of every bus message and gateway input: finite floats, no NUL, 64-bit integers."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_value(value)
