"""Entry point: settings -> the shared service main."""

from __future__ import annotations

import torch

from fedcommon import service, topics
from fedengine_coordinator import handlers, store
from fedengine_coordinator.settings import Settings

SPEC = service.ServiceSpec(
    name="coordinator",
    schema=store.SCHEMA,
    migrations_package="fedengine_coordinator",
    group_id="coordinator",
    topic_bases=(topics.TASKS, topics.ROUNDS, topics.PRIVACY, topics.EVALUATIONS),
)


def main() -> None:
    settings = Settings()
    torch.set_num_threads(settings.torch_threads)
    service.main(SPEC, settings, lambda context: handlers.build(context, settings))


if __name__ == "__main__":
    main()
