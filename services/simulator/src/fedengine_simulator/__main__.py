"""Entry point: settings -> the shared service main, one consumer group per fleet."""

from __future__ import annotations

from fedcommon import service, topics
from fedengine_simulator import handlers
from fedengine_simulator.settings import Settings


def main() -> None:
    settings = Settings()
    shard, _ = settings.shard_of
    # The launcher's process name (its ready file): a fleet's later processes are "+1", "+2"...
    name = f"simulator-{settings.fleet}" + (f"+{shard}" if shard else "")
    spec = service.ServiceSpec(
        name=name,
        schema=handlers.SCHEMA,
        migrations_package="fedengine_simulator",
        group_id=f"simulator-{settings.fleet}",
        topic_bases=(topics.DEVICE_COMMANDS,),
        # Train requests are keyed by device: partitions are independent, so devices on
        # different partitions train at the same time (one thread each).
        concurrent_partitions=True,
        # It plays devices: what it sends is signed with their keys, not as a service.
        signs=False,
    )
    service.main(spec, settings, lambda context: handlers.build(context, settings))


if __name__ == "__main__":
    main()
