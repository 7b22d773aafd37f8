"""Entry point: settings -> logging -> the service shell."""

from __future__ import annotations

import asyncio

from fedcommon import logging as fedlogging
from fedcommon import topics
from fedcommon.service import ServiceSpec, run_service
from fedengine_registry import handlers, store
from fedengine_registry.settings import Settings

SPEC = ServiceSpec(
    name="registry",
    schema=store.SCHEMA,
    migrations_package="fedengine_registry",
    group_id="registry",
    topic_bases=(topics.DEVICES,),
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
