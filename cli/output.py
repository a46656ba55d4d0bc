"""Rendering shared by all commands: JSON for programs, rich for people, one-line errors."""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from rich.console import Console


def console() -> Console:
    """A console on the current stdout (looked up late, so test runners can capture it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def emit_json(data: dict[str, Any]) -> None:
    """Machine-readable output: one JSON document on stdout, keys in a fixed order."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def error_code(exc: BaseException) -> str:
    """The exception's stable code if it has one, else its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


def report_error(exc: BaseException, *, as_json: bool, verbose: bool) -> None:
    """One line on stderr; the full message and traceback only with -v."""
    message = str(exc).strip() or type(exc).__name__
    first_line = message.splitlines()[0]
    if as_json:
        payload = {"error": {"code": error_code(exc), "message": message}}
        sys.stderr.write(json.dumps(payload) + "\n")
    elif verbose:
        traceback.print_exception(exc, file=sys.stderr)
    else:
        more = " (run with -v for details)" if first_line != message else ""
        sys.stderr.write(f"error: {first_line}{more}\n")
