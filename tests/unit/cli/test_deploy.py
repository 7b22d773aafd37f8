"""docker-compose.yml and the Kubernetes manifests only name commands and variables that exist.

No Docker engine or cluster runs here, so this is the check we can make: every container's
command is a real module or CLI command, and every variable is one some Settings class reads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from fedcommon.settings import KafkaSettings, PostgresSettings
from fedengine.cli import app
from fedengine.settings import LauncherSettings
from fedengine_aggregator.settings import Settings as AggregatorSettings
from fedengine_coordinator.settings import Settings as CoordinatorSettings
from fedengine_gateway.settings import Settings as GatewaySettings
from fedengine_registry.settings import Settings as RegistrySettings
from fedengine_simulator.settings import Settings as SimulatorSettings

ROOT = Path(__file__).parents[3]
SETTINGS: dict[str, type[BaseSettings]] = {
    "fedengine_registry": RegistrySettings,
    "fedengine_coordinator": CoordinatorSettings,
    "fedengine_aggregator": AggregatorSettings,
    "fedengine_gateway": GatewaySettings,
    "fedengine_simulator": SimulatorSettings,
}


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable ``settings`` reads (prefix + name, or its alias)."""
    prefix = settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names |= env_names(annotation)
        elif isinstance(field.validation_alias, str):
            names.add(field.validation_alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


SHARED = (
    env_names(KafkaSettings)
    | env_names(PostgresSettings)
    | env_names(LauncherSettings)
    | {"FEDENGINE_HOME"}
)


def check_container(command: list[str], env: set[str]) -> None:
    if command[:2] == ["python", "-m"]:
        module = command[2]
        assert importlib.util.find_spec(module) is not None, module
        unknown = env - env_names(SETTINGS[module]) - {"FEDENGINE_HOME"}
        assert not unknown, f"{module} reads no {sorted(unknown)}"
    else:
        assert command[0] == "fedengine", command
        registered = {
            c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
        }
        assert command[1] in registered, command
        assert env <= SHARED, sorted(env - SHARED)


def test_compose_services_name_real_commands_and_variables() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {
        name: spec
        for name, spec in compose["services"].items()
        if spec.get("image") == "fedengine:latest"
    }

    assert {"registry", "coordinator", "aggregator", "gateway", "simulator", "kafka-init"} <= set(
        ours
    )
    for spec in ours.values():
        check_container(spec["command"], set(spec["environment"]))
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def _k8s_env(container: dict[str, Any], configmap: dict[str, str]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    if container.get("envFrom"):
        names |= set(configmap)
    return names


def test_kubernetes_manifests_name_real_commands_and_variables() -> None:
    documents = [
        d for d in yaml.safe_load_all((ROOT / "deploy/k8s/fedengine.yaml").read_text()) if d
    ]
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    workloads = [d for d in documents if d["kind"] in ("Deployment", "Job")]

    assert {d["metadata"]["name"] for d in workloads} >= {
        "registry",
        "coordinator",
        "aggregator",
        "gateway",
    }
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            check_container(container["command"], _k8s_env(container, configmap))


@pytest.mark.parametrize("module", sorted(SETTINGS))
def test_every_service_module_has_a_main(module: str) -> None:
    assert importlib.util.find_spec(f"{module}.__main__") is not None
