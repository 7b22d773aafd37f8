"""Who may do what on the broker: the Kafka ACLs of each principal, derived from the topic
registry (fedcommon.topics.TOPICS), and the script that applies them (``fedengine acls``).

One source of truth: TOPICS says which services produce and consume each topic; a principal
gets Write and Describe on the topics it produces, Read and Describe on those it consumes, Read
on its consumer group, and Write on the dead-letter topic when it consumes anything (the one
consume loop dead-letters, and so does the outbox relay). Pure: no I/O, no broker.

- Principals are the services and ``devices``, the device fleet (the simulator plays it; the
  registry names it ``simulator`` or ``devices``). ``admin`` is the deployment's super user
  (``super.users``): it creates the topics, users and ACLs and has no ACL of its own.
- A topic that carries no message type gets no ACLs: nobody sends anything there; its
  ACLs appear with its first message type. (fed.secagg carries the devices' SecAgg+ stage
  messages, read by the aggregator alone.)
- No principal gets Create, Delete, Alter or any cluster operation: services do not create
  topics where ``KAFKA_CREATE_TOPICS=false`` (the admin's init job does), and no producer is
  idempotent or transactional (broker.md), so none needs IdempotentWrite.
- Kafka ACLs cannot look at record keys: every device credential may read every device's
  train requests and SecAgg+ deliveries on the shared fed.device.commands (docs/security.md;
  a delivery's secrets, the key shares, are encrypted to their recipient).
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fedcommon import topics

ADMIN = "admin"
DEVICES = "devices"
# The topic registry's names for the device fleet.
_FLEET_NAMES = frozenset({"simulator", DEVICES})
# The SCRAM mechanism the deployments use (KafkaSettings' default).
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class Group:
    """A consumer group id as a service names it, before the topic prefix; ``prefixed`` where
    each process makes its own group under that prefix."""

    name: str
    prefixed: bool = False


# Each principal's consumer groups (fedcommon.kafka.make_consumer puts the topic prefix first).
GROUPS: Mapping[str, tuple[Group, ...]] = {
    "registry": (Group("registry"),),
    "coordinator": (Group("coordinator"),),
    "aggregator": (Group("aggregator"),),
    "privacy": (Group("privacy"),),
    # fedengine_gateway.app.watch_dead_letters: a group per gateway process, gateway-dlq-<hex>.
    "gateway": (Group("gateway-dlq-", prefixed=True),),
    # fedengine_simulator: one group per fleet, simulator-<fleet>; the device runtime
    # (feddevice.runtime): one per device, device.<device id>, for its committed offset.
    DEVICES: (Group("simulator-", prefixed=True), Group("device.", prefixed=True)),
}

Operation = Literal["Read", "Write", "Describe"]


@dataclass(frozen=True, order=True)
class Acl:
    """Allow ``principal`` the ``operations`` on a topic or group (a literal name, or every
    name that starts with it when ``prefixed``)."""

    principal: str
    resource: Literal["topic", "group"]
    name: str
    prefixed: bool
    operations: tuple[Operation, ...]


def principal_of(service: str) -> str:
    """The Kafka principal (SASL user name) a name in the topic registry connects as."""
    return DEVICES if service in _FLEET_NAMES else service


def acls(prefix: str = "") -> list[Acl]:
    """Every ACL a deployment with topic prefix ``prefix`` needs, sorted by principal."""
    grants: dict[tuple[str, str], set[Operation]] = defaultdict(set)
    consumers: set[str] = set()
    for spec in topics.TOPICS:
        if spec.name == topics.DLQ or not spec.carries:
            continue
        for producer in spec.producers:
            grants[principal_of(producer), spec.name] |= {"Write", "Describe"}
        for consumer in spec.consumers:
            grants[principal_of(consumer), spec.name] |= {"Read", "Describe"}
            consumers.add(principal_of(consumer))
    (dlq,) = (spec for spec in topics.TOPICS if spec.name == topics.DLQ)
    for reader in dlq.consumers:
        grants[principal_of(reader), topics.DLQ] |= {"Read", "Describe"}
        consumers.add(principal_of(reader))
    for writer in consumers:  # every consumer dead-letters: TOPICS' "*" producer of fed.dlq
        grants[writer, topics.DLQ] |= {"Write", "Describe"}
    found = [
        Acl(principal, "topic", topics.topic_name(prefix, name), False, _ordered(operations))
        for (principal, name), operations in grants.items()
    ]
    for principal in sorted(consumers):
        for group in GROUPS[principal]:
            found.append(
                Acl(principal, "group", f"{prefix}{group.name}", group.prefixed, ("Read",))
            )
    return sorted(found)


def principals() -> list[str]:
    """Every principal with ACLs (``admin`` aside), in order."""
    return sorted({acl.principal for acl in acls()})


def _ordered(operations: set[Operation]) -> tuple[Operation, ...]:
    order: tuple[Operation, ...] = ("Read", "Write", "Describe")
    return tuple(op for op in order if op in operations)


def password_variable(principal: str) -> str:
    """The environment variable that holds ``principal``'s password in the deployments."""
    return f"FEDENGINE_KAFKA_PASSWORD_{principal.upper()}"


_HEADER = """\
#!/usr/bin/env bash
# FedEngine's Kafka {what} for topic prefix {prefix}, generated by `fedengine acls` from
# the topic registry (fedcommon.topics). Run with the Apache Kafka command-line tools
# (KAFKA_BIN, default /opt/kafka/bin) as the admin: ADMIN_CONFIG names a client properties
# file with the admin's credentials, KAFKA_BOOTSTRAP a listener (host:port).
set -euo pipefail
: "${{KAFKA_BOOTSTRAP:?host:port of the broker}}"
: "${{ADMIN_CONFIG:?client properties file with the admin credentials}}"
bin="${{KAFKA_BIN:-/opt/kafka/bin}}"
admin=(--bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$ADMIN_CONFIG")
"""

_USER = """\
user() {{  # user NAME PASSWORD: create or reset NAME's {mechanism} credential
  case "$2" in
    "" | *[!A-Za-z0-9_-]*)
      echo "the password of $1 must be letters, digits, - and _ only" >&2; exit 1 ;;
  esac
  "$bin/kafka-configs.sh" "${{admin[@]}}" --alter --entity-type users --entity-name "$1" \\
    --add-config "{mechanism}=[password=$2]"
}}
"""


def script(prefix: str = "", *, users: bool = False, admin_user: bool = False) -> str:
    """A bash script that applies :func:`acls` with kafka-acls.sh; with ``users``, it first
    creates each principal's SCRAM credential with kafka-configs.sh from the passwords in
    FEDENGINE_KAFKA_PASSWORD_<PRINCIPAL>; with ``admin_user`` the admin's too (a broker of the
    deployment's own, whose admin logs in with PLAIN until then: docker-compose.yml)."""
    what = "users and ACLs" if users or admin_user else "ACLs"
    lines = [_HEADER.format(what=what, prefix=shlex.quote(prefix) or "''")]
    names = ([ADMIN] if admin_user else []) + (principals() if users else [])
    if names:
        lines.append(_USER.format(mechanism=MECHANISM))
        for principal in names:
            variable = password_variable(principal)
            lines.append(f'user {principal} "${{{variable}:?{variable} is not set}}"')
        lines.append("")
    for acl in acls(prefix):
        words = [
            '"$bin/kafka-acls.sh"',
            '"${admin[@]}"',
            "--add",
            "--allow-principal",
            f"User:{acl.principal}",
        ]
        for operation in acl.operations:
            words += ["--operation", operation]
        words += [f"--{acl.resource}", shlex.quote(acl.name)]
        if acl.prefixed:
            words += ["--resource-pattern-type", "prefixed"]
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def markdown(prefix: str = "") -> str:
    """The ACLs as a Markdown table, a row per principal (docs/security.md shows it)."""
    rows = [
        "| principal | writes (Write, Describe) | reads (Read, Describe) | consumer group (Read) |",
        "|---|---|---|---|",
    ]

    def names(found: list[Acl]) -> str:
        return ", ".join(f"`{acl.name}{'*' if acl.prefixed else ''}`" for acl in found) or "—"

    for principal in principals():
        mine = [acl for acl in acls(prefix) if acl.principal == principal]
        topics_ = [acl for acl in mine if acl.resource == "topic"]
        writes = [acl for acl in topics_ if "Write" in acl.operations]
        reads = [acl for acl in topics_ if "Read" in acl.operations]
        groups = [acl for acl in mine if acl.resource == "group"]
        rows.append(f"| {principal} | {names(writes)} | {names(reads)} | {names(groups)} |")
    return "\n".join(rows) + "\n"
