"""Entry point: settings -> logging -> uvicorn."""

from __future__ import annotations

import uvicorn

from fedcommon import logging as fedlogging
from fedengine_gateway.app import create_app
from fedengine_gateway.settings import Settings


def main() -> None:
    settings = Settings()
    fedlogging.configure(service="gateway", json_output=settings.log_json)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
