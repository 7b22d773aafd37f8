"""Logging set-up, done once in each ``__main__`` (style.md, rule 33)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for deployed environments."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("task_id", "round_id", "message_id", "client_id"):
            if hasattr(record, key):
                payload[key] = str(getattr(record, key))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def make_formatter(*, service: str, json_output: bool = False) -> logging.Formatter:
    """Return the formatter every FedEngine process uses."""
    if json_output:
        return JsonFormatter()
    return logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")


def configure(*, service: str, level: str = "INFO", json_output: bool = False) -> None:
    """Configure the root logger for a service process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(service=service, json_output=json_output))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
