"""`batches delete` and `users delete` (issue 11): they ask first on a terminal, need --yes
without one, and leave nothing behind: no rows, no images, no empty folders."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from .conftest import Cli, service_call

MakeUser = Callable[..., str]
NEEDS_YES = "error: This deletes data and there is no terminal to ask on: pass --yes to go ahead.\n"


def create(cli: Cli, user: str, *styles: str) -> str:
    args = [a for s in styles for a in ("--style", s)]
    return str(cli.json("batches", "create", "--user", user, "--sample", *args)["batch_id"])


def user_id(cli: Cli, email: str) -> str:
    return str(next(u["id"] for u in cli.json("users", "list") if u["email"] == email))


def stored_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file())


def run_in_terminal(cli: Cli, *args: str, answer: str) -> tuple[int, str]:
    """Run the real command with a terminal on stdin, and answer its question."""
    assert cli.database_url is not None
    command = [
        sys.executable,
        "-c",
        "from portraitkit_cli.app import main; main()",
        "--state-dir",
        str(cli.state_dir),
        "--database-url",
        cli.database_url,
        *args,
    ]
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "NO_COLOR": "1"},
        close_fds=True,
    )
    os.close(terminal)
    output, answered, deadline = b"", False, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the command ended and closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not answered and output.endswith(b"[y/N]: "):  # the whole prompt, then answer
                os.write(controller, answer.encode() + b"\n")
                answered = True
        return process.wait(timeout=30), output.decode().replace("\r\n", "\n")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


# -- batches delete ----------------------------------------------------------------------


def test_batches_delete_without_a_terminal_needs_yes(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    result = cli.run("batches", "delete", batch_id, "-u", user, input="y\n", code=2)

    assert result.stderr == NEEDS_YES
    assert cli.json("batches", "show", batch_id, "-u", user)["id"] == batch_id


def test_batches_delete_without_a_terminal_in_json_says_why(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    result = cli.run("--json", "batches", "delete", batch_id, "-u", user, code=2)

    assert '"code": "confirmation_required"' in result.stderr


def test_batches_delete_asks_on_a_terminal_and_keeps_the_batch_on_no(
    cli: Cli, make_user: MakeUser
) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    code, output = run_in_terminal(cli, "batches", "delete", batch_id, "-u", user, answer="n")

    assert code == 1
    assert f"Delete batch {batch_id} of {user} with its images? [y/N]: n\n" in output
    assert output.endswith("error: Nothing was deleted (pass --yes to skip the question).\n")
    assert cli.json("batches", "show", batch_id, "-u", user)["id"] == batch_id


def test_batches_delete_on_a_terminal_deletes_on_yes(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir")

    code, output = run_in_terminal(cli, "batches", "delete", batch_id, "-u", user, answer="y")

    assert code == 0, output
    assert output.endswith(f"deleted batch {batch_id} and 0 images; refunded 1 credit\n")
    cli.run("batches", "show", batch_id, "-u", user, code=4)


def test_batches_delete_removes_the_images_and_their_folder(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "poster")
    cli.run("worker", "--once", "--generator", "noop")
    user_folder = cli.state_dir / "storage" / "portraits" / user_id(cli, user)
    assert len(stored_files(user_folder / batch_id)) == 2

    out = cli.run("batches", "delete", batch_id, "-u", user, "--yes").stdout

    assert out == f"deleted batch {batch_id} and 2 images; refunded 0 credits\n"
    assert not (user_folder / batch_id).exists()
    assert [f.parent.name for f in stored_files(user_folder)] == ["sources"]  # the photo stays


# -- users delete ------------------------------------------------------------------------


def rows_of(db_url: str, uid: str) -> dict[str, int]:
    counts = {}
    with psycopg.connect(db_url) as conn:
        for table, column in [
            ("auth.users", "id"),
            ("public.profiles", "id"),
            ("public.generation_batches", "user_id"),
            ("public.generations", "user_id"),
            ("public.credit_ledger", "user_id"),
        ]:
            row = conn.execute(f"select count(*) from {table} where {column} = %s", (uid,))
            counts[table] = int(row.fetchone()[0])  # type: ignore[index]
    return counts


def test_users_delete_removes_the_account_its_rows_and_its_images(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    doomed, other = make_user(credits=20), make_user(credits=20)
    create(cli, doomed, "noir", "poster")
    create(cli, doomed, "pop_art")
    create(cli, other, "noir")
    cli.run("worker", "--once", "--generator", "noop")
    doomed_id, other_id = user_id(cli, doomed), user_id(cli, other)
    storage = cli.state_dir / "storage" / "portraits"
    before = rows_of(db_url, other_id), stored_files(storage / other_id)

    deleted = cli.json("users", "delete", doomed, "--yes")

    assert deleted == {
        "id": doomed_id,
        "email": doomed,
        "batches": 2,
        "generations": 3,
        "ledger_entries": 2,  # two debits, kept; nothing refunded
        "images_removed": 4,  # one source photo, three results
    }
    rows = rows_of(db_url, doomed_id)
    # The ledger outlives the account (docs/contract.md, "Credits"): nothing else stays.
    assert rows.pop("public.credit_ledger") == 2
    assert set(rows.values()) == {0}
    assert not (storage / doomed_id).exists()
    assert doomed not in [u["email"] for u in cli.json("users", "list")]
    assert (rows_of(db_url, other_id), stored_files(storage / other_id)) == before


def test_users_delete_prints_what_went(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)
    create(cli, user, "noir")

    out = cli.run("users", "delete", user, "-y").stdout

    assert out.startswith(f"deleted {user} (")
    assert out.endswith("): 1 batch, 1 image, 1 ledger entry kept\n")


def user_id_from(claimed: list[dict[str, object]], batch_id: str) -> str:
    return str(next(c["user_id"] for c in claimed if str(c["batch_id"]) == batch_id))


def test_users_delete_takes_running_items_with_it(
    cli: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user(credits=10)
    batch_id = create(cli, user, "noir", "poster")
    claimed = service_call(db_url, "claim_generations", worker_id="busy", max_items=1000)
    assert batch_id in {str(c["batch_id"]) for c in claimed}

    cli.run("users", "delete", user, "--yes")

    rows = rows_of(db_url, user_id_from(claimed, batch_id))
    assert rows.pop("public.credit_ledger") == 1  # the debit, kept
    assert set(rows.values()) == {0}


def test_users_delete_without_a_terminal_needs_yes(cli: Cli, make_user: MakeUser) -> None:
    user = make_user(credits=10)

    result = cli.run("users", "delete", user, input="y\n", code=2)

    assert result.stderr == NEEDS_YES
    assert user in [u["email"] for u in cli.json("users", "list")]


def test_users_delete_asks_on_a_terminal(cli: Cli, make_user: MakeUser) -> None:
    kept, gone = make_user(credits=10), make_user(credits=10)

    no = run_in_terminal(cli, "users", "delete", kept, answer="n")
    yes = run_in_terminal(cli, "users", "delete", gone, answer="y")

    assert no[0] == 1
    assert f"Delete {kept} with every batch, credit and image of theirs? [y/N]: n\n" in no[1]
    assert yes[0] == 0, yes[1]
    emails = [u["email"] for u in cli.json("users", "list")]
    assert (kept in emails, gone in emails) == (True, False)
