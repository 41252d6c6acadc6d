"""Log output for the service: logfmt and JSON formatters, and the `--log.*` flag setup.

Structured fields travel as `extra=` on the log call (`log.warning("probe failed",
extra={"target": ..., "stage": ..., "reason": ...})`) and come out as `key=value` pairs (logfmt)
or object members (JSON), after `ts`, `level`, `logger` and `msg`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("logfmt", "json")

# Every attribute a plain LogRecord has; anything else on a record came from `extra=`.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def _timestamp(record: logging.LogRecord) -> str:
    # RFC 3339 in UTC with milliseconds, as the Go exporters print it.
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno, record.levelname.lower())


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> list[tuple[str, Any]]:
    """ts, level, logger, msg, then the extra fields in the order given, then any traceback."""
    out: list[tuple[str, Any]] = [
        ("ts", _timestamp(record)),
        ("level", _level(record)),
        ("logger", record.name),
        ("msg", record.getMessage()),
    ]
    out += [(k, v) for k, v in vars(record).items() if k not in _RESERVED]
    if record.exc_info:
        out.append(("exc", formatter.formatException(record.exc_info)))
    if record.stack_info:
        out.append(("stack", record.stack_info))
    return out


def _logfmt_value(value: Any) -> str:
    text = "" if value is None else str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """`ts=2024-05-01T12:00:00.000Z level=warn logger=... msg="probe failed" target=...`"""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record, self))


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt output."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(_fields(record, self)), default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log record at `level` or above to `stream` (stderr) in `fmt`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
