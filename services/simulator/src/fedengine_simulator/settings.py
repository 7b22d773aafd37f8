"""The simulator's one Settings class."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fedcommon import enrolment_tokens, mixes
from fedcommon.constraints import FLEET_PATTERN, MAX_SETTING
from fedcommon.messages.v1 import DatasetName, DeviceType, Partitioning, PrivacyLevel
from fedcommon.settings import KafkaSettings, PostgresSettings, TrustSettings, default_home
from feddevice.secagg_device import DropPolicy
from fedengine_simulator.core import behaviour
from fedengine_simulator.core import profiles as device_profiles
from fedengine_simulator.core.attacks import Attack, AttackKind
from fedengine_simulator.core.clock import Clock


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SIMULATOR_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    fleet: str = Field(default="sim", pattern=FLEET_PATTERN)
    # The operator's enrolment token for this fleet (`fedengine enrolment-token`, or POST
    # /api/federated/enrolment-tokens): the simulated devices enrol with it, and it carries the
    # coordinator's public key, the only key their train requests are accepted under.
    enrolment_token: SecretStr | None = None
    devices: int = Field(default=10, ge=1, le=100_000)
    # The data set this fleet's devices hold (each its partition of the training split); they
    # answer train requests for that data set only.
    dataset: DatasetName = "digits"
    partitioning: Partitioning = Partitioning.IID
    alpha: float = Field(default=0.5, gt=0)
    # Training examples each device holds at least (datasets.partition refuses a fleet too
    # large for it at start, with why).
    partition_min_size: int = Field(default=2, ge=1)
    seed: int = Field(default=0, ge=0)
    # Attackers for testing robust aggregation (core/attacks.py): this fraction of the fleet's
    # devices, chosen from ``seed``, sends ``attack``'s poisoned update instead of its own.
    malicious: float = Field(default=0.0, ge=0, le=1)
    attack: AttackKind = AttackKind.SIGN_FLIP
    attack_scale: float = Field(default=1.0, gt=0, le=MAX_SETTING)
    # The privacy level every device of the fleet enrols with: low, medium or high trains with
    # local DP-SGD at the coordinator's settings (fedcommon.local_dp); none does not.
    privacy_level: PrivacyLevel = PrivacyLevel.NONE
    # Injected dropout in secure rounds, for experiments (core/secagg_device.DropPolicy): at
    # each listed stage (SIMULATOR_SECAGG_DROP_STAGES, e.g. "2,3,4"), each device still in the
    # round stays silent from that stage on with probability SIMULATOR_SECAGG_DROPOUT, decided
    # from ``seed``, the round and the device's index, so that a run can be repeated.
    secagg_dropout: float = Field(default=0.0, ge=0, lt=1)
    secagg_drop_stages: Annotated[frozenset[int], NoDecode] = frozenset({2, 3, 4})
    heartbeat_s: float = Field(default=5.0, gt=0)
    # "i/n": this is process i of n that share the fleet (one consumer group, so each device's
    # commands reach one of them); it enrols and heartbeats the devices whose index is i mod
    # n, and answers whatever commands its partitions carry, for any device of the fleet.
    shard: str = Field(default="0/1", pattern=r"^\d{1,4}/\d{1,4}$")
    # Device behaviour (core/profiles.py, core/behaviour.py, core/clock.py). The mix of device
    # types, e.g. "mobile:0.6,iot:0.2,desktop:0.15,cloud:0.05"; empty: types cycle mobile,
    # iot, desktop, cloud.
    profiles: str = ""
    # The mix of privacy levels, e.g. "none:0.8,high:0.2"; empty: every device has
    # privacy_level.
    privacy_levels: str = ""
    # Simulated seconds per wall second: a device answers its simulated download, training
    # and upload time divided by this after the request was sent.
    speedup: float = Field(default=100.0, gt=0, le=1_000_000)
    # The simulated hour of the day at which every task's first round opens.
    start_hour: float = Field(default=12.0, ge=0, lt=24)
    # When devices are available: "always", "diurnal" (each type's pattern over the day), or
    # the path of a JSON trace ({"period_s": ..., "devices": [[[start, end], ...], ...]}).
    availability: str = "always"
    # Injected failures: this share of selected devices fails in each round, of the kinds in
    # failure_mix (crash mid-training, network loss during the upload).
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    failure_mix: str = "crash:0.5,network_loss:0.5"
    home: Path = Field(default_factory=default_home, validation_alias="FEDENGINE_HOME")
    metrics_port: int = 0
    # Where the metrics listen: loopback locally; a container sets 0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    run_dir: Path | None = Field(default=None, validation_alias="FEDENGINE_RUN_DIR")
    log_json: bool = False

    @field_validator("secagg_drop_stages", mode="before")
    @classmethod
    def _stages(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                stages = frozenset(int(part) for part in value.split(",") if part.strip())
            except ValueError as exc:
                raise ValueError(
                    f"SIMULATOR_SECAGG_DROP_STAGES must list stages like 2,3,4, got {value!r}"
                ) from exc
            value = stages
        if isinstance(value, frozenset | set | list | tuple) and not set(value) <= {1, 2, 3, 4}:
            raise ValueError(f"SIMULATOR_SECAGG_DROP_STAGES: stages are 1..4, got {value!r}")
        return value

    @model_validator(mode="after")
    def _behaviour(self) -> Settings:
        # Parsed once here so that a bad mix or trace stops the simulator at start, with why.
        _ = self.type_mix, self.privacy_mix, self.failures, self.trace
        if self.availability not in ("always", "diurnal") and self.trace is None:
            raise ValueError("SIMULATOR_AVAILABILITY is always, diurnal or a trace's path")
        return self

    @property
    def type_mix(self) -> dict[DeviceType, float] | None:
        if not self.profiles.strip():
            return None
        return mixes.parse_mix(self.profiles, DeviceType, "SIMULATOR_PROFILES")

    @property
    def privacy_mix(self) -> dict[PrivacyLevel, float] | None:
        if not self.privacy_levels.strip():
            return None
        return mixes.parse_mix(self.privacy_levels, PrivacyLevel, "SIMULATOR_PRIVACY_LEVELS")

    @property
    def failures(self) -> behaviour.Failures:
        mix = mixes.parse_mix(self.failure_mix, behaviour.Outcome, "SIMULATOR_FAILURE_MIX")
        try:
            return behaviour.Failures(self.failure_rate, mix)
        except ValueError as exc:
            raise ValueError(f"SIMULATOR_FAILURE_MIX: {exc}") from None

    @cached_property
    def trace(self) -> device_profiles.AvailabilityTrace | None:
        if self.availability in ("always", "diurnal"):
            return None
        return device_profiles.AvailabilityTrace.load(Path(self.availability))

    @property
    def shard_of(self) -> tuple[int, int]:
        index, count = (int(part) for part in self.shard.split("/"))
        return index, count

    @model_validator(mode="after")
    def _check_shard(self) -> Settings:
        index, count = self.shard_of
        if not 0 <= index < count:
            raise ValueError(f"SIMULATOR_SHARD {self.shard!r}: i/n needs 0 <= i < n")
        return self

    @property
    def clock(self) -> Clock:
        return Clock(self.speedup, self.start_hour * 3600)

    @model_validator(mode="after")
    def _token_for_this_fleet(self) -> Settings:
        if self.enrolment_token is None or not self.enrolment_token.get_secret_value():
            raise ValueError(
                "SIMULATOR_ENROLMENT_TOKEN is not set: its devices enrol with an operator's "
                "enrolment token (fedengine enrolment-token --fleet NAME)"
            )
        token = self.token
        if token.fleet != self.fleet:
            raise ValueError(
                f"SIMULATOR_ENROLMENT_TOKEN is for fleet {token.fleet!r}, "
                f"not SIMULATOR_FLEET {self.fleet!r}"
            )
        return self

    @cached_property
    def token(self) -> enrolment_tokens.EnrolmentToken:
        assert self.enrolment_token is not None
        return enrolment_tokens.EnrolmentToken.decode(self.enrolment_token.get_secret_value())

    @property
    def attack_spec(self) -> Attack:
        return Attack(self.attack, self.attack_scale)

    @property
    def secagg_drop_policy(self) -> DropPolicy:
        return DropPolicy(
            probability=self.secagg_dropout, stages=self.secagg_drop_stages, seed=self.seed
        )

    @property
    def trust(self) -> TrustSettings:
        """Devices trust the coordinator's and the aggregator's keys their token carries, and
        no other service's (a token without the aggregator's: no secure rounds)."""
        keys = {"coordinator": self.token.coordinator_key.hex()}
        if self.token.aggregator_key is not None:
            keys["aggregator"] = self.token.aggregator_key.hex()
        return TrustSettings(FEDENGINE_SERVICE_KEYS=keys)
