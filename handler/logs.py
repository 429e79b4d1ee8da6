"""Structured JSON logs for the worker: one line per event, ids as fields.

The field names match what the control plane logs through powertools (`batch_id`, `chunk_id`,
`custom_id`), so one query follows a chunk across both sides.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "INFO") -> None:
    """Send the `handler` loggers to stderr as JSON. Safe to call more than once."""
    logger = logging.getLogger("handler")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    logger.addHandler(stream)
    logger.setLevel(level)
    logger.propagate = False
