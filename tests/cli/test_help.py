"""Every command's `--help` (issue 11): flags shown as taking no value, arguments in the
usage line by name, and each paragraph of prose whole, however the docstring wraps it."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator

import pytest
import typer.main
from portraitkit_cli.app import app
from portraitkit_cli.output import reflow_help
from typer.testing import CliRunner

WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}


def command_tree(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command and group under ``command``, itself included."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from command_tree(sub, (*path, name))


def lookup(path: tuple[str, ...]) -> object:
    command: object = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


PATHS = list(command_tree(typer.main.get_command(app)))


def help_of(path: tuple[str, ...], env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="portraitkit", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def prose_paragraphs(path: tuple[str, ...]) -> list[str]:
    """The paragraphs of the command's own docstring (or group help) that are prose, each
    as one line; example paragraphs (indented lines) are left out."""
    command = lookup(path)
    callback = getattr(command, "callback", None)
    text = (inspect.getdoc(callback) if callback and path else None) or command.help or ""  # type: ignore[attr-defined]
    paragraphs = [p.strip("\n") for p in inspect.cleandoc(text).split("\n\n")]
    return [
        " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in paragraphs
        if not any(line[:1].isspace() for line in paragraph.splitlines())
    ]


def test_the_tree_has_every_command() -> None:
    names = {" ".join(path) for path in PATHS}

    assert {"batches delete", "users delete", "credits grant", "worker", "db reset"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "portraitkit")
def test_help_shows_flags_without_a_value_and_arguments_without_braces(
    clean_env: None, path: tuple[str, ...]
) -> None:
    out = help_of(path)

    assert "<bool>" not in out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert not re.search(r"\{[^}]*\}", usage), usage
    assert "--help" in out


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "portraitkit")
def test_every_paragraph_of_prose_appears_unbroken(clean_env: None, path: tuple[str, ...]) -> None:
    lines = [line.strip() for line in help_of(path, WIDE).splitlines()]

    for paragraph in prose_paragraphs(path):
        assert paragraph in lines, f"{paragraph!r} is not one line of:\n" + "\n".join(lines)


def test_arguments_appear_in_the_usage_line_by_name(clean_env: None) -> None:
    usages = {
        path: next(line.strip() for line in help_of(path).splitlines() if "Usage:" in line)
        for path in [("users", "create"), ("batches", "watch"), ("credits", "grant")]
    }

    assert usages == {
        ("users", "create"): "Usage: portraitkit users create [OPTIONS] EMAIL",
        ("batches", "watch"): "Usage: portraitkit batches watch [OPTIONS] BATCH_ID",
        ("credits", "grant"): "Usage: portraitkit credits grant [OPTIONS] USER AMOUNT",
    }


def test_examples_keep_their_indentation(clean_env: None) -> None:
    lines = help_of(("users", "list")).splitlines()

    assert "   portraitkit users list --json" in [line.rstrip() for line in lines]


def test_a_flag_given_a_value_is_refused_as_an_extra_argument(clean_env: None) -> None:
    result = CliRunner().invoke(app, ["worker", "--once", "true"], prog_name="portraitkit")

    assert result.exit_code == 2
    assert result.stderr.startswith("error: Got unexpected extra argument")
    assert "(true)" in result.stderr


def test_reflow_joins_prose_and_keeps_examples_line_for_line() -> None:
    text = "First line\n    goes on.\n\n    Second\n    paragraph.\n\n    Examples:\n\n      a\n      b\n"

    assert (
        reflow_help(text) == "First line goes on.\n\n\nSecond paragraph.\n\nExamples:\n\n  a\n  b"
    )
