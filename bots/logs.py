"""Logging for the process: plain text by default, one JSON object per line with IOBOT_LOG_FORMAT=json.

Every line, tracebacks included, goes out with the password of any URL in it masked, whichever
library logged it and at whatever level.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from core.settings import mask_passwords

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_passwords(super().format(record))


class JSONFormatter(logging.Formatter):
    """time, level, logger, message, plus the structured `fields` a record carries (see Service._record)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask_passwords(json.dumps(entry, default=str))


def configure_logging(level: str, format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def warnings_only() -> None:
    """Let only warnings and errors through to stderr, as while a person chats on the terminal."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
