"""Entry point: settings -> logging -> the service shell."""

from __future__ import annotations

import asyncio

from fedcommon import logging as fedlogging
from fedcommon import topics
from fedcommon.service import ServiceSpec, run_service
from fedengine_coordinator import handlers, store
from fedengine_coordinator.settings import Settings

SPEC = ServiceSpec(
    name="coordinator",
    schema=store.SCHEMA,
    migrations_package="fedengine_coordinator",
    group_id="coordinator",
    topic_bases=(topics.TASKS, topics.ROUNDS),
)


def main() -> None:
    settings = Settings()
    fedlogging.configure(service=SPEC.name, json_output=settings.log_json)
    asyncio.run(
        run_service(
            SPEC,
            kafka_settings=settings.kafka,
            postgres_settings=settings.postgres,
            build=lambda context: handlers.build(context, settings),
            run_dir=settings.run_dir,
            metrics_port=settings.metrics_port,
        )
    )


if __name__ == "__main__":
    main()
