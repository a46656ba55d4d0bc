"""What the commands say (issue 11): counts with the right noun, what a batch was charged
net of its refunds, and a refused photo named with the formats and limits that apply."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
from PIL import Image

from .conftest import Cli, finish_batch

MakeUser = Callable[..., str]
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def create(cli: Cli, user: str, *styles: str) -> str:
    args = [a for s in styles for a in ("--style", s)]
    return str(cli.json("batches", "create", "--user", user, "--sample", *args)["batch_id"])


def ledger_net(db_url: str, batch_id: str) -> int:
    """What the batch cost its user, as the credit ledger records it."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select coalesce(-sum(delta), 0) from public.credit_ledger where batch_id = %s",
            (batch_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- one, many ---------------------------------------------------------------------------


def test_create_says_one_style_and_one_credit(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    out = cli.run("batches", "create", "-u", user, "--sample", "-s", "noir").stdout

    assert re.search(rf"created batch {UUID_PATTERN}: 1 style, charged 1 credit \(balance 9\)", out)


def test_cancel_says_one_item_and_one_credit(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    out = cli.run("batches", "cancel", batch_id, "-u", user).stdout

    assert out == "cancelled 1 item, refunded 1 credit; batch is cancelled\n"


def test_users_create_and_credits_grant_say_one_credit(cli: Cli) -> None:
    created = cli.run("users", "create", "one@example.test", "--credits", "1").stdout
    granted = cli.run("credits", "grant", "one@example.test", "1").stdout

    assert created.endswith("), 1 credit\n")
    assert granted == "granted 1 credit to one@example.test: balance 2\n"


# -- charged, refunded, net --------------------------------------------------------------


def test_a_cancelled_batch_shows_its_refunds_and_a_net_of_zero(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "poster")  # 1 + 1 credits
    cli.run("batches", "cancel", batch_id, "-u", user)

    out = cli.run("batches", "show", batch_id, "-u", user).stdout
    data = cli.json("batches", "show", batch_id, "-u", user)

    assert "credits   charged 2 credits, 2 refunded (net 0)\n" in out
    assert (data["credits_charged"], data["refunded_credits"], data["net_credits"]) == (2, 2, 0)
    assert ledger_net(db_url, batch_id) == 0


def test_a_failed_batch_shows_its_refunds_in_the_watch_summary(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "oil_painting")  # 1 + 3 credits
    finish_batch(db_url, batch_id, "failed")

    summary = cli.run("batches", "watch", batch_id, "-u", user).stdout.strip().splitlines()[-1]
    data = cli.json("batches", "watch", batch_id, "-u", user)

    assert summary.endswith("; 4 credits charged, 4 refunded (net 0)")
    assert (data["refunded_credits"], data["net_credits"]) == (4, 0)


def test_a_batch_with_nothing_refunded_says_only_what_it_charged(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "poster")
    finish_batch(db_url, batch_id, "completed")

    out = cli.run("batches", "show", batch_id, "-u", user).stdout
    data = cli.json("batches", "show", batch_id, "-u", user)

    assert "credits   charged 2 credits\n" in out
    assert (data["refunded_credits"], data["net_credits"]) == (0, 2)


def test_the_net_charge_after_a_retry_is_what_the_ledger_says(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user(credits=20)
    batch_id = create(cli, user, "noir", "oil_painting")  # 1 + 3 credits
    finish_batch(db_url, batch_id, "failed")  # both refunded
    cli.run("batches", "retry", batch_id, "-u", user)  # both charged again
    finish_batch(db_url, batch_id, "completed")

    data = cli.json("batches", "show", batch_id, "-u", user)

    assert (data["credits_charged"], data["refunded_credits"], data["net_credits"]) == (4, 0, 4)
    assert ledger_net(db_url, batch_id) == 4


# -- a refused photo ---------------------------------------------------------------------


def test_a_file_that_is_not_an_image_is_named_with_the_accepted_formats(
    cli: Cli, make_user: MakeUser, tmp_path: Path
) -> None:
    user = make_user(credits=10)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")

    result = cli.run("batches", "create", "-u", user, "--image", str(notes), "-s", "noir", code=2)

    assert result.stderr == (
        f"error: {notes} is not a readable image; accepted formats: JPEG, PNG, WebP.\n"
    )
    assert cli.json("stats", "-u", user)["balance"] == 10


def test_an_unsupported_format_is_named(cli: Cli, make_user: MakeUser, tmp_path: Path) -> None:
    user = make_user(credits=10)
    gif = tmp_path / "me.gif"
    Image.new("RGB", (100, 100)).save(gif)

    result = cli.run("batches", "create", "-u", user, "--image", str(gif), "-s", "noir", code=2)

    assert result.stderr == f"error: {gif} is a GIF image; accepted formats: JPEG, PNG, WebP.\n"


def test_a_photo_over_the_pixel_limit_says_both_in_megapixels(
    cli: Cli, make_user: MakeUser, tmp_path: Path
) -> None:
    user = make_user(credits=10)
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 7000)).save(huge)

    result = cli.run("batches", "create", "-u", user, "--image", str(huge), "-s", "noir", code=2)

    assert result.stderr == (
        f"error: {huge} is 9000x7000 (63.0 megapixels); the limit is 40 megapixels.\n"
    )


def test_a_refused_photo_in_json_carries_its_name_and_the_formats(
    cli: Cli, make_user: MakeUser, tmp_path: Path
) -> None:
    user = make_user(credits=10)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")

    result = cli.run(
        "--json", "batches", "create", "-u", user, "--image", str(notes), "-s", "noir", code=2
    )

    error = json.loads(result.stderr)["error"]
    assert error["code"] == "invalid_image"
    assert error["details"] == {
        "field": "source",
        "accepted": ["JPEG", "PNG", "WebP"],
        "name": str(notes),
    }
