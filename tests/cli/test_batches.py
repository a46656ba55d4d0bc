"""`portraitkit styles | users | credits | batches | stats | worker` through Typer's runner,
in direct-Postgres mode (`--database-url`), acting as users made by the CLI itself."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from PIL import Image

from portraitkit.generators.sample import sample_portrait_png

from .conftest import Cli, finish_batch

MakeUser = Callable[..., str]
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def create(cli: Cli, user: str, *styles: str) -> str:
    args = [a for s in styles for a in ("--style", s)]
    return str(cli.json("batches", "create", "--user", user, "--sample", *args)["batch_id"])


# -- catalogue, users, credits ----------------------------------------------------------


def test_styles_json_is_the_catalogue_in_category_order(cli: Cli) -> None:
    styles = cli.json("styles")

    assert len(styles) == 15
    assert [s["category"] for s in styles] == sorted(s["category"] for s in styles)
    assert styles[0].keys() >= {"key", "name", "category", "credit_cost", "description"}
    assert {s["key"]: s["credit_cost"] for s in styles}["oil_painting"] == 3


def test_styles_table_groups_by_category_with_costs(cli: Cli) -> None:
    out = cli.run("styles").stdout

    for category in ("Drawing", "Painting", "Graphic", "Digital", "Photo"):
        assert category in out
    assert re.search(r"oil_painting\s+│\s+Oil Painting\s+│\s+3\s+│", out)


def test_users_create_sets_the_starting_credits(cli: Cli) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.test"

    account = cli.json("users", "create", email, "--credits", "12")

    assert list(account) == ["id", "email", "balance", "starting_credits", "batches", "created_at"]
    assert (account["email"], account["balance"], account["starting_credits"]) == (email, 12, 12)
    assert account["batches"] == 0


def test_users_create_without_credits_gets_the_trial(cli: Cli) -> None:
    account = cli.json("users", "create", f"{uuid.uuid4().hex[:8]}@example.test")

    assert account["balance"] == 30


def test_users_list_shows_every_user(cli: Cli, make_user: MakeUser) -> None:
    email = make_user(credits=7)

    users = cli.json("users", "list")
    table = cli.run("users", "list").stdout

    assert {u["email"]: u["balance"] for u in users}[email] == 7
    assert email in table


def test_credits_grant_adds_to_the_balance_and_the_ledger(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    email = make_user(credits=5)

    granted = cli.json("credits", "grant", email, "20", "--note", "support 42")

    assert granted == {"user": email, "granted": 20, "balance": 25}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select l.kind::text, l.delta, l.note from public.credit_ledger l"
            " join auth.users u on u.id = l.user_id where u.email = %s",
            (email,),
        ).fetchall()
    assert rows == [("grant", 20, "support 42")]


# -- batches ----------------------------------------------------------------------------


def test_create_prints_the_batch_id_and_the_charge(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=50)

    out = cli.run(
        "batches", "create", "--user", user, "--sample", "--style", "watercolor", "--style", "noir"
    ).stdout

    expected = rf"created batch {UUID_PATTERN}: 2 styles, charged 3 credits \(balance 47\)"
    assert re.search(expected, out)


def test_create_json_takes_comma_separated_styles_and_an_image(
    cli: Cli, make_user: MakeUser, tmp_path: Path
) -> None:
    user = make_user(credits=50)
    photo = tmp_path / "me.png"
    photo.write_bytes(sample_portrait_png())

    created = cli.json(
        "batches",
        "create",
        "-u",
        user,
        "--image",
        str(photo),
        "-s",
        "pop_art,pixel_art",
        "--prompt",
        "golden hour",
    )

    assert list(created) == ["batch_id", "styles", "credits_charged", "balance"]
    assert created["styles"] == ["pop_art", "pixel_art"]
    assert (created["credits_charged"], created["balance"]) == (3, 47)
    batch = cli.json("batches", "show", created["batch_id"], "-u", user)
    assert batch["custom_prompt"] == "golden hour"


def test_a_user_can_be_named_by_id(cli: Cli, make_user: MakeUser) -> None:
    email = make_user()
    user_id = {u["email"]: u["id"] for u in cli.json("users", "list")}[email]
    batch_id = create(cli, email, "noir")

    assert cli.json("batches", "show", batch_id, "--user", user_id)["id"] == batch_id


def test_list_is_the_gallery_table(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user()
    batch_id = create(cli, user, "noir", "poster")
    finish_batch(db_url, batch_id, "completed")

    out = cli.run("batches", "list", "--user", user).stdout

    row = next(line for line in out.splitlines() if batch_id in line)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row)
    assert "poster" in row or "noir" in row  # the cover: the first style to complete
    assert "2/2 photos" in row
    assert "completed" in row
    assert "100%" in row


def test_list_pages_with_the_cursor(cli: Cli, make_user: MakeUser) -> None:
    user = make_user()
    made = [create(cli, user, "noir") for _ in range(3)]

    first = cli.json("batches", "list", "--user", user, "--limit", "2")
    cursor = first["next_cursor"]
    second = cli.json("batches", "list", "--user", user, "--limit", "2", "--after", cursor)

    assert list(first) == ["items", "next_cursor"]
    assert [b["id"] for b in first["items"] + second["items"]] == made[::-1]
    assert second["next_cursor"] is None
    assert "--after" in cli.run("batches", "list", "--user", user, "--limit", "2").stdout


def test_list_filters_by_status(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user()
    done = create(cli, user, "noir")
    create(cli, user, "poster")
    finish_batch(db_url, done, "completed")

    page = cli.json("batches", "list", "--user", user, "--status", "completed")

    assert [b["id"] for b in page["items"]] == [done]


def test_show_details_every_item(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user()
    batch_id = create(cli, user, "noir", "poster")
    finish_batch(db_url, batch_id, "failed")

    batch = cli.json("batches", "show", batch_id, "--user", user)
    out = cli.run("batches", "show", batch_id, "--user", user).stdout

    assert batch["status"] == "failed"
    assert [(i["style_key"], i["status"], i["attempts"]) for i in batch["items"]] == [
        ("noir", "failed", 1),
        ("poster", "failed", 1),
    ]
    assert "Film Noir" in out and "Poster" in out
    assert out.count("model error") == 2
    assert "1/3" in out


def test_show_writes_a_contact_sheet(cli: Cli, make_user: MakeUser, tmp_path: Path) -> None:
    user = make_user()
    batch_id = create(cli, user, "noir", "poster", "pixel_art")
    cli.run("worker", "--once", "--generator", "noop")
    sheet = tmp_path / "sheet.png"

    out = cli.run("batches", "show", batch_id, "--user", user, "--contact-sheet", str(sheet)).stdout

    with Image.open(sheet) as image:
        image.verify()
    with Image.open(sheet) as image:
        assert image.size == (516, 724)  # 4 tiles, the source and 3 results: 2 by 2
    assert str(sheet) in out
    assert str(cli.state_dir / "storage" / "portraits") in out  # where each image is


def test_worker_once_makes_the_images(cli: Cli, make_user: MakeUser) -> None:
    user = make_user()
    batch_id = create(cli, user, "noir", "poster")

    stats = cli.json("worker", "--once", "--concurrency", "2", "--generator", "noop")

    batch = cli.json("batches", "show", batch_id, "--user", user)
    assert stats["completed"] >= 2
    assert batch["status"] == "completed"
    for item in batch["items"]:
        assert (cli.state_dir / "storage" / "portraits" / item["generated_image_url"]).is_file()


def test_cancel_refunds_what_had_not_started(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "poster")

    result = cli.json("batches", "cancel", batch_id, "--user", user)

    assert result == {"batch_id": batch_id, "cancelled": 2, "refunded": 2, "status": "cancelled"}
    assert cli.json("stats", "--user", user)["balance"] == 10


def test_retry_charges_the_failed_items_again(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "ink_wash")
    finish_batch(db_url, batch_id, "failed")

    result = cli.json("batches", "retry", batch_id, "--user", user)
    out = cli.run("batches", "show", batch_id, "--user", user).stdout

    assert result == {"batch_id": batch_id, "retried": 2, "charged": 3, "status": "pending"}
    assert out.count("pending") >= 3


def test_delete_removes_the_batch(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    result = cli.json("batches", "delete", batch_id, "--user", user, "--yes")

    assert (result["deleted"], result["refunded"]) == (True, 1)
    cli.run("batches", "show", batch_id, "--user", user, code=4)


def test_stats_sums_up_a_user(cli: Cli, make_user: MakeUser, db_url: str) -> None:
    user = make_user(credits=20)
    finish_batch(db_url, create(cli, user, "noir", "poster"), "completed")

    stats = cli.json("stats", "--user", user)
    out = cli.run("stats", "--user", user).stdout

    assert (stats["batches"], stats["completed"], stats["credits_spent"]) == (1, 2, 2)
    assert stats["balance"] == 18
    assert "100%" in out and "balance" in out


def test_global_options_work_after_the_command(cli: Cli, make_user: MakeUser) -> None:
    user = make_user()
    assert cli.database_url is not None

    result = Cli(None, cli.state_dir).run(
        "batches", "list", "--user", user, "--json", "--database-url", cli.database_url
    )

    assert result.stdout.startswith("{")


def test_output_has_no_terminal_codes_when_not_a_terminal(cli: Cli, make_user: MakeUser) -> None:
    user = make_user()
    create(cli, user, "noir")

    for args in (["styles"], ["batches", "list", "--user", user], ["users", "list"]):
        assert "\x1b[" not in cli.run(*args).stdout
