"""The topic registry: every topic name, its key, its producers and consumers, in one place.

Names are constants and always pass through :func:`topic_name`, which applies the configured
prefix, so that tests and tenants can share one broker (style.md, rule 8).
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICES = "fed.devices"
TASKS = "fed.tasks"
DEVICE_COMMANDS = "fed.device.commands"
MODELS = "fed.models"
UPDATES = "fed.updates"
SECAGG = "fed.secagg"
EVALUATIONS = "fed.evaluations"
ROUNDS = "fed.rounds"
PRIVACY = "fed.privacy"
EVENTS = "fed.events"
DLQ = "fed.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    carries: tuple[str, ...]


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        DEVICES,
        "device_id (token_id for enrolment tokens)",
        ("simulator", "gateway"),
        ("registry",),
        (
            "device.enrolled",
            "device.heartbeat_sent",
            "device.removed",
            "device.restored",
            "enrolment_token.issued",
            "enrolment_token.revoked",
        ),
    ),
    TopicSpec(
        TASKS,
        "task_id",
        ("gateway",),
        ("coordinator",),
        (
            "task.create_requested",
            "task.start_requested",
            "task.pause_requested",
            "task.resume_requested",
            "task.cancel_requested",
            "tasks.cleanup_requested",
            "model.uploaded",
        ),
    ),
    # Train and evaluate requests, and the aggregator's SecAgg+ deliveries, each addressed to
    # one device.
    TopicSpec(
        DEVICE_COMMANDS,
        "device_id",
        ("coordinator", "aggregator"),
        ("simulator", "devices"),
        ("train.requested", "evaluate.requested", "secagg.delivered"),
    ),
    # Announces versions; devices may prefetch from it (the simulator reads the model store).
    TopicSpec(MODELS, "task_id", ("coordinator",), ("devices",), ("model.published",)),
    # The coordinator writes round.opened here, keyed by task_id, so that by partition order
    # the aggregator always sees a round's definition before any of its updates.
    TopicSpec(
        UPDATES,
        "task_id",
        ("simulator", "coordinator"),
        ("aggregator",),
        ("round.opened", "update.submitted", "update.declined"),
    ),
    # Devices' SecAgg+ stage messages; round.opened comes on fed.updates, so a stage record
    # may be read before its round opens (the aggregator parks it).
    TopicSpec(SECAGG, "task_id", ("simulator",), ("aggregator",), ("secagg.submitted",)),
    # Devices' federated evaluations of a global model version, for the coordinator.
    TopicSpec(
        EVALUATIONS,
        "task_id",
        ("simulator", "devices"),
        ("coordinator",),
        ("evaluation.submitted",),
    ),
    TopicSpec(
        ROUNDS, "task_id", ("aggregator",), ("coordinator",), ("round.aggregated", "round.failed")
    ),
    # Spend requests (coordinator -> privacy) and their answers (privacy -> coordinator), and
    # the devices asked to train with local DP (coordinator -> privacy's device ledger).
    TopicSpec(
        PRIVACY,
        "task_id",
        ("coordinator", "privacy"),
        ("coordinator", "privacy"),
        (
            "privacy.spend_requested",
            "privacy.spend_approved",
            "privacy.spend_refused",
            "privacy.local_dp_assigned",
        ),
    ),
    TopicSpec(
        EVENTS,
        "task_id",
        ("registry", "coordinator", "aggregator", "privacy"),
        ("gateway",),
        (
            "task.state_changed",
            "round.started",
            "round.completed",
            "round.evaluated",
            "device.status_changed",
            "privacy.budget_exhausted",
        ),
    ),
    # Every consumer dead-letters ("*"); the gateway counts the dead letters for /metrics.
    TopicSpec(DLQ, "original key", ("*",), ("gateway",), ()),
)


def topic_name(prefix: str, base: str) -> str:
    """Return the broker-level name of ``base`` under ``prefix``."""
    return f"{prefix}{base}"


_CARRIES: dict[str, frozenset[str]] = {spec.name: frozenset(spec.carries) for spec in TOPICS}


def base_name(prefix: str, name: str) -> str | None:
    """Return the registry name of broker-level topic ``name``, or None if it is not ours."""
    if not name.startswith(prefix):
        return None
    base = name[len(prefix) :]
    return base if base in _CARRIES else None


def carried(base: str) -> frozenset[str]:
    """The message types topic ``base`` carries."""
    return _CARRIES.get(base, frozenset())


def carries(base: str, message_type: str) -> bool:
    """Whether topic ``base`` carries messages of ``message_type`` (the registry says so)."""
    return message_type in _CARRIES.get(base, frozenset())


def all_topic_names(prefix: str) -> list[str]:
    """Return every topic's broker-level name, for creation at start-up."""
    return [topic_name(prefix, spec.name) for spec in TOPICS]
