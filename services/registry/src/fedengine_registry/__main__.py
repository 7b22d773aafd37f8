"""Entry point: settings -> logging -> migrations and topics -> the faust worker."""

from __future__ import annotations

import asyncio

from faust.worker import Worker

from fedcommon import logging as fedlogging
from fedcommon import runtime
from fedengine_registry.settings import Settings
from fedengine_registry.worker import build_app, prepare


def main() -> None:
    settings = Settings()
    fedlogging.configure(service="registry", json_output=settings.log_json)
    asyncio.run(prepare(settings))
    runtime.serve_metrics(settings.metrics_port)
    app = build_app(settings)
    # faust's Worker owns the event loop, logging and SIGTERM: it stops the agent after the
    # event in hand and commits acknowledged offsets before exiting.
    Worker(
        app,
        loglevel="INFO",
        redirect_stdouts=False,
        logging_config=fedlogging.dict_config(service="registry", json_output=settings.log_json),
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
