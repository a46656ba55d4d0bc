"""Rendering shared by all commands: JSON for programs, rich for people, one-line errors."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from portraitkit.errors import InvalidInput, PortraitkitError

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


# -- help --------------------------------------------------------------------------------


def reflow_help(text: str | None) -> str | None:
    """Help text as the help screen should wrap it.

    Each prose paragraph becomes one line, so the help's own wrapping cannot break it
    where the docstring happened to (mid-sentence); a paragraph with indented lines
    (examples) is kept line for line, its indentation too.
    """
    if not text:
        return text
    first, *rest = [
        paragraph
        if any(line[:1].isspace() for line in paragraph.splitlines())
        else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in inspect.cleandoc(text).split("\n\n")
    ]
    if not rest:
        return first
    # Typer dedents everything after the first paragraph as one block, which would strip
    # the examples' indentation whenever no other line there starts at the margin; an
    # empty line leading that block keeps it (Typer drops the empty line itself).
    return first + "\n\n\n" + "\n\n".join(rest)


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """Flags (`--json`, `--once`, `--help`) shown bare, not as taking a `<bool>`."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help reads as written: prose unbroken (see reflow_help), flags
    without a value, and the usage line naming arguments as `BATCH_ID` or `[NAME]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name or "").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class Group(TyperGroup):
    """A command group with the same help as `Command`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


class Typer(typer.Typer):
    """`typer.Typer` whose commands and groups are `Command` and `Group`."""

    def __init__(self, *, cls: type[TyperGroup] = Group, **kwargs: Any) -> None:
        super().__init__(cls=cls, **kwargs)

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] = Command, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls, **kwargs)


# `--yes` for every command that destroys something; see confirm_or_refuse.
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")]


def confirm_or_refuse(question: str, *, declined: str, code: str) -> None:
    """Ask ``question`` on the terminal and go on only on a yes.

    Without a terminal (a pipe, a script, CI) there is no one to ask, so nothing is
    destroyed on a guess: the command is refused (exit 2) and says to pass --yes.
    """
    if not sys.stdin.isatty():
        raise InvalidInput(
            "This deletes data and there is no terminal to ask on: pass --yes to go ahead.",
            code="confirmation_required",
        )
    try:
        confirmed = typer.confirm(question, err=True)
    except typer.Abort:  # no answer (Ctrl-D): the safe one
        confirmed = False
    if not confirmed:
        raise PortraitkitError(declined, code=code)


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


def command_name() -> str:
    """How to type this program again in the user's shell, for "next:" lines: plain
    ``portraitkit`` when that is on PATH and is this program, else the path it was run
    by (``.venv/bin/portraitkit`` from the project's folder, before the venv is activated)."""
    me = Path(sys.argv[0]).resolve()
    found = shutil.which("portraitkit")
    if (found is not None and Path(found).resolve() == me) or me.name != "portraitkit":
        return "portraitkit"
    try:
        return str(me.relative_to(Path.cwd()))
    except ValueError:
        return str(me)
