"""Entry point: settings -> the shared service main."""

from __future__ import annotations

import logging

from fedcommon import service, topics
from fedengine_privacy import handlers, store
from fedengine_privacy.settings import Settings

SPEC = service.ServiceSpec(
    name="privacy",
    schema=store.SCHEMA,
    migrations_package="fedengine_privacy",
    group_id="privacy",
    topic_bases=(topics.PRIVACY,),
)


def main() -> None:
    settings = Settings()
    # dp-accounting logs a warning through absl for every RDP order it excludes (dozens per
    # epsilon): noise that would bury the service's own log lines.
    logging.getLogger("absl").setLevel(logging.ERROR)
    service.main(SPEC, settings, handlers.build)


if __name__ == "__main__":
    main()
