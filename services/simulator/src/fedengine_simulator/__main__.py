"""Entry point: settings -> logging -> the service shell, one consumer group per fleet."""

from __future__ import annotations

import asyncio

from fedcommon import logging as fedlogging
from fedcommon import topics
from fedcommon.service import ServiceSpec, run_service
from fedengine_simulator import handlers
from fedengine_simulator.settings import Settings


def main() -> None:
    settings = Settings()
    spec = ServiceSpec(
        name=f"simulator-{settings.fleet}",
        schema=handlers.SCHEMA,
        migrations_package="fedengine_simulator",
        group_id=f"simulator-{settings.fleet}",
        topic_bases=(topics.DEVICE_COMMANDS,),
    )
    fedlogging.configure(service=spec.name, json_output=settings.log_json)
    asyncio.run(
        run_service(
            spec,
            kafka_settings=settings.kafka,
            postgres_settings=settings.postgres,
            build=lambda context: handlers.build(context, settings),
            run_dir=settings.run_dir,
            metrics_port=settings.metrics_port,
        )
    )


if __name__ == "__main__":
    main()
