"""Structured one-line logs: JSON by default, key=value with --log-format kv.

Why: operators grep and ship logs; one event per line with stable keys (event, model, request_id)
beats prose. Call sites use the standard `logging` API and pass fields through `extra=`. Every
line starts with ts, level, logger and msg; the event's own fields follow (they cannot overwrite
those four). docs/logging.md lists the events.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from service.errors import MAX_MESSAGE_CHARS, bounded

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict:
    data = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": bounded(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_") and key not in data:
            data[key] = bounded(value) if isinstance(value, str) else value
    if record.exc_info:  # a traceback is longer than a message, but still bounded
        data["exception"] = bounded(logging.Formatter().formatException(record.exc_info), 16 * MAX_MESSAGE_CHARS)
    return data


def _kv_text(value) -> str:
    """One value of a key=value line: bare when safe, else a JSON string (so it stays one line)."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, dict, list, tuple)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    if not text or not text.isprintable() or any(c in text for c in ' ="'):
        text = json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_kv_text(value)}" for key, value in _fields(record).items())


def configure_logging(log_format: str = "json", level: str = "info", stream=None) -> None:
    """Send every log record of the process through one handler with the chosen formatter.

    convserve's loggers log at `level`; other libraries (grpc, asyncio, Python warnings) at warning
    and above, in the same format, so stderr carries nothing but structured lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("convserve")
    ours.handlers[:] = []
    ours.setLevel(level.upper())
    ours.propagate = True
    logging.captureWarnings(True)
