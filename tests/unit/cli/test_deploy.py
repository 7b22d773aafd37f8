"""docker-compose.yml and the Kubernetes manifests only name commands and variables that exist,
and give each service and the device fleet a Kafka user of its own.

No Docker engine or cluster runs here, so this is the check we can make: every FedEngine
container's command is a real module or CLI command, every variable is one some Settings class
reads, and each container logs in to Kafka as the principal `fedengine acls` grants its rights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from fedcommon.settings import KafkaSettings, PostgresSettings
from fedengine import acls
from fedengine.cli import app
from fedengine.settings import LauncherSettings
from fedengine_aggregator.settings import Settings as AggregatorSettings
from fedengine_coordinator.settings import Settings as CoordinatorSettings
from fedengine_gateway.settings import Settings as GatewaySettings
from fedengine_privacy.settings import Settings as PrivacySettings
from fedengine_registry.settings import Settings as RegistrySettings
from fedengine_simulator.settings import Settings as SimulatorSettings

ROOT = Path(__file__).parents[3]
SETTINGS: dict[str, type[BaseSettings]] = {
    "fedengine_registry": RegistrySettings,
    "fedengine_coordinator": CoordinatorSettings,
    "fedengine_aggregator": AggregatorSettings,
    "fedengine_privacy": PrivacySettings,
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


# The Kafka user each service module logs in as (fedengine.acls' principals).
PRINCIPALS = {
    "fedengine_registry": "registry",
    "fedengine_coordinator": "coordinator",
    "fedengine_aggregator": "aggregator",
    "fedengine_privacy": "privacy",
    "fedengine_gateway": "gateway",
    "fedengine_simulator": acls.DEVICES,
}

SHARED = (
    env_names(KafkaSettings)
    | env_names(PostgresSettings)
    | env_names(LauncherSettings)
    | {"FEDENGINE_HOME"}
    # Every service reads it (the probes' ready files); the shared block hands it to all.
    | {"FEDENGINE_RUN_DIR"}
)


def test_every_principal_with_acls_is_a_service_module_s_user() -> None:
    assert sorted(PRINCIPALS.values()) == acls.principals()


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


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in compose["services"].items()
        if spec.get("image") == "fedengine:latest"
    }


def test_compose_services_name_real_commands_and_variables() -> None:
    compose = _compose()
    ours = _ours(compose)

    assert {
        "registry",
        "coordinator",
        "aggregator",
        "privacy",
        "gateway",
        "simulator",
        "kafka-init",
        "kafka-acls",
    } <= set(ours)
    for spec in ours.values():
        check_container(spec["command"], set(spec["environment"]))
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_kafka_denies_what_no_acl_allows() -> None:
    kafka = _compose()["services"]["kafka"]["environment"]

    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == f"User:{acls.ADMIN}"
    assert "PLAINTEXT://" not in kafka["KAFKA_LISTENERS"]  # every listener asks for SASL
    assert set(kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")) == {
        "CLIENT:SASL_PLAINTEXT",
        "CONTROLLER:SASL_PLAINTEXT",
    }
    assert kafka["KAFKA_LISTENER_NAME_CLIENT_SASL_ENABLED_MECHANISMS"].startswith(acls.MECHANISM)


def test_compose_each_service_logs_in_as_its_own_principal() -> None:
    compose = _compose()
    ours = _ours(compose)
    seen: dict[str, str] = {}
    for name, spec in ours.items():
        env = spec["environment"]
        command = spec["command"]
        if command[:2] == ["python", "-m"]:
            principal = PRINCIPALS[command[2]]
        elif command[:2] == ["fedengine", "create-topics"]:
            principal = acls.ADMIN
        else:
            assert "KAFKA_SASL_USERNAME" not in env, name
            continue
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["KAFKA_SASL_MECHANISM"] == acls.MECHANISM, name
        assert env["KAFKA_SASL_USERNAME"] == principal, name
        password = env["KAFKA_SASL_PASSWORD"]
        assert password.startswith(f"${{{acls.password_variable(principal)}:?"), name
        assert seen.setdefault(password, principal) == principal, f"{name} shares a password"
        if principal != acls.ADMIN:
            assert env["KAFKA_CREATE_TOPICS"] == "false", name
    assert sorted(set(seen.values()) - {acls.ADMIN}) == acls.principals()
    setup = compose["services"]["kafka-setup"]["environment"]
    assert set(setup) == {acls.password_variable(p) for p in [acls.ADMIN, *acls.principals()]}


def _k8s_env(container: dict[str, Any], configmap: dict[str, str]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    if any("configMapRef" in source for source in container.get("envFrom", [])):
        names |= set(configmap)
    return names


def _k8s_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/fedengine.yaml").read_text()) if d]


def _k8s_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The FedEngine containers of ``workload``, init containers included."""
    pod = workload["spec"]["template"]["spec"]
    return [
        c
        for c in [*pod.get("initContainers", []), *pod["containers"]]
        if c["image"] == "fedengine:latest"
    ]


def test_kubernetes_manifests_name_real_commands_and_variables() -> None:
    documents = _k8s_documents()
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    workloads = [d for d in documents if d["kind"] in ("Deployment", "Job")]

    assert {d["metadata"]["name"] for d in workloads} >= {
        "registry",
        "coordinator",
        "aggregator",
        "privacy",
        "gateway",
        "simulator",
        "fedengine-kafka-setup",
    }
    for workload in workloads:
        for container in _k8s_containers(workload):
            check_container(container["command"], _k8s_env(container, configmap))


def test_kubernetes_each_workload_logs_in_as_its_own_principal_over_tls() -> None:
    documents = _k8s_documents()
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    assert configmap["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert configmap["KAFKA_SASL_MECHANISM"] == acls.MECHANISM
    assert configmap["KAFKA_CREATE_TOPICS"] == "false"
    mounted = "/etc/fedengine/kafka-ca"
    assert configmap["KAFKA_SSL_CAFILE"].startswith(mounted + "/")
    users: dict[str, str] = {}
    for workload in (d for d in documents if d["kind"] == "Deployment"):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        principal = PRINCIPALS[container["command"][2]]
        assert env["KAFKA_SASL_USERNAME"]["value"] == principal
        secret = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "fedengine-kafka", "key": acls.password_variable(principal)}
        assert principal not in users, f"{workload['metadata']['name']} and {users[principal]}"
        users[principal] = workload["metadata"]["name"]
        assert any(m["mountPath"] == mounted for m in container["volumeMounts"])
    assert sorted(users) == acls.principals()


@pytest.mark.parametrize("module", sorted(SETTINGS))
def test_every_service_module_has_a_main(module: str) -> None:
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_compose_metrics_listen_where_prometheus_can_reach_them() -> None:
    # A service's metrics default to loopback: in a container that is unreachable from any
    # scraper, so every service given a metrics port also listens on every interface.
    for name, spec in _ours(_compose()).items():
        env = spec["environment"]
        for key in [k for k in env if k.endswith("_METRICS_PORT")]:
            host = key.removesuffix("_PORT") + "_HOST"
            assert env.get(host) == "0.0.0.0", f"{name}: {key} without {host}=0.0.0.0"


def test_kubernetes_scraped_ports_listen_beyond_loopback() -> None:
    # Prepare: the pods Prometheus is told to scrape (annotations) and the port it scrapes.
    scraped = [
        d
        for d in _k8s_documents()
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/scrape")
    ]
    assert scraped, "no workload is annotated for scraping"
    for workload in scraped:
        port = workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        for container in _k8s_containers(workload):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            ports = [k for k, v in env.items() if k.endswith("_METRICS_PORT") and v == port]

            # Assert: the annotated port is the metrics port, bound to every interface.
            assert ports, f"{workload['metadata']['name']}: no metrics on port {port}"
            host = ports[0].removesuffix("_PORT") + "_HOST"
            assert env.get(host) == "0.0.0.0", f"{workload['metadata']['name']}: {host}"
