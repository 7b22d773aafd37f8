"""Entry point: settings -> logging -> the service shell."""

from __future__ import annotations

import asyncio

from fedcommon import logging as fedlogging
from fedcommon import topics
from fedcommon.service import ServiceSpec, run_service
from fedengine_aggregator import handlers, store
from fedengine_aggregator.settings import Settings

SPEC = ServiceSpec(
    name="aggregator",
    schema=store.SCHEMA,
    migrations_package="fedengine_aggregator",
    group_id="aggregator",
    topic_bases=(topics.UPDATES,),
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
