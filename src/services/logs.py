"""Logging set-up: text or JSON lines, and secrets redacted from every record.

Records carry `job_id`, `stage`, `user_id`, `host_id` and `worker` when the code logging them
passes them in `extra`; the JSON format writes them as fields. The redaction filter runs on
the handler, so it covers every logger (ours, uvicorn's, the SDKs'): API tokens, bearer and
Convex credentials, and `key=value` pairs whose key looks secret become `***`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

from src.config import Settings

CONTEXT_FIELDS = ("job_id", "stage", "user_id", "host_id", "worker", "operation")

SECRET_PATTERNS = [
    (re.compile(r"bjt_[A-Za-z0-9_\-]{8,}"), "bjt_***"),
    (re.compile(r"(?i)\b(bearer|convex|basic)\s+[A-Za-z0-9._~+/=\-|:]{8,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)([\"']?[\w\-]*(?:secret|password|passwd|token|api[_-]?key|access[_-]?key|"
            r"deploy[_-]?key|credential)[\w\-]*[\"']?\s*[=:]\s*)([\"']?)[^\s\"',;&}]+"
        ),
        r"\1\2***",
    ),
]


def redact_text(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites the formatted message (and exception text) of each record without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [
            f"{field}={getattr(record, field)}"
            for field in CONTEXT_FIELDS
            if getattr(record, field, None) is not None
        ]
        return f"{text} [{' '.join(context)}]" if context else text


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Replace the root logger's handlers with one that redacts and formats as configured."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if settings.bulkjobs_log_format == "json" else TextFormatter()
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.bulkjobs_log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
