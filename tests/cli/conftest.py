"""Fixtures for the CLI's tests: Typer's CliRunner on the module's own migrated database
(direct-Postgres mode, `--database-url`), a state directory for the JWT secret and images,
and users made through the CLI itself."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from portraitkit_cli.app import app
from typer.testing import CliRunner, Result

from portraitkit.database import rpc

# Environment that would point the CLI elsewhere than the test asks.
FOREIGN_ENV = (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "PORTRAITKIT_STATE_DIR",
    "PORTRAITKIT_JWT_SECRET",
    "PORTRAITKIT_GENERATOR",
    "PORTRAITKIT_USER",
    "PORTRAITKIT_ACCESS_TOKEN",
    "PORTRAITKIT_PASSWORD",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No database or identity from the environment or a .env file; afterwards, logging
    as it was (`portraitkit worker` points the portraitkit logger at the runner's stderr)."""
    monkeypatch.chdir(tmp_path)
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("portraitkit")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@dataclass
class Cli:
    """The CLI against one database and state directory."""

    database_url: str | None
    state_dir: Path
    global_args: tuple[str, ...] = ()

    def run(self, *args: str, code: int = 0, input: str | None = None) -> Result:
        base = ["--state-dir", str(self.state_dir), *self.global_args]
        if self.database_url:
            base += ["--database-url", self.database_url]
        result = CliRunner().invoke(app, [*base, *args], input=input, prog_name="portraitkit")
        assert result.exit_code == code, (
            f"exit {result.exit_code}, wanted {code}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\n{result.exception!r}"
        )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run("--json", *args).stdout)


@pytest.fixture(scope="module")
def cli_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-state")


@pytest.fixture
def cli(clean_env: None, db_url: str, cli_state_dir: Path) -> Cli:
    return Cli(database_url=db_url, state_dir=cli_state_dir)


@pytest.fixture
def make_user(cli: Cli) -> Any:
    """A new user, made with `users create`; returns its email."""

    def make(credits: int = 50) -> str:
        email = f"u{uuid.uuid4().hex[:10]}@example.test"
        cli.json("users", "create", email, "--credits", str(credits))
        return email

    return make


def service_call(db_url: str, function: str, **args: Any) -> Any:
    """What a worker does to the queue, done directly with the service role."""
    with psycopg.connect(db_url, prepare_threshold=None) as conn:
        return rpc.call(conn, function, args, claims={"role": "service_role"})


def finish_batch(db_url: str, batch_id: str, outcome: str) -> None:
    """Claim this batch's items and complete or fail (for good) every one of them;
    anything else claimed on the way is given back untouched."""
    claimed = service_call(db_url, "claim_generations", worker_id="cli-test", max_items=1000)
    mine = [c for c in claimed if str(c["batch_id"]) == batch_id]
    others = [c["id"] for c in claimed if str(c["batch_id"]) != batch_id]
    if others:
        service_call(db_url, "release_generations", worker_id="cli-test", generation_ids=others)
    for item in mine:
        if outcome == "completed":
            service_call(
                db_url,
                "complete_generation",
                worker_id="cli-test",
                generation_id=item["id"],
                image_path=f"{item['user_id']}/{batch_id}/{item['id']}.png",
            )
        else:
            service_call(
                db_url,
                "fail_generation",
                worker_id="cli-test",
                generation_id=item["id"],
                error="model error",
                retryable=False,
            )
