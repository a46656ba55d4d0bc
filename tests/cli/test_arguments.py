"""Arguments as people type them (issue 11): a negative amount, a user who does not exist,
a style named by its name or in another case."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .conftest import Cli

MakeUser = Callable[..., str]
NO_SUCH_USER = (
    "error: No user 'nobody@example.test': create one with `portraitkit users create EMAIL`.\n"
)


# -- credits grant USER -5 ---------------------------------------------------------------


def test_a_negative_grant_is_refused_by_the_database_as_bad_input(
    cli: Cli, make_user: MakeUser
) -> None:
    user = make_user(credits=10)

    result = cli.run("credits", "grant", user, "-5", code=2)

    assert result.stderr == "error: amount must be between 1 and 1000000.\n"
    assert cli.json("stats", "-u", user)["balance"] == 10


def test_a_negative_grant_in_json_names_the_field(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    result = cli.run("--json", "credits", "grant", user, "-5", "--note", "a debit?", code=2)

    error = json.loads(result.stderr)["error"]
    assert (error["code"], error["details"], error["exit_code"]) == (
        "invalid_input",
        {"field": "amount"},
        2,
    )


# -- one error, one exit code ------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["batches", "list", "--user", "nobody@example.test"],
        ["stats", "--user", "nobody@example.test"],
        ["credits", "grant", "nobody@example.test", "5"],
        ["users", "token", "nobody@example.test"],
        ["users", "delete", "nobody@example.test", "--yes"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_an_unknown_user_is_not_found_from_every_command(cli: Cli, command: list[str]) -> None:
    result = cli.run(*command, code=4)

    assert result.stderr == NO_SUCH_USER


# -- --style by key or name, any case ----------------------------------------------------


@pytest.mark.parametrize("given", ["watercolor", "Watercolor", "watercolour", " WATERCOLOUR "])
def test_a_style_is_named_by_its_key_or_name_in_any_case(
    cli: Cli, make_user: MakeUser, given: str
) -> None:
    user = make_user(credits=10)

    created = cli.json("batches", "create", "-u", user, "--sample", "--style", given)

    assert created["styles"] == ["watercolor"]


def test_names_and_keys_mix_in_one_comma_separated_list(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    created = cli.json("batches", "create", "-u", user, "--sample", "-s", "Noir, pop art,POSTER")

    assert created["styles"] == ["noir", "pop_art", "poster"]


def test_an_unknown_style_suggests_the_closest_key(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    result = cli.run("batches", "create", "-u", user, "--sample", "-s", "watercolr", code=2)

    assert result.stderr == (
        "error: Unknown style: watercolr. Did you mean 'watercolor'? "
        "See the catalogue with `portraitkit styles`.\n"
    )
    assert cli.json("stats", "-u", user)["balance"] == 10


def test_unknown_styles_in_json_carry_a_suggestion_each(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    result = cli.run(
        "--json", "batches", "create", "-u", user, "--sample", "-s", "nior,popart", code=2
    )

    error = json.loads(result.stderr)["error"]
    assert error["code"] == "unknown_style"
    assert error["details"] == {
        "style_keys": ["nior", "popart"],
        "suggestions": {"nior": "noir", "popart": "pop_art"},
    }


def test_a_style_nothing_like_any_other_gets_no_suggestion(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    result = cli.run("batches", "create", "-u", user, "--sample", "-s", "zzzzzz", code=2)

    assert result.stderr == (
        "error: Unknown style: zzzzzz. See the catalogue with `portraitkit styles`.\n"
    )
