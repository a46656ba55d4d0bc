"""Rendering shared by all commands: JSON for programs, rich for people, one-line errors."""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from .exit_codes import exit_code_for, hint_for, message_for

# Tables are not wrapped into a pipe's default 80 columns (ids would break across lines).
PIPE_WIDTH = 200


def console(stderr: bool = False) -> Console:
    """A console on the current stdout (looked up late, so test runners can capture it).

    Rich turns colour off by itself when the output is not a terminal or NO_COLOR is set.
    """
    file = sys.stderr if stderr else sys.stdout
    width = None if file.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(file=file, highlight=False, soft_wrap=True, width=width)


def jsonable(data: Any) -> Any:
    """Pydantic models (and lists of them) as their JSON shape; anything else as is."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [jsonable(item) for item in data]
    return data


def emit_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, keys in a fixed order."""
    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str) + "\n")


def error_code(exc: BaseException) -> str:
    """The exception's stable code if it has one, else its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


def report_error(exc: BaseException, *, as_json: bool, verbose: bool) -> int:
    """One line on stderr (the problem, then what to do); returns the exit code.

    With -v the traceback follows; with --json the line is a JSON object.
    """
    exit_code = exit_code_for(exc)
    message = message_for(exc)
    hint = hint_for(exc)
    if as_json:
        to_dict = getattr(exc, "to_dict", None)
        payload = to_dict() if callable(to_dict) else {"code": error_code(exc), "message": message}
        payload = {**payload, "message": message, "hint": payload.get("hint") or hint}
        sys.stderr.write(json.dumps({"error": {**payload, "exit_code": exit_code}}, default=str))
        sys.stderr.write("\n")
    else:
        first_line = message.splitlines()[0] if message else error_code(exc)
        line = f"error: {first_line}"
        if hint and hint not in line:
            line += f" {hint}"
        if first_line != message and not verbose:
            line += " (run with -v for details)"
        sys.stderr.write(line + "\n")
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    return exit_code


def report_usage_error(message: str, command_path: str, *, as_json: bool) -> None:
    """A usage error in the same one-line shape as every other error."""
    hint = f"See '{command_path} --help'."
    message = message.strip()
    if not message.endswith((".", "!", "?")):
        message += "."
    if as_json:
        payload = {"code": "usage_error", "message": message, "hint": hint, "exit_code": 2}
        sys.stderr.write(json.dumps({"error": payload}) + "\n")
    else:
        sys.stderr.write(f"error: {message} {hint}\n")
