"""Each kind of failure: its own exit code, and one line on stderr saying what went wrong and
what to do; JSON on stderr with --json; the traceback only with -v."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from typer.testing import Result

from .conftest import Cli, finish_batch

MakeUser = Callable[..., str]
UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/nothing?connect_timeout=2"


def one_line_error(result: Result) -> str:
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_an_argument_the_database_refuses_is_bad_input(cli: Cli, make_user: MakeUser) -> None:
    user = make_user()

    result = cli.run("batches", "create", "--user", user, "--sample", "--style", "bogus", code=2)

    assert one_line_error(result) == (
        "error: Unknown style: bogus. See the catalogue with `portraitkit styles`."
    )


def test_a_usage_error_is_bad_input_too(cli: Cli) -> None:
    result = cli.run("batches", "list", code=2)

    line = one_line_error(result)
    assert "Missing option '--user'" in line
    assert line.endswith("See 'portraitkit batches list --help'.")


def test_a_malformed_batch_id_is_bad_input(cli: Cli, make_user: MakeUser) -> None:
    result = cli.run("batches", "show", "not-an-id", "--user", make_user(), code=2)

    assert "valid UUID" in one_line_error(result)


def test_a_missing_batch_is_not_found(cli: Cli, make_user: MakeUser) -> None:
    result = cli.run("batches", "show", str(uuid.uuid4()), "--user", make_user(), code=4)

    assert one_line_error(result) == (
        "error: No such batch for this user. "
        "List the user's batches with `portraitkit batches list --user USER`."
    )


def test_another_users_batch_is_not_found(cli: Cli, make_user: MakeUser) -> None:
    owner, stranger = make_user(), make_user()
    batch_id = cli.json("batches", "create", "-u", owner, "--sample", "-s", "noir")["batch_id"]

    cli.run("batches", "cancel", batch_id, "--user", stranger, code=4)


def test_an_unknown_user_is_not_found(cli: Cli) -> None:
    result = cli.run("batches", "list", "--user", "nobody@example.test", code=4)

    assert one_line_error(result) == (
        "error: No user 'nobody@example.test': create one with `portraitkit users create EMAIL`."
    )


def test_a_batch_over_the_balance_is_insufficient_credits(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=2)

    result = cli.run("batches", "create", "-u", user, "--sample", "-s", "oil_painting", code=6)

    assert one_line_error(result) == (
        "error: This batch costs 3 credits; the balance is 2. "
        "Add credits with `portraitkit credits grant USER N`."
    )


def test_an_unreachable_database_is_unavailable(cli: Cli) -> None:
    result = Cli(UNREACHABLE, cli.state_dir).run("batches", "list", "--user", "a@b.c", code=7)

    line = one_line_error(result)
    assert line.startswith("error: The database cannot be reached: ")
    assert line.endswith("or start the local one with `portraitkit db up`.")


def test_a_finished_batch_cannot_be_cancelled(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user()
    batch_id = cli.json("batches", "create", "-u", user, "--sample", "-s", "noir")["batch_id"]
    finish_batch(db_url, batch_id, "completed")

    result = cli.run("batches", "cancel", batch_id, "--user", user, code=8)

    assert one_line_error(result) == (
        "error: This batch already ended (completed); nothing to cancel."
    )


def test_an_existing_email_is_a_conflict(cli: Cli, make_user: MakeUser) -> None:
    email = make_user()

    result = cli.run("users", "create", email, code=8)

    assert one_line_error(result) == f"error: A user '{email}' already exists."


def test_half_made_settings_are_a_configuration_error(cli: Cli) -> None:
    supabase_without_keys = ["--supabase-url", "https://x.supabase.co"]

    result = Cli(None, cli.state_dir).run(*supabase_without_keys, "styles", code=3)

    assert "SUPABASE_PUBLISHABLE_KEY" in one_line_error(result)


def test_json_errors_are_one_object_on_stderr(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=1)

    result = cli.run(
        "batches", "create", "-u", user, "--sample", "-s", "oil_painting", "--json", code=6
    )

    assert result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "insufficient_credits"
    assert error["details"] == {"required": 3, "available": 1}
    assert error["exit_code"] == 6
    assert error["hint"] == "Add credits with `portraitkit credits grant USER N`."


def test_verbose_adds_the_traceback(cli: Cli, make_user: MakeUser) -> None:
    result = cli.run("-v", "batches", "show", str(uuid.uuid4()), "--user", make_user(), code=4)

    assert result.stderr.startswith("error: No such batch for this user.")
    assert "Traceback (most recent call last)" in result.stderr
    assert "BatchNotFound" in result.stderr
