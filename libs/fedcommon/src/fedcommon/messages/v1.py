"""Every bus message, version 1 (style.md, rules 4-7).

Events are past tense, commands are requests (``*_requested``). Bus models ignore unknown fields
so that an old consumer tolerates a newer producer; a breaking change gets a ``v2`` module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from fedcommon.constraints import (
    INT32_MAX,
    MAX_BATCH_SIZE,
    MAX_DEVICES_PER_ROUND,
    MAX_EXAMPLES_PER_UPDATE,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_MEMORY_MB,
    MAX_METRICS,
    MAX_MODEL_HIDDEN,
    MAX_OVER_SELECTION,
    MAX_PARTICIPATING_DEVICES,
    MAX_ROUND_RETRIES,
    MAX_ROUNDS,
    MAX_SETTING,
    MAX_TIMEOUT_S,
    MAX_TOKEN_DEVICES,
    Constrained,
    DeviceId,
    ExampleCount,
    FleetName,
    Int32,
    Int64,
    MetricName,
    Name,
    PositiveInt32,
    PublicKey,
    Seed,
    Sha256Hex,
    Signature,
    Text,
)

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeviceType(StrEnum):
    MOBILE = "mobile"
    IOT = "iot"
    DESKTOP = "desktop"
    CLOUD = "cloud"


class PrivacyLevel(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    REMOVED = "removed"


class TaskState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class StopReason(StrEnum):
    MAX_ROUNDS = "max_rounds"
    # The task's own processing failed (a setting no longer valid, an internal error); the
    # event log says why. Other tasks go on.
    ERROR = "error"
    TARGET_ACCURACY = "target_accuracy"
    CONVERGED = "converged"
    TOO_FEW_DEVICES = "too_few_devices"
    ROUND_FAILED = "round_failed"
    CANCELLED = "cancelled"
    # The privacy service refused the next round's spend: it would pass the task's epsilon.
    PRIVACY_BUDGET_EXHAUSTED = "privacy_budget_exhausted"


class ModelArchitecture(StrEnum):
    MLP = "mlp"
    CNN = "cnn"


class Partitioning(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"


class _Frozen(Constrained):
    """Immutable, tolerant of newer producers' extra fields, and storable (see constraints)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(_Frozen):
    """Fields every message carries; all set at construction."""

    schema_version: Literal[1] = 1
    message_id: UUID = Field(default_factory=uuid4)
    correlation_id: UUID | None = None
    round_id: UUID | None = None
    # Aware datetimes only: a naive one decodes but breaks every comparison with a real clock.
    sent_at: AwareDatetime = Field(default_factory=utc_now)
    producer: Name


# --- strategies (issue 8) ------------------------------------------------------------------
#
# A task names its strategy as ``{"name": "fedadam", "params": {...}}``. The parameters, their
# defaults and ranges are those ``fedengine_aggregator.core.catalog.make_strategy`` accepts (a
# unit test holds the two together). Unlike bus messages, a strategy refuses unknown fields and
# takes numbers strictly (no booleans, no 2.0 for an int), as the catalog does: a misspelt
# parameter is an error, never a silent default. (So a new parameter must reach every consumer
# before any producer sends it.)


class _StrategyModel(Constrained):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# Server learning rates and τ: positive, below the bound the server optimizers check.
_Rate = Annotated[float, Field(gt=0, lt=MAX_SETTING)]
# Decay rates: β = 1 would never forget, so [0, 1).
_Decay = Annotated[float, Field(ge=0, lt=1)]
_MaxExamples = Annotated[int, Field(ge=1, le=MAX_EXAMPLES_PER_UPDATE)]
# Krum's assumed number of Byzantine devices, at most what the largest round (2f + 3) allows.
_Byzantine = Annotated[int, Field(ge=0, le=(MAX_DEVICES_PER_ROUND - 3) // 2)]


class StrategyParams(_StrategyModel):
    """A strategy's parameters; every one knows the fewest updates a round of it needs."""

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs: a task whose min_devices is lower is refused, and
        a round is opened asking for at least this many."""
        return 1


class FedAvgParams(StrategyParams):
    # The most examples one device may claim in the weighted mean (at most the hard cap).
    max_examples: _MaxExamples = MAX_EXAMPLES_PER_UPDATE


class FedProxParams(FedAvgParams):
    # The proximal term's weight; devices apply it in local training (TrainRequested).
    mu: float = Field(default=0.01, ge=0, le=MAX_SETTING)


class FedAvgMParams(FedAvgParams):
    lr: _Rate = 1.0
    momentum: _Decay = 0.9


class AdaptiveParams(FedAvgParams):
    """Reddi et al. 2021's server optimizers (FedAdam, FedYogi; FedAdagrad's η differs)."""

    eta: _Rate = 0.01
    beta1: _Decay = 0.9
    beta2: _Decay = 0.99
    tau: _Rate = 1e-3


class FedAdagradParams(AdaptiveParams):
    eta: _Rate = 0.1


class MedianParams(StrategyParams):
    pass


class TrimmedMeanParams(StrategyParams):
    # The share trimmed from each side of each coordinate; below one half so some remain.
    beta: float = Field(default=0.2, ge=0, lt=0.5)


class KrumParams(StrategyParams):
    f: _Byzantine = 2

    @property
    def min_updates(self) -> int:
        # Krum's guarantee needs n > 2f + 2 (Blanchard et al. 2017).
        return 2 * self.f + 3


class MultiKrumParams(KrumParams):
    # How many of the best-scored updates are averaged; None: n - f of the round.
    m: int | None = Field(default=None, ge=1, le=MAX_DEVICES_PER_ROUND)

    @property
    def min_updates(self) -> int:
        # Krum's guarantee, and n - f >= m.
        return max(2 * self.f + 3, (self.m or 1) + self.f)


class FedAvgStrategy(_StrategyModel):
    name: Literal["fedavg"] = "fedavg"
    params: FedAvgParams = Field(default_factory=FedAvgParams)


class FedProxStrategy(_StrategyModel):
    name: Literal["fedprox"] = "fedprox"
    params: FedProxParams = Field(default_factory=FedProxParams)


class FedAvgMStrategy(_StrategyModel):
    name: Literal["fedavgm"] = "fedavgm"
    params: FedAvgMParams = Field(default_factory=FedAvgMParams)


class FedAdamStrategy(_StrategyModel):
    name: Literal["fedadam"] = "fedadam"
    params: AdaptiveParams = Field(default_factory=AdaptiveParams)


class FedYogiStrategy(_StrategyModel):
    name: Literal["fedyogi"] = "fedyogi"
    params: AdaptiveParams = Field(default_factory=AdaptiveParams)


class FedAdagradStrategy(_StrategyModel):
    name: Literal["fedadagrad"] = "fedadagrad"
    params: FedAdagradParams = Field(default_factory=FedAdagradParams)


class MedianStrategy(_StrategyModel):
    name: Literal["median"] = "median"
    params: MedianParams = Field(default_factory=MedianParams)


class TrimmedMeanStrategy(_StrategyModel):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    params: TrimmedMeanParams = Field(default_factory=TrimmedMeanParams)


class KrumStrategy(_StrategyModel):
    name: Literal["krum"] = "krum"
    params: KrumParams = Field(default_factory=KrumParams)


class MultiKrumStrategy(_StrategyModel):
    name: Literal["multi_krum"] = "multi_krum"
    params: MultiKrumParams = Field(default_factory=MultiKrumParams)


StrategySpec = Annotated[
    FedAvgStrategy
    | FedProxStrategy
    | FedAvgMStrategy
    | FedAdamStrategy
    | FedYogiStrategy
    | FedAdagradStrategy
    | MedianStrategy
    | TrimmedMeanStrategy
    | KrumStrategy
    | MultiKrumStrategy,
    Field(discriminator="name"),
]

STRATEGY_TYPES: tuple[type[_StrategyModel], ...] = (
    FedAvgStrategy,
    FedProxStrategy,
    FedAvgMStrategy,
    FedAdamStrategy,
    FedYogiStrategy,
    FedAdagradStrategy,
    MedianStrategy,
    TrimmedMeanStrategy,
    KrumStrategy,
    MultiKrumStrategy,
)


# --- differential privacy (issue 9) --------------------------------------------------------
#
# DP is off unless a task has a privacy section; with one, every round's release is approved
# (and charged) by the privacy service first, and enforcement cannot be turned off.

# The largest budget a task may ask for: above it no guarantee means anything (the privacy
# core refuses to account further than this either).
MAX_DP_EPSILON = 100.0
# δ must be far below 1/n for n people; anything above 1e-2 protects nobody.
MAX_DP_DELTA = 1e-2
# The smallest δ. Measured with dp-accounting 0.6.0 (issue 15): the PLD accountant answers
# ε = inf at δ ≤ 1e-15 (sometimes 1e-16; z from 2 to 1e6, q from 0.01 to 1, T from 1 to 100)
# where it is finite at δ = 1e-14: below its tail truncation it cannot evaluate δ, and would
# refuse a well-noised task as "no meaningful guarantee". RDP evaluates down to δ = 5e-324.
# One bound for both accountants: 1e-14 is already far below 1/n for any population.
MIN_DP_DELTA = 1e-14
MAX_NOISE_MULTIPLIER = 1e6
# The smallest noise multiplier a task may ask for. Measured with dp-accounting 0.6.0 (the
# privacy service's accountant, fedprivacy.accounting; issue 15):
# - z ≤ 1.57e-162 (z² underflows) makes RDP raise ZeroDivisionError at every q < 1 (0.999,
#   0.5, 0.01), and with it PLD, which is only run after the RDP check: the spend request was
#   dead-lettered and its task waited for ever;
# - below z = 0.0717 (q = 1e-6), 0.0780 (q = 2e-5), 0.0915 (q = 0.01), 0.1005 (q = 1), RDP ε
#   at δ = 1e-6 already exceeds MAX_DP_EPSILON after one round (more rounds only raise it), so
#   no budget could approve a single round: ε is "inf" and the task would end exhausted.
# So every z below 0.05 is refused here with a 422, far above the crash and below any z that
# could ever spend within a budget (for sample rates down to 1e-6). Upward, z = 1e6 with
# q in {1, 0.01, 1e-6}, T in {1, 10,000} evaluates in under a second with RDP and PLD (ε ≤ 1e-4).
MIN_NOISE_MULTIPLIER = 0.05
CALIBRATE = "calibrate"
# The strategies whose aggregate is a (weighted) sum: only for these does clipping each update
# to C bound one device's influence on the result by C, as the accountant assumes.
DP_STRATEGIES = frozenset({"fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"})


# The clipping norm adaptive clipping may reach, either way: a bound that keeps C a finite,
# storable number whatever the noised estimates say.
MIN_ADAPTIVE_CLIP_NORM = 1e-6


class AdaptiveClipping(_StrategyModel):
    """Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
    Clipping", https://arxiv.org/abs/1905.03871): C follows the ``target_quantile`` of the
    update norms, C ← C·exp(−η·(b̃ − γ)), where b̃ is the noised fraction of a round's updates
    no longer than C. The count is noised with std ``count_noise_std`` σ_b (in devices; default
    max(expected participants / 20, z), the paper's choice, raised so that the updates' noise
    grows by at most 15.5 %) and the updates' noise multiplier is raised to
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so that the round, both releases together, costs exactly what
    one Gaussian release at z costs: the privacy service charges z.
    """

    target_quantile: float = Field(default=0.5, gt=0, lt=1)
    learning_rate: float = Field(default=0.2, gt=0, le=10)
    count_noise_std: float | None = Field(default=None, gt=0, le=MAX_PARTICIPATING_DEVICES)


class PrivacySpec(_StrategyModel):
    """A task's central DP: its (ε, δ) budget and the DP-FedAvg settings that spend it.

    ``noise_multiplier`` z is the noise's std in units of ``clip_norm`` C; "calibrate" lets
    the privacy service choose the smallest z whose ε over the task's rounds fits the budget.
    With ``adaptive_clipping``, ``clip_norm`` is the first round's C. Strict like a strategy:
    a misspelt field is an error, never a silent "no privacy".
    """

    epsilon: float = Field(gt=0, le=MAX_DP_EPSILON)
    delta: float = Field(default=1e-5, ge=MIN_DP_DELTA, le=MAX_DP_DELTA)
    clip_norm: float = Field(default=1.0, ge=MIN_ADAPTIVE_CLIP_NORM, le=MAX_SETTING)
    noise_multiplier: float | Literal["calibrate"] = "calibrate"
    accountant: Literal["rdp", "pld"] = "rdp"
    adaptive_clipping: AdaptiveClipping | None = None

    @field_validator("noise_multiplier")
    @classmethod
    def _check_noise_multiplier(cls, z: float | str) -> float | str:
        if not isinstance(z, str) and not MIN_NOISE_MULTIPLIER <= z <= MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"noise_multiplier must be in [{MIN_NOISE_MULTIPLIER:g}, "
                f"{MAX_NOISE_MULTIPLIER:g}] (below {MIN_NOISE_MULTIPLIER:g} no round has a "
                "meaningful guarantee, and the accountant cannot evaluate the smallest values)"
            )
        return z

    @model_validator(mode="after")
    def _check_noise(self) -> PrivacySpec:
        z = self.noise_multiplier
        count_std = self.adaptive_clipping and self.adaptive_clipping.count_noise_std
        if not isinstance(z, str) and count_std and 2 * count_std <= z:
            raise ValueError(
                f"adaptive_clipping.count_noise_std must be above noise_multiplier / 2 "
                f"({z / 2:g}): the count's noise shares z with the updates"
            )
        return self


class RoundPrivacy(_Frozen):
    """What the aggregator needs to release a DP round: the approval it releases under and
    the noise that approval paid for."""

    approval_id: UUID
    clip_norm: float = Field(gt=0, le=MAX_SETTING)
    noise_multiplier: float = Field(gt=0, le=MAX_NOISE_MULTIPLIER)
    # q times the devices it was sampled from: the fixed denominator of DP-FedAvg, so that
    # how many devices actually answered never shows in the result.
    expected_participants: float = Field(gt=0, le=MAX_PARTICIPATING_DEVICES)
    # Adaptive clipping (AdaptiveClipping): the updates' noise multiplier z_Δ and the count's
    # noise std σ_b the approval split z into; both set, or neither.
    update_noise_multiplier: float | None = Field(default=None, gt=0, le=MAX_NOISE_MULTIPLIER)
    count_noise_std: float | None = Field(default=None, gt=0, le=MAX_PARTICIPATING_DEVICES)

    @model_validator(mode="after")
    def _check_adaptive(self) -> RoundPrivacy:
        if (self.update_noise_multiplier is None) != (self.count_noise_std is None):
            raise ValueError("update_noise_multiplier and count_noise_std go together")
        return self


# Steps of DP-SGD one round may ask of a device (steps_per_round of the largest local_epochs).
MAX_LOCAL_DP_STEPS = 100_000


class LocalDp(_Frozen):
    """A device's DP-SGD settings for one round of one task, chosen by the coordinator
    (fedcommon.local_dp): Poisson rate q per example, ``steps`` steps, each example's gradient
    clipped to ``max_grad_norm`` C, noise of std z·C on each step's sum. The privacy service
    accounts exactly these numbers for the device."""

    level: PrivacyLevel
    noise_multiplier: float = Field(gt=0, le=MAX_NOISE_MULTIPLIER)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1, le=MAX_LOCAL_DP_STEPS)
    max_grad_norm: float = Field(gt=0, le=MAX_SETTING)
    # The per-task budget of the level (what the noise was calibrated to) at this δ.
    epsilon_budget: float = Field(gt=0, le=MAX_DP_EPSILON)
    delta: float = Field(gt=0, le=MAX_DP_DELTA)

    @model_validator(mode="after")
    def _check_level(self) -> LocalDp:
        if self.level == PrivacyLevel.NONE:
            raise ValueError("a device of privacy level none does not train with local DP")
        return self


class LocalDpAssignment(_Frozen):
    device_id: DeviceId
    settings: LocalDp


# --- secure aggregation (issue 15) ---------------------------------------------------------
#
# SecAgg+ (fedprivacy.secagg): devices mask fixed-point updates so that the aggregator learns
# only their sum. The protocol's own messages travel as its canonical bytes (``payload``),
# never pickled; these envelopes route them and carry the device's or the service's signature.

MAX_SECAGG_BITS = 32
SECAGG_MIN_PARTICIPANTS = 3
SecAggStage = Literal[1, 2, 3, 4]  # advertise keys, share keys, masked input, unmasking


class SecureAggregationSpec(_StrategyModel):
    """A task's secure aggregation. Strict like a strategy: a misspelt field is an error.

    ``clip_norm`` C bounds each update in L2 before it is quantised to ``bits`` bits per
    coordinate (a DP task clips to its privacy ``clip_norm`` instead); ``weight_cap`` caps the
    example count a device weights its update by. ``neighbours`` is the degree k of the
    SecAgg+ graph (None: 3·log2 n, even) and ``threshold`` the shares of k that rebuild a
    device's secrets (None: a majority, k/2 + 1; raised to a majority, or lowered to k, in
    a round whose graph needs it). ``stage_timeout_s`` bounds each protocol stage, counted
    from that stage's start.
    """

    bits: int = Field(default=16, ge=2, le=MAX_SECAGG_BITS)
    clip_norm: float = Field(default=10.0, gt=0, le=MAX_SETTING)
    weight_cap: int = Field(default=1000, ge=1, le=2**MAX_SECAGG_BITS - 1)
    neighbours: int | None = Field(default=None, ge=2, le=MAX_DEVICES_PER_ROUND)
    threshold: int | None = Field(default=None, ge=2, le=MAX_DEVICES_PER_ROUND)
    stage_timeout_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)

    @model_validator(mode="after")
    def _check(self) -> SecureAggregationSpec:
        if self.weight_cap > (1 << self.bits) - 1:
            raise ValueError(
                f"weight_cap {self.weight_cap} does not fit in {self.bits} bits "
                f"(at most {(1 << self.bits) - 1})"
            )
        if self.neighbours is not None and self.neighbours % 2:
            raise ValueError(f"neighbours must be even (a Harary graph), got {self.neighbours}")
        if (
            self.neighbours is not None
            and self.threshold is not None
            and not self.neighbours // 2 < self.threshold <= self.neighbours
        ):
            raise ValueError(
                f"threshold must be a majority of the {self.neighbours} neighbours: "
                f"{self.neighbours // 2 + 1}..{self.neighbours}"
            )
        return self


# --- shared value objects ------------------------------------------------------------------

# The data sets a task may train on (fedcommon.datasets loads them): scikit-learn's digits, and
# Fashion-MNIST from the Debian package dataset-fashion-mnist that ``make install`` fetches.
DatasetName = Literal["digits", "fashion_mnist"]


class DeviceCapabilities(_Frozen):
    compute_gflops: float = Field(default=10.0, gt=0, le=MAX_SETTING)
    memory_mb: int = Field(default=2048, gt=0, le=MAX_MEMORY_MB)
    bandwidth_mbps: float = Field(default=20.0, gt=0, le=MAX_SETTING)
    has_battery: bool = True
    battery_pct: float = Field(default=100.0, ge=0, le=100)


class InitialModel(_Frozen):
    """A model uploaded through the gateway (POST /api/federated/models) that a task starts
    from: its id and the sha256 of its safetensors bytes, so that a task names exactly the
    file its creator saw."""

    model_id: UUID
    sha256: Sha256Hex


class FederatedEvaluationSpec(_StrategyModel):
    """Devices evaluate the global model on their own held-out data.

    After every ``every_rounds``-th round (and after the last), the coordinator asks a
    ``fraction`` of the online devices (at least ``min_devices`` of them, else the evaluation
    is skipped) to evaluate the new version; the example-weighted mean of their loss and
    metrics becomes the round's federated metrics, and the task's stopping rules use them. The
    answers of ``timeout_s`` count; the rest are late.
    """

    every_rounds: int = Field(default=1, ge=1, le=MAX_ROUNDS)
    fraction: float = Field(default=1.0, gt=0, le=1)
    min_devices: int = Field(default=1, ge=1, le=MAX_DEVICES_PER_ROUND)
    timeout_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)


class TaskSpec(_Frozen):
    """What a federated task trains, on what, and when it stops.

    The model is a built-in (``model_architecture``, whose shapes follow from ``dataset``) or
    an uploaded ``initial_model`` (then neither is set: the services never run a user's model,
    so a task on one has no central data and is judged by federated evaluation alone).
    """

    task_name: Name
    model_architecture: ModelArchitecture | None = ModelArchitecture.MLP
    # The built-in data set: the simulator's devices train on its partitions and the
    # coordinator evaluates centrally on its test split. None: devices bring their own data.
    dataset: DatasetName | None = "digits"
    initial_model: InitialModel | None = None
    # The built-in MLP's hidden units (None: models.DEFAULT_HIDDEN, 64).
    model_hidden: int | None = Field(default=None, ge=1, le=MAX_MODEL_HIDDEN)
    # Standardise the built-in data set's features by its training split's statistics
    # (datasets.standardized) on the devices and in central evaluation; off: as loaded.
    standardize: bool = False
    # None: no federated evaluation (older specs have none); central evaluation only.
    federated_evaluation: FederatedEvaluationSpec | None = None
    rounds: int = Field(default=10, ge=1, le=MAX_ROUNDS)
    devices_per_round: int = Field(default=10, ge=1, le=MAX_DEVICES_PER_ROUND)
    min_devices: int = Field(default=1, ge=1, le=MAX_DEVICES_PER_ROUND)
    # Ask this many times devices_per_round devices, and close the round as soon as
    # devices_per_round updates are accepted (stragglers and failures then cost no wait).
    over_selection: float = Field(default=1.0, ge=1.0, le=MAX_OVER_SELECTION)
    participating_devices: list[DeviceId] | None = Field(
        default=None, max_length=MAX_PARTICIPATING_DEVICES
    )
    learning_rate: float = Field(default=0.3, gt=0, le=MAX_LEARNING_RATE)
    local_epochs: int = Field(default=5, ge=1, le=MAX_LOCAL_EPOCHS)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH_SIZE)
    seed: Seed = 0
    round_timeout_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    patience: int | None = Field(default=None, ge=1, le=MAX_ROUNDS)
    min_improvement: float = Field(default=1e-3, ge=0, le=1)
    max_update_norm: float = Field(default=100.0, gt=0, le=MAX_SETTING)
    max_round_retries: int = Field(default=2, ge=0, le=MAX_ROUND_RETRIES)
    device_wait_s: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_S)
    # How long a task waits for devices that are online but busy in other tasks' rounds, or
    # that it yields to tasks queued before it (first come, first served).
    queue_wait_s: float = Field(default=3600.0, gt=0, le=MAX_TIMEOUT_S)
    # Older specs have none: FedAvg, as before strategies could be chosen.
    strategy: StrategySpec = Field(default_factory=FedAvgStrategy)
    # None: no differential privacy (older specs have none).
    privacy: PrivacySpec | None = None
    # None: updates travel in the clear to the aggregator (older specs have none).
    secure_aggregation: SecureAggregationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _uploaded_model_defaults(cls, data: object) -> object:
        """A spec naming an uploaded model has no built-in model or data set unless it says
        so (and then it is refused below), rather than the built-ins' defaults."""
        if isinstance(data, dict) and data.get("initial_model") is not None:
            data = {"model_architecture": None, "dataset": None, **data}
        return data

    @model_validator(mode="after")
    def _check_model(self) -> TaskSpec:
        if self.initial_model is not None:
            if self.model_architecture is not None or self.dataset is not None:
                raise ValueError(
                    "a task on an uploaded initial_model names no model_architecture and no "
                    "dataset: the services never run a user's model, so it has no central data "
                    "(judge it with federated_evaluation)"
                )
        elif self.model_architecture is None or self.dataset is None:
            raise ValueError(
                "a task needs a model: a built-in model_architecture with its dataset, or an "
                "uploaded initial_model"
            )
        if self.model_hidden is not None and self.model_architecture != ModelArchitecture.MLP:
            raise ValueError("model_hidden sets the hidden units of the built-in mlp only")
        if self.standardize and self.dataset is None:
            raise ValueError("standardize applies to a built-in dataset, and this task has none")
        unjudged = self.dataset is None and self.federated_evaluation is None
        if unjudged and (self.target_accuracy is not None or self.patience is not None):
            raise ValueError(
                "target_accuracy and patience need an accuracy: this task has no central "
                "data, so give it federated_evaluation"
            )
        return self

    @property
    def evaluated_by_devices(self) -> bool:
        """Whether the task's metrics (and its stopping rules) are federated evaluation's."""
        return self.federated_evaluation is not None

    @model_validator(mode="after")
    def _check_devices(self) -> TaskSpec:
        if self.min_devices > self.devices_per_round:
            raise ValueError("min_devices must not exceed devices_per_round")
        needed = self.strategy.params.min_updates
        if self.min_devices < needed:
            # A round with fewer updates could not be aggregated by this strategy at all.
            raise ValueError(
                f"min_devices {self.min_devices} is below the {needed} updates a round of "
                f"strategy {self.strategy.name} needs"
            )
        # Local SGD on the proximal term alone diverges once mu * learning_rate >= 2: every
        # device would send nothing and every round be lost, with no reason given.
        if (
            isinstance(self.strategy, FedProxStrategy)
            and self.strategy.params.mu * self.learning_rate >= 2
        ):
            raise ValueError(
                f"fedprox mu {self.strategy.params.mu:g} with learning_rate "
                f"{self.learning_rate:g}: mu * learning_rate must stay below 2, or local "
                "training diverges"
            )
        if self.over_selection > 1 and (
            self.privacy is not None or self.secure_aggregation is not None
        ):
            raise ValueError(
                "over_selection applies to rounds without differential privacy or secure "
                "aggregation (a DP round draws its devices by Poisson sampling; a secure round "
                "needs every stage of the devices it asked)"
            )
        if self.participating_devices is not None and not self.participating_devices:
            raise ValueError("participating_devices, when given, must not be empty")
        if self.privacy is not None and self.strategy.name not in DP_STRATEGIES:
            raise ValueError(
                f"differential privacy cannot be used with strategy {self.strategy.name}: it "
                "needs a strategy that sums clipped updates (one of "
                f"{', '.join(sorted(DP_STRATEGIES))}), so that one device moves the result by "
                "at most the clip norm"
            )
        if self.secure_aggregation is not None:
            if self.strategy.name not in DP_STRATEGIES:
                raise ValueError(
                    f"secure aggregation cannot be used with strategy {self.strategy.name}: "
                    "the aggregator sees only the sum, and this strategy needs every update "
                    f"(use one of {', '.join(sorted(DP_STRATEGIES))})"
                )
            if self.min_devices < SECAGG_MIN_PARTICIPANTS:
                raise ValueError(
                    f"secure aggregation needs min_devices >= {SECAGG_MIN_PARTICIPANTS}: the "
                    "sum of two updates tells each device the other's"
                )
        return self


class Participant(_Frozen):
    device_id: DeviceId
    public_key: PublicKey


class UpdateMetrics(_Frozen):
    # Bounded so that an example-weighted mean over a round stays finite.
    train_loss: float = Field(ge=-MAX_SETTING, le=MAX_SETTING)
    train_accuracy: float = Field(ge=0, le=1)
    duration_s: float = Field(ge=0, le=MAX_TIMEOUT_S)


class RoundSecAgg(_Frozen):
    """A round's SecAgg+ parameters, fixed by the coordinator when it opens the try.

    The graph seed is drawn once per try and stored with the round.opened message, so an
    aggregator or device that reads it again builds the same graph. ``clip_bit``: adaptive
    clipping's bit travels as one more masked coordinate.
    """

    bits: int = Field(ge=2, le=MAX_SECAGG_BITS)
    clip_norm: float = Field(gt=0, le=MAX_SETTING)
    weight_cap: int = Field(ge=1, le=2**MAX_SECAGG_BITS - 1)
    degree: int = Field(ge=1, le=MAX_DEVICES_PER_ROUND)
    threshold: int = Field(ge=1, le=MAX_DEVICES_PER_ROUND)
    graph_seed: bytes = Field(min_length=32, max_length=32)
    stage_timeout_s: float = Field(gt=0, le=MAX_TIMEOUT_S)
    clip_bit: bool = False


class SecAggPeer(_Frozen):
    """A neighbour in the round's graph: its index, id and identity key, so that the device
    checks each neighbour's key advertisement against its owner's signature."""

    index: Int32
    device_id: DeviceId
    public_key: PublicKey


class SecAggAssignment(_Frozen):
    """What one device needs to take part in a secure round: the round's parameters, how
    many take part, its own index among them and its neighbours."""

    round: RoundSecAgg
    num_clients: int = Field(ge=2, le=MAX_DEVICES_PER_ROUND)
    index: Int32
    dim: int = Field(ge=1, le=INT32_MAX)
    neighbours: list[SecAggPeer] = Field(max_length=MAX_DEVICES_PER_ROUND)


# --- fed.devices ---------------------------------------------------------------------------


class DeviceEnrolled(Envelope):
    type: Literal["device.enrolled"] = "device.enrolled"
    device_id: DeviceId
    device_name: Name
    device_type: DeviceType
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    capabilities: DeviceCapabilities = Field(default_factory=DeviceCapabilities)
    public_key: PublicKey | None = None
    fleet: FleetName | None = None
    issued_by: Name | None = None
    # The old key's signature handing the device to ``public_key`` (signing.key_change_payload):
    # without it, only an operator (through the gateway) can change a device's key.
    key_change_signature: Signature | None = None
    # The operator-issued enrolment token this device enrols with (fedcommon.enrolment_tokens),
    # and that token's signature over this enrolment (signing.enrolment_payload). A device that
    # enrols itself needs both; the gateway, vouching for an operator, does not.
    enrolment_token_id: UUID | None = None
    token_signature: Signature | None = None
    # The enrolled key's own signature over this enrolment (signing.enrolment_payload): proof
    # that whoever enrols the device holds its key. Only the gateway, vouching as a service for
    # an operator, may enrol without it.
    signature: Signature | None = None


class NetworkKind(StrEnum):
    """The kind of link a device reports it is on (where its platform tells)."""

    WIFI = "wifi"
    CELLULAR = "cellular"
    ETHERNET = "ethernet"
    OTHER = "other"


class HeartbeatSent(Envelope):
    type: Literal["device.heartbeat_sent"] = "device.heartbeat_sent"
    device_id: DeviceId
    sequence: Int64
    # What the device's platform tells, where it does (None: not told). Not covered by the
    # signature (signing.heartbeat_payload): hints for selection, never trusted for security.
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    charging: bool | None = None
    network: NetworkKind | None = None
    signature: Signature


class DeviceRestored(Envelope):
    """An operator brings a removed device back (it comes online with its next heartbeat)."""

    type: Literal["device.restored"] = "device.restored"
    device_id: DeviceId
    issued_by: Name | None = None


class EnrolmentTokenIssued(Envelope):
    """An operator issued an enrolment token for a fleet: the registry keeps its public half."""

    type: Literal["enrolment_token.issued"] = "enrolment_token.issued"
    token_id: UUID
    fleet: FleetName
    public_key: PublicKey
    expires_at: AwareDatetime
    max_devices: int = Field(ge=1, le=MAX_TOKEN_DEVICES)
    issued_by: Name | None = None


class EnrolmentTokenRevoked(Envelope):
    """An operator revoked a token: no device enrols with it any more (enrolled ones stay)."""

    type: Literal["enrolment_token.revoked"] = "enrolment_token.revoked"
    token_id: UUID
    issued_by: Name | None = None


class DeviceRemoved(Envelope):
    type: Literal["device.removed"] = "device.removed"
    device_id: DeviceId
    issued_by: Name | None = None


# --- fed.tasks (commands) ------------------------------------------------------------------


class TaskCreateRequested(Envelope):
    type: Literal["task.create_requested"] = "task.create_requested"
    task_id: UUID
    spec: TaskSpec
    issued_by: Name


class ModelUploaded(Envelope):
    """An initial model uploaded through the gateway (already checked there: a safetensors
    file of finite F32 tensors, ``fedcommon.model_files``), for the coordinator to keep."""

    type: Literal["model.uploaded"] = "model.uploaded"
    model_id: UUID
    sha256: Sha256Hex
    data: bytes
    name: Name
    uploaded_by: Name


class TaskStartRequested(Envelope):
    type: Literal["task.start_requested"] = "task.start_requested"
    task_id: UUID
    issued_by: Name


class TaskPauseRequested(Envelope):
    type: Literal["task.pause_requested"] = "task.pause_requested"
    task_id: UUID
    issued_by: Name


class TaskResumeRequested(Envelope):
    type: Literal["task.resume_requested"] = "task.resume_requested"
    task_id: UUID
    issued_by: Name


class TaskCancelRequested(Envelope):
    type: Literal["task.cancel_requested"] = "task.cancel_requested"
    task_id: UUID
    issued_by: Name


class CleanupRequested(Envelope):
    type: Literal["tasks.cleanup_requested"] = "tasks.cleanup_requested"
    retention_s: float = Field(ge=0, le=MAX_SETTING)
    issued_by: Name


# --- fed.device.commands and fed.models ----------------------------------------------------


class TrainRequested(Envelope):
    type: Literal["train.requested"] = "train.requested"
    task_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    model_version: Int32
    model_sha256: Sha256Hex
    deadline: AwareDatetime
    # The task's built-in model and data set; None for a task on an uploaded model (a device
    # running its own code may ignore both).
    model_architecture: ModelArchitecture | None
    dataset: DatasetName | None
    # The task's model_hidden and standardize (older requests: the defaults).
    model_hidden: int | None = Field(default=None, ge=1, le=MAX_MODEL_HIDDEN)
    standardize: bool = False
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE)
    local_epochs: int = Field(ge=1, le=MAX_LOCAL_EPOCHS)
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    seed: Seed
    # FedProx's proximal term weight μ for local training; 0 (none) for every other strategy.
    proximal_mu: float = Field(default=0.0, ge=0, le=MAX_SETTING)
    # Set for a device whose privacy level asks for local DP: train with DP-SGD at exactly
    # these settings (the task's batch_size and local_epochs are then replaced by them).
    local_dp: LocalDp | None = None
    # Set for a round with secure aggregation: the device masks its update (SecAgg+) and
    # sends it over fed.secagg, in four stages, instead of update.submitted.
    secure_aggregation: SecAggAssignment | None = None


class EvaluateRequested(Envelope):
    """Evaluate global model version ``model_version`` on the device's own held-out data and
    answer with ``evaluation.submitted`` (fed.evaluations) by ``deadline``."""

    type: Literal["evaluate.requested"] = "evaluate.requested"
    task_id: UUID
    evaluation_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    model_version: Int32
    model_sha256: Sha256Hex
    deadline: AwareDatetime
    model_architecture: ModelArchitecture | None
    dataset: DatasetName | None
    model_hidden: int | None = Field(default=None, ge=1, le=MAX_MODEL_HIDDEN)
    standardize: bool = False
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    seed: Seed


class ModelPublished(Envelope):
    type: Literal["model.published"] = "model.published"
    task_id: UUID
    version: Int32
    sha256: Sha256Hex
    size_bytes: Int64


# --- fed.updates ---------------------------------------------------------------------------


class RoundOpened(Envelope):
    type: Literal["round.opened"] = "round.opened"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    model_version: Int32
    # Empty only for a DP round whose Poisson draw came out empty: it releases pure noise.
    participants: list[Participant] = Field(max_length=MAX_DEVICES_PER_ROUND)
    min_updates: int = Field(ge=1, le=MAX_DEVICES_PER_ROUND)
    # An over-selected round closes as soon as this many updates are accepted (None: it waits
    # for every participant, or its deadline).
    target_updates: int | None = Field(default=None, ge=1, le=MAX_DEVICES_PER_ROUND)
    deadline: AwareDatetime
    param_shapes: list[list[Int32]]
    max_update_norm: float = Field(gt=0, le=MAX_SETTING)
    # The task's strategy, so the aggregator picks its rule (older rounds: FedAvg).
    strategy: StrategySpec = Field(default_factory=FedAvgStrategy)
    # Set for a round of a DP task: the aggregator releases only a clipped, noised sum.
    privacy: RoundPrivacy | None = None
    # Set for a round with secure aggregation: its updates come masked, over fed.secagg.
    secure_aggregation: RoundSecAgg | None = None

    @model_validator(mode="after")
    def _check_participants(self) -> RoundOpened:
        if not self.participants and self.privacy is None:
            raise ValueError("a round without differential privacy needs participants")
        return self


class UpdateSubmitted(Envelope):
    type: Literal["update.submitted"] = "update.submitted"
    task_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    model_version: Int32
    num_examples: ExampleCount
    update: bytes
    metrics: UpdateMetrics
    signature: Signature


class DeclineReason(StrEnum):
    """Why a device answers a train request without an update (its own code's verdict)."""

    FIT_FAILED = "fit_failed"  # the user's training code raised
    FIT_TIMEOUT = "fit_timeout"  # it did not return in time
    WRONG_TENSORS = "wrong_tensors"  # it returned other tensors than the model's
    NO_MODEL = "no_model"  # the model could not be fetched or did not match its sha256
    # Not available now: busy, off its charger, or low on battery (a simulated device's
    # profile says when; a real device's own policy may say it too).
    UNAVAILABLE = "unavailable"


class UpdateDeclined(Envelope):
    """A selected device's signed answer that it has no update for this round, and why: the
    round need not wait for it until the deadline, and its reason is counted (as
    ``declined``). Signed over ``signing.decline_payload``."""

    type: Literal["update.declined"] = "update.declined"
    task_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    model_version: Int32
    reason: DeclineReason
    signature: Signature


# A metric's value: bounded, so that an example-weighted mean over a fleet stays finite.
MetricValue = Annotated[float, Field(ge=-MAX_SETTING, le=MAX_SETTING)]


class EvaluationSubmitted(Envelope):
    """A device's evaluation of a global model version on its own held-out data, signed over
    ``signing.evaluation_payload``. ``metrics`` are the user's (``accuracy`` drives the
    task's stopping rules); each is weighted by ``num_examples`` across the devices."""

    type: Literal["evaluation.submitted"] = "evaluation.submitted"
    task_id: UUID
    evaluation_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    model_version: Int32
    num_examples: ExampleCount
    loss: MetricValue
    metrics: dict[MetricName, MetricValue] = Field(default_factory=dict, max_length=MAX_METRICS)
    signature: Signature

    @field_validator("metrics")
    @classmethod
    def _accuracy_is_a_share(cls, metrics: dict[str, float]) -> dict[str, float]:
        accuracy = metrics.get("accuracy")
        if accuracy is not None and not 0 <= accuracy <= 1:
            raise ValueError("metrics.accuracy must lie in [0, 1]")
        return metrics


class SecAggSubmitted(Envelope):
    """A device's message of one SecAgg+ stage: the protocol's canonical bytes, signed with
    the device's identity key over ``signing.secagg_payload`` (which binds task, round_id,
    device and stage, so that a replay into another try fails)."""

    type: Literal["secagg.submitted"] = "secagg.submitted"
    task_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    stage: SecAggStage
    payload: bytes
    signature: Signature


class SecAggDelivered(Envelope):
    """The aggregator's message to one device for a SecAgg+ stage (neighbours' keys, the
    shares addressed to it, the unmasking request), on the device's command topic, signed
    by the aggregator's service key. Its id derives from (task, round, attempt, stage,
    recipient), so a restarted aggregator re-sends the same message, never another."""

    type: Literal["secagg.delivered"] = "secagg.delivered"
    task_id: UUID
    device_id: DeviceId
    round_number: PositiveInt32
    stage: SecAggStage
    payload: bytes


# --- fed.rounds ----------------------------------------------------------------------------


class RoundAggregated(Envelope):
    type: Literal["round.aggregated"] = "round.aggregated"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    model_version: Int32
    delta: bytes
    participants: list[DeviceId]
    dropped: list[DeviceId]
    rejected: dict[Name, Int64]
    num_examples: Int64
    train_loss: float = Field(ge=-MAX_SETTING, le=MAX_SETTING)
    bytes_up: Int64
    duration_s: float = Field(ge=0, le=MAX_TIMEOUT_S)
    # The approval a DP round's noised result was released under (None: not a DP round). A DP
    # result carries no participants, counts or losses: only the noised delta.
    privacy_approval_id: UUID | None = None
    # Adaptive clipping: the noised fraction of the round's updates no longer than its C (b̃,
    # may fall outside [0, 1] by its noise), from which the coordinator sets the next C.
    privacy_unclipped_fraction: float | None = Field(default=None, ge=-MAX_SETTING, le=MAX_SETTING)


class RoundFailed(Envelope):
    type: Literal["round.failed"] = "round.failed"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    reason: Text
    received: Int32
    rejected: dict[Name, Int64]


# --- fed.privacy ---------------------------------------------------------------------------


class PrivacySpendRequested(Envelope):
    """The coordinator asks before a DP round's try opens; charged once per (task, round,
    attempt) if approved. Carries the task's privacy section, so the service needs no other
    source, and the sampling rate the try's devices were drawn with."""

    type: Literal["privacy.spend_requested"] = "privacy.spend_requested"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    budget: PrivacySpec
    # The task's planned rounds: what "calibrate" spreads the budget over.
    planned_rounds: int = Field(ge=1, le=MAX_ROUNDS)
    sample_rate: float = Field(gt=0, le=1)
    # Who the task belongs to (its creator), for the audit log.
    on_behalf_of: Name
    # Adaptive clipping: this round's C (None: the budget's clip_norm) and q times the
    # population, from which the count's default noise is chosen.
    clip_norm: float | None = Field(default=None, ge=MIN_ADAPTIVE_CLIP_NORM, le=MAX_SETTING)
    expected_participants: float | None = Field(default=None, gt=0, le=MAX_PARTICIPATING_DEVICES)


class LocalDpAssigned(Envelope):
    """The coordinator asked these devices to train a round's try with DP-SGD at these
    settings: the privacy service adds one release per device to its device ledger (charged
    when asked, whether or not the device answers)."""

    type: Literal["privacy.local_dp_assigned"] = "privacy.local_dp_assigned"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    # The task's planned rounds: what each level's per-task ε was spread over.
    planned_rounds: int = Field(ge=1, le=MAX_ROUNDS)
    assignments: list[LocalDpAssignment] = Field(min_length=1, max_length=MAX_DEVICES_PER_ROUND)


class PrivacySpendApproved(Envelope):
    type: Literal["privacy.spend_approved"] = "privacy.spend_approved"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    approval_id: UUID
    noise_multiplier: float = Field(gt=0, le=MAX_NOISE_MULTIPLIER)
    sample_rate: float = Field(gt=0, le=1)
    clip_norm: float = Field(gt=0, le=MAX_SETTING)
    # The task's ε after this release (at its δ, by its accountant).
    epsilon_spent: float = Field(ge=0, le=MAX_DP_EPSILON)
    epsilon_budget: float = Field(gt=0, le=MAX_DP_EPSILON)
    delta: float = Field(gt=0, le=MAX_DP_DELTA)
    accountant: Literal["rdp", "pld"]
    # Adaptive clipping: how z (what was charged) is split between the updates' sum and the
    # unclipped count (RoundPrivacy); both set, or neither.
    update_noise_multiplier: float | None = Field(default=None, gt=0, le=MAX_NOISE_MULTIPLIER)
    count_noise_std: float | None = Field(default=None, gt=0, le=MAX_PARTICIPATING_DEVICES)


class PrivacySpendRefused(Envelope):
    type: Literal["privacy.spend_refused"] = "privacy.spend_refused"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    # budget_exhausted: approving would pass the budget; invalid: the request cannot be
    # accounted (a budget that changed, a calibration no noise can meet).
    reason: Literal["budget_exhausted", "invalid"]
    detail: Text
    epsilon_spent: float = Field(ge=0, le=MAX_DP_EPSILON)
    epsilon_budget: float = Field(gt=0, le=MAX_DP_EPSILON)


# --- fed.events ----------------------------------------------------------------------------


class TaskStateChanged(Envelope):
    type: Literal["task.state_changed"] = "task.state_changed"
    task_id: UUID
    state: TaskState
    stop_reason: StopReason | None = None


class RoundStarted(Envelope):
    type: Literal["round.started"] = "round.started"
    task_id: UUID
    round_number: PositiveInt32
    attempt: Int32
    participants: list[DeviceId]


class RoundCompleted(Envelope):
    """A round's result applied as a new version; its central accuracy and loss, None for a
    task with no central data (its federated evaluation follows as round.evaluated)."""

    type: Literal["round.completed"] = "round.completed"
    task_id: UUID
    round_number: PositiveInt32
    model_version: Int32
    accuracy: float | None
    loss: float | None


class RoundEvaluated(Envelope):
    """A version's federated evaluation is over: the example-weighted means of what the
    devices answered in time (none answered: ``devices`` is 0 and the metrics are None)."""

    type: Literal["round.evaluated"] = "round.evaluated"
    task_id: UUID
    evaluation_id: UUID
    round_number: PositiveInt32
    model_version: Int32
    devices: int = Field(ge=0, le=MAX_DEVICES_PER_ROUND)
    num_examples: int = Field(ge=0)
    loss: float | None
    accuracy: float | None


class PrivacyBudgetExhausted(Envelope):
    """A task's next round would pass its ε: no further release of it will be approved."""

    type: Literal["privacy.budget_exhausted"] = "privacy.budget_exhausted"
    task_id: UUID
    epsilon_spent: float = Field(ge=0, le=MAX_DP_EPSILON)
    epsilon_budget: float = Field(gt=0, le=MAX_DP_EPSILON)
    detail: Text


class DeviceStatusChanged(Envelope):
    type: Literal["device.status_changed"] = "device.status_changed"
    device_id: DeviceId
    status: DeviceStatus


AnyMessage = Annotated[
    DeviceEnrolled
    | HeartbeatSent
    | DeviceRemoved
    | DeviceRestored
    | EnrolmentTokenIssued
    | EnrolmentTokenRevoked
    | TaskCreateRequested
    | ModelUploaded
    | TaskStartRequested
    | TaskPauseRequested
    | TaskResumeRequested
    | TaskCancelRequested
    | CleanupRequested
    | TrainRequested
    | EvaluateRequested
    | ModelPublished
    | RoundOpened
    | UpdateSubmitted
    | UpdateDeclined
    | EvaluationSubmitted
    | SecAggSubmitted
    | SecAggDelivered
    | RoundAggregated
    | RoundFailed
    | PrivacySpendRequested
    | PrivacySpendApproved
    | PrivacySpendRefused
    | LocalDpAssigned
    | PrivacyBudgetExhausted
    | TaskStateChanged
    | RoundStarted
    | RoundCompleted
    | RoundEvaluated
    | DeviceStatusChanged,
    Field(discriminator="type"),
]

ALL_MESSAGE_TYPES: tuple[type[Envelope], ...] = (
    DeviceEnrolled,
    HeartbeatSent,
    DeviceRemoved,
    DeviceRestored,
    EnrolmentTokenIssued,
    EnrolmentTokenRevoked,
    TaskCreateRequested,
    ModelUploaded,
    TaskStartRequested,
    TaskPauseRequested,
    TaskResumeRequested,
    TaskCancelRequested,
    CleanupRequested,
    TrainRequested,
    EvaluateRequested,
    ModelPublished,
    RoundOpened,
    UpdateSubmitted,
    UpdateDeclined,
    EvaluationSubmitted,
    SecAggSubmitted,
    SecAggDelivered,
    RoundAggregated,
    RoundFailed,
    PrivacySpendRequested,
    PrivacySpendApproved,
    PrivacySpendRefused,
    LocalDpAssigned,
    PrivacyBudgetExhausted,
    TaskStateChanged,
    RoundStarted,
    RoundCompleted,
    RoundEvaluated,
    DeviceStatusChanged,
)
