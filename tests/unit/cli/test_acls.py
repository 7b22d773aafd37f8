"""The Kafka ACLs derived from the topic registry, checked against the trust matrix, against
what each service really subscribes to, and as the script `fedengine acls` prints."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedcommon import enrolment_tokens, kafka, service, signing, topics, trust
from fedcommon.settings import KafkaSettings
from fedengine import acls
from fedengine_aggregator.__main__ import SPEC as AGGREGATOR
from fedengine_coordinator.__main__ import SPEC as COORDINATOR
from fedengine_privacy.__main__ import SPEC as PRIVACY
from fedengine_registry.__main__ import SPEC as REGISTRY

ROOT = Path(__file__).parents[3]


def granted(principal: str, resource: str = "topic", prefix: str = "") -> dict[str, set[str]]:
    return {
        acl.name: set(acl.operations)
        for acl in acls.acls(prefix)
        if acl.principal == principal and acl.resource == resource
    }


def writes(principal: str) -> set[str]:
    return {name for name, ops in granted(principal).items() if "Write" in ops}


def reads(principal: str) -> set[str]:
    return {name for name, ops in granted(principal).items() if "Read" in ops}


def test_the_principals_are_the_services_and_the_device_fleet() -> None:
    assert acls.principals() == [
        "aggregator",
        "coordinator",
        "devices",
        "gateway",
        "privacy",
        "registry",
    ]


def test_devices_write_only_device_topics_and_read_only_commands_and_models() -> None:
    assert writes("devices") == {
        topics.DEVICES,
        topics.UPDATES,
        topics.SECAGG,
        topics.EVALUATIONS,
        topics.DLQ,
    }
    assert reads("devices") == {topics.DEVICE_COMMANDS, topics.MODELS}
    assert granted("devices", "group") == {"simulator-": {"Read"}, "device.": {"Read"}}


@pytest.mark.parametrize(
    "topic", [topics.ROUNDS, topics.TASKS, topics.DEVICE_COMMANDS, topics.MODELS, topics.EVENTS]
)
def test_devices_cannot_write_service_topics(topic: str) -> None:
    assert topic not in writes("devices")


@pytest.mark.parametrize(
    "topic", [topics.UPDATES, topics.DEVICES, topics.ROUNDS, topics.TASKS, topics.DLQ]
)
def test_devices_cannot_read_what_other_devices_or_services_send(topic: str) -> None:
    assert topic not in reads("devices")


def test_every_sender_the_trust_matrix_allows_may_write_its_topic() -> None:
    for (topic, message_type), senders in trust.MATRIX.items():
        for sender in senders:
            principal = acls.DEVICES if sender == trust.DEVICE else sender
            assert topic in writes(principal), (principal, topic, message_type)


def test_only_producers_in_the_registry_may_write_a_topic() -> None:
    for spec in topics.TOPICS:
        if spec.name == topics.DLQ:
            continue
        allowed = {acls.principal_of(name) for name in spec.producers}
        writers = {p for p in acls.principals() if spec.name in writes(p)}
        assert writers <= allowed, spec.name


def test_secure_aggregation_goes_from_devices_to_the_aggregator_and_back_as_commands() -> None:
    # Devices' stage messages reach the aggregator only; its deliveries go out on the
    # command topic devices already read (each addressed, and encrypted where secret).
    assert {p for p in acls.principals() if topics.SECAGG in writes(p)} == {"devices"}
    assert {p for p in acls.principals() if topics.SECAGG in reads(p)} == {"aggregator"}
    assert topics.DEVICE_COMMANDS in writes("aggregator")


def test_only_the_coordinator_and_the_privacy_service_use_the_privacy_topic() -> None:
    # Spend requests go one way, answers the other, on one topic both read and write.
    assert {p for p in acls.principals() if topics.PRIVACY in writes(p)} == {
        "coordinator",
        "privacy",
    }
    assert {p for p in acls.principals() if topics.PRIVACY in reads(p)} == {
        "coordinator",
        "privacy",
    }
    assert writes("privacy") == {topics.PRIVACY, topics.EVENTS, topics.DLQ}
    assert reads("privacy") == {topics.PRIVACY}
    assert granted("privacy", "group") == {"privacy": {"Read"}}


def test_every_consumer_may_dead_letter_and_only_the_gateway_reads_dead_letters() -> None:
    for principal in acls.principals():
        if reads(principal):
            assert topics.DLQ in writes(principal), principal
    assert {p for p in acls.principals() if topics.DLQ in reads(p)} == {"gateway"}


def test_no_principal_may_create_delete_alter_or_act_on_the_cluster() -> None:
    for acl in acls.acls():
        assert acl.resource in ("topic", "group")
        assert set(acl.operations) <= {"Read", "Write", "Describe"}
        assert acl.principal != acls.ADMIN


def test_the_topic_prefix_goes_before_every_topic_and_group() -> None:
    assert all(acl.name.startswith("tenant-a.") for acl in acls.acls("tenant-a."))
    assert granted("registry", "group", "tenant-a.") == {"tenant-a.registry": {"Read"}}


def assert_consumer(principal: str, group_id: str, topic_bases: tuple[str, ...] | Any) -> None:
    """``principal`` may read what the service subscribes to, in the group it uses."""
    assert set(topic_bases) <= reads(principal), principal
    groups = [acl for acl in acls.acls() if acl.principal == principal and acl.resource == "group"]
    assert any(
        group_id.startswith(group.name) if group.prefixed else group_id == group.name
        for group in groups
    ), (group_id, groups)


@pytest.mark.parametrize("spec", [REGISTRY, COORDINATOR, AGGREGATOR, PRIVACY], ids=lambda s: s.name)
def test_each_service_may_read_what_it_subscribes_to_in_its_group(
    spec: service.ServiceSpec,
) -> None:
    assert_consumer(spec.name, spec.group_id, spec.topic_bases)


def test_the_simulator_reads_as_devices_in_its_fleet_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedengine_simulator import __main__ as simulator

    captured: list[service.ServiceSpec] = []
    monkeypatch.setenv("SIMULATOR_FLEET", "north")
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused/unused")
    coordinator = signing.public_key_bytes(signing.generate_private_key())
    token = enrolment_tokens.issue("north", coordinator_key=coordinator)
    monkeypatch.setenv("SIMULATOR_ENROLMENT_TOKEN", token.encode())
    monkeypatch.setattr(service, "main", lambda spec, *_: captured.append(spec))

    simulator.main()

    (spec,) = captured
    assert spec.group_id == "simulator-north"
    assert_consumer(acls.DEVICES, spec.group_id, spec.topic_bases)


def test_a_device_runtime_reads_its_commands_as_devices_in_its_own_group() -> None:
    from feddevice import runtime

    assert_consumer(acls.DEVICES, runtime.command_group("hospital-a"), (topics.DEVICE_COMMANDS,))


async def test_the_gateway_reads_dead_letters_in_a_gateway_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedengine_gateway import app

    class Captured(Exception):
        pass

    def capture(settings: Any, *, group_id: str, topic_bases: Any, **_: Any) -> None:
        raise Captured(group_id, tuple(topic_bases))

    monkeypatch.setattr(kafka, "make_consumer", capture)

    with pytest.raises(Captured) as caught:
        await app.watch_dead_letters(SimpleNamespace(kafka=KafkaSettings()))  # type: ignore[arg-type]

    group_id, topic_bases = caught.value.args
    assert_consumer("gateway", group_id, topic_bases)


def test_the_script_has_one_kafka_acls_command_per_acl_and_is_valid_bash() -> None:
    text = acls.script("t1.", users=True, admin_user=True)
    commands = [line for line in text.splitlines() if line.startswith('"$bin/kafka-acls.sh"')]

    assert len(commands) == len(acls.acls("t1."))
    assert (
        '"$bin/kafka-acls.sh" "${admin[@]}" --add --allow-principal User:devices'
        " --operation Read --group t1.simulator- --resource-pattern-type prefixed"
    ) in commands
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def fake_kafka_tools(folder: Path) -> Path:
    """Stand-ins for kafka-acls.sh and kafka-configs.sh that log their arguments."""
    folder.mkdir()
    for tool in ("kafka-acls.sh", "kafka-configs.sh"):
        path = folder / tool
        path.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{folder}/calls"\n')
        path.chmod(0o755)
    return folder


def run_script(text: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(exist_ok=True)
    tools = fake_kafka_tools(tmp_path / "bin")
    script = tmp_path / "setup.sh"
    script.write_text(text)
    base = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tools)}
    return subprocess.run(
        ["bash", str(script)],
        env=base | {"KAFKA_BOOTSTRAP": "kafka:9092", "ADMIN_CONFIG": "/admin.properties"} | env,
        capture_output=True,
        text=True,
    )


def passwords(**overrides: str) -> dict[str, str]:
    names = [acls.ADMIN, *acls.principals()]
    return {acls.password_variable(n): f"pw-{n}" for n in names} | overrides


def test_the_script_creates_each_users_credential_then_the_acls(tmp_path: Path) -> None:
    result = run_script(acls.script(users=True, admin_user=True), tmp_path, **passwords())

    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    users = [c for c in calls if c.startswith("kafka-configs.sh")]
    assert [c.split("--entity-name ")[1].split()[0] for c in users] == [
        "admin",
        *acls.principals(),
    ]
    assert all(
        "--bootstrap-server kafka:9092 --command-config /admin.properties" in c for c in calls
    )
    assert "--entity-name devices --add-config SCRAM-SHA-512=[password=pw-devices]" in users[3]
    assert len(calls) == len(users) + len(acls.acls())


def test_the_script_refuses_a_missing_or_unsafe_password(tmp_path: Path) -> None:
    variable = acls.password_variable("devices")
    unsafe = run_script(acls.script(users=True), tmp_path, **passwords(**{variable: "a,b]=c"}))
    missing = {k: v for k, v in passwords().items() if k != variable}

    assert unsafe.returncode != 0
    assert "the password of devices must be letters, digits, - and _ only" in unsafe.stderr
    result = run_script(acls.script(users=True), tmp_path / "again", **missing)
    assert result.returncode != 0
    assert f"{variable} is not set" in result.stderr


def test_the_markdown_table_in_security_md_is_the_generated_one() -> None:
    assert acls.markdown() in (ROOT / "docs" / "security.md").read_text()
