"""Entry point: settings -> the shared service main."""

from __future__ import annotations

from fedcommon import service, topics
from fedengine_registry import handlers, store
from fedengine_registry.settings import Settings

SPEC = service.ServiceSpec(
    name="registry",
    schema=store.SCHEMA,
    migrations_package="fedengine_registry",
    group_id="registry",
    topic_bases=(topics.DEVICES,),
    # Enrolments, heartbeats and removals: no round waits on them (fedcommon.fetch_pacing).
    on_round_path=False,
    # Enrolments and heartbeats are applied a batch at a time (handlers.Registry.handle_batch):
    # up to this many per poll, one transaction and one offset commit per partition's run.
    max_records=2000,
)


def main() -> None:
    settings = Settings()
    service.main(SPEC, settings, lambda context: handlers.build(context, settings))


if __name__ == "__main__":
    main()
