"""Structured log lines: ``time level message key=value ...`` from a record's extras.

The worker logs every item with ``item``, ``batch``, ``attempt``, ``duration_ms`` and
``outcome`` as extras; this formatter prints them as key=value pairs so people can read
the lines and programs can split them. Quiet by default (warnings and the worker's start
and stop), every item with ``verbose``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _value(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extras = " ".join(
            f"{key}={_value(value)}" for key, value in vars(record).items() if key not in _STANDARD
        )
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.getMessage()}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _QuietFilter(logging.Filter):
    """Without -v: warnings, plus the worker's start and stop lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "event", None) in (
            "start",
            "stop",
        )


def configure_logging(verbose: bool = False, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    if not verbose:
        handler.addFilter(_QuietFilter())
    root = logging.getLogger("portraitkit")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
