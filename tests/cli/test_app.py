"""The command line as a whole: help with examples everywhere, shell completion, colours."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from portraitkit_cli.app import app, hoist_global_options
from typer.testing import CliRunner

from .conftest import Cli

MakeUser = Callable[..., str]
COMMANDS = [
    ["db", "up"],
    ["db", "stop"],
    ["db", "status"],
    ["db", "migrate"],
    ["db", "reset"],
    ["db", "new"],
    ["users", "create"],
    ["users", "list"],
    ["users", "delete"],
    ["credits", "grant"],
    ["styles"],
    ["batches", "create"],
    ["batches", "list"],
    ["batches", "show"],
    ["batches", "watch"],
    ["batches", "cancel"],
    ["batches", "retry"],
    ["batches", "delete"],
    ["stats"],
    ["worker"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(clean_env: None, command: list[str]) -> None:
    result = CliRunner().invoke(
        app, [*command, "--help"], prog_name="portraitkit", env={"COLUMNS": "200"}
    )

    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    assert f"portraitkit {' '.join(command)}" in result.stdout


def test_top_level_help_lists_the_exit_codes(clean_env: None) -> None:
    result = CliRunner().invoke(app, ["--help"], prog_name="portraitkit", env={"COLUMNS": "200"})

    assert "4 not found" in result.stdout
    assert "--install-completion" in result.stdout


def test_global_options_are_moved_before_the_command() -> None:
    args = ["batches", "list", "--user", "a", "--json", "--state-dir=/s", "--database-url", "u"]

    assert hoist_global_options(args) == [
        "--json",
        "--state-dir=/s",
        "--database-url",
        "u",
        "batches",
        "list",
        "--user",
        "a",
    ]
    assert hoist_global_options(["x", "--", "--json"]) == ["x", "--", "--json"]


def completions(words: str) -> list[str]:
    """What the shell gets back from `portraitkit` for the words typed so far (bash)."""
    env = {
        **os.environ,
        "_PORTRAITKIT_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    entry = Path(sys.executable).parent / "portraitkit"
    result = subprocess.run([str(entry)], env=env, capture_output=True, text=True, timeout=30)
    return result.stdout.split()


def test_shell_completion_completes_commands_and_options() -> None:
    assert completions("portraitkit batches l") == ["list"]
    assert "--contact-sheet" in completions("portraitkit batches show --c")
    assert {"create", "list", "show", "watch"} <= set(completions("portraitkit batches "))


def test_show_completion_prints_a_script(clean_env: None) -> None:
    result = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="portraitkit")

    assert result.exit_code == 0
    assert "_PORTRAITKIT_COMPLETE=complete_bash" in result.stdout


def test_colours_follow_the_terminal_and_no_color(
    cli: Cli, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    cli.run("batches", "create", "-u", user, "--sample", "-s", "noir")
    yellow_pending = "\x1b[33mpending"

    assert yellow_pending not in cli.run("batches", "list", "-u", user).stdout
    monkeypatch.setenv("FORCE_COLOR", "1")  # as if on a terminal
    assert yellow_pending in cli.run("batches", "list", "-u", user).stdout
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[3" not in cli.run("batches", "list", "-u", user).stdout
