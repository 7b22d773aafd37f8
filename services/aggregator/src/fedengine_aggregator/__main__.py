"""Entry point: settings -> the shared service main."""

from __future__ import annotations

from fedcommon import service, topics
from fedengine_aggregator import handlers, store
from fedengine_aggregator.settings import Settings

SPEC = service.ServiceSpec(
    name="aggregator",
    schema=store.SCHEMA,
    migrations_package="fedengine_aggregator",
    group_id="aggregator",
    topic_bases=(topics.UPDATES, topics.SECAGG),
)


def main() -> None:
    settings = Settings()
    service.main(SPEC, settings, lambda context: handlers.build(context, settings))


if __name__ == "__main__":
    main()
