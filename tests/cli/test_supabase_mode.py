"""The user commands on a Supabase project (`--supabase-url`), through the test gateway's
PostgREST, Auth and Storage in front of the real database: the same commands, signed in
with PORTRAITKIT_PASSWORD instead of a locally signed token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import respx

from portraitkit import watch
from tests.gateway import Gateway, create_supabase_database, drop_database

from .conftest import Cli, finish_batch

SECRET = "portraitkit-cli-supabase-test-secret-32-bytes-or-more"
BASE_URL = "https://portraitkit-cli-test.supabase.co"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    """A database of this module's own, shaped like a Supabase project (Storage's schema,
    so the bucket policies decide what the CLI may upload)."""
    url = create_supabase_database(database_url, f"t_cli_supabase_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(database_url, url)


@pytest.fixture
def gateway(db_url: str, tmp_path: Path) -> Iterator[Gateway]:
    with respx.mock(assert_all_called=False) as router:
        gateway = Gateway(db_url, SECRET, storage_root=tmp_path / "bucket").mount(router, BASE_URL)
        yield gateway
        gateway.close()


@pytest.fixture
def supabase(
    clean_env: None, gateway: Gateway, monkeypatch: pytest.MonkeyPatch, cli_state_dir: Path
) -> Cli:
    monkeypatch.setenv("SUPABASE_ANON_KEY", gateway.anon_key)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", gateway.service_key)
    monkeypatch.setenv("PORTRAITKIT_PASSWORD", PASSWORD)
    return Cli(None, cli_state_dir, ("--supabase-url", BASE_URL))


def new_user(gateway: Gateway, credits: int = 20) -> str:
    return gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits).email


def test_styles_are_read_with_the_anon_key(supabase: Cli) -> None:
    assert len(supabase.json("styles")) == 15


def test_a_batch_is_created_listed_and_shown(supabase: Cli, gateway: Gateway) -> None:
    user = new_user(gateway)

    created = supabase.json("batches", "create", "-u", user, "--sample", "-s", "noir,poster")
    page = supabase.json("batches", "list", "-u", user)
    shown = supabase.run("batches", "show", created["batch_id"], "-u", user).stdout

    assert (created["credits_charged"], created["balance"]) == (2, 18)
    assert [b["id"] for b in page["items"]] == [created["batch_id"]]
    assert "Film Noir" in shown and "pending" in shown
    uploads = [p for m, p in gateway.requests if m == "POST" and "/object/portraits/" in p]
    assert len(uploads) == 1  # the photo went to Storage


def test_watch_ends_with_the_batch_without_realtime(
    supabase: Cli, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "REALTIME_START_SECONDS", 0.5)  # the gateway has no Realtime
    user = new_user(gateway)
    batch_id = supabase.json("batches", "create", "-u", user, "--sample", "-s", "noir")["batch_id"]
    finish_batch(db_url, batch_id, "completed")

    out = supabase.run("batches", "watch", batch_id, "-u", user, "--backstop", "0.2").stdout

    assert out.strip().splitlines()[-1].startswith(f"batch {batch_id} completed in ")


def test_cancel_and_stats(supabase: Cli, gateway: Gateway) -> None:
    user = new_user(gateway, credits=10)
    batch_id = supabase.json("batches", "create", "-u", user, "--sample", "-s", "noir")["batch_id"]

    cancelled = supabase.json("batches", "cancel", batch_id, "-u", user)

    assert (cancelled["cancelled"], cancelled["refunded"]) == (1, 1)
    assert supabase.json("stats", "-u", user)["balance"] == 10


def test_credits_grant_uses_the_service_role_key(supabase: Cli, gateway: Gateway) -> None:
    user = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, 5)

    granted = supabase.json("credits", "grant", str(user.id), "7")

    assert granted["balance"] == 12


def test_a_wrong_password_is_not_allowed(
    supabase: Cli, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user(gateway)
    monkeypatch.setenv("PORTRAITKIT_PASSWORD", "wrong")

    result = supabase.run("batches", "list", "-u", user, code=5)

    assert result.stderr.startswith("error: Sign-in failed")


def test_users_commands_say_they_are_for_local_databases(supabase: Cli) -> None:
    result = supabase.run("users", "list", code=3)

    assert "users sign up through Supabase Auth" in result.stderr
