"""`portraitkit db ...` through Typer's CliRunner, reading the --json output."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from portraitkit_cli.app import app
from typer.testing import CliRunner

from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import local_migrations
from portraitkit.database.schema_files import schema_dirs

from .conftest import Cli

LOCAL_VERSIONS = [m.version for m in local_migrations(schema_dirs().migrations)]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The CLI's own embedded server (these tests stop it)."""
    path = tmp_path_factory.mktemp("pg-cli")
    yield path
    EmbeddedPostgres(path).stop()


@pytest.fixture
def runner(clean_env: None) -> CliRunner:
    return CliRunner()


def run_json(runner: CliRunner, state_dir: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["--json", "--state-dir", str(state_dir), *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_up_starts_the_server_and_applies_every_migration(
    runner: CliRunner, state_dir: Path
) -> None:
    data = run_json(runner, state_dir, "db", "up")

    assert list(data) == ["mode", "url", "port", "state_dir", "pgdata", "applied"]
    assert data["mode"] == "embedded"
    assert data["state_dir"] == str(state_dir.resolve())
    assert data["url"].endswith(f"@127.0.0.1:{data['port']}/postgres")
    assert data["applied"] == LOCAL_VERSIONS


def test_up_again_applies_nothing_and_keeps_the_port(runner: CliRunner, state_dir: Path) -> None:
    first = run_json(runner, state_dir, "db", "up")
    second = run_json(runner, state_dir, "db", "up")

    assert second["applied"] == []
    assert second["port"] == first["port"]


def test_status_shows_the_server_and_migrations(runner: CliRunner, state_dir: Path) -> None:
    run_json(runner, state_dir, "db", "up")

    data = run_json(runner, state_dir, "db", "status")

    assert data["mode"] == "embedded"
    assert data["server"]["running"] is True
    assert data["database"]["is_supabase"] is False
    assert [m["version"] for m in data["migrations"]] == LOCAL_VERSIONS
    assert all(m["applied"] is True for m in data["migrations"])
    assert data["pending"] == []
    assert data["missing_locally"] == []


def test_human_status_is_a_table(runner: CliRunner, state_dir: Path) -> None:
    run_json(runner, state_dir, "db", "up")

    result = runner.invoke(app, ["--state-dir", str(state_dir), "db", "status"])

    assert result.exit_code == 0
    assert "running" in result.stdout
    assert all(version in result.stdout for version in LOCAL_VERSIONS)


def test_stop_then_status_reports_a_stopped_server(runner: CliRunner, state_dir: Path) -> None:
    run_json(runner, state_dir, "db", "up")

    assert run_json(runner, state_dir, "db", "stop") == {
        "stopped": True,
        "state_dir": str(state_dir.resolve()),
    }
    data = run_json(runner, state_dir, "db", "status")
    assert data["server"]["running"] is False
    assert data["database"] is None
    assert {m["applied"] for m in data["migrations"]} == {None}


def test_migrate_applies_to_the_given_database_url(
    runner: CliRunner, state_dir: Path, empty_database_url: str
) -> None:
    result = runner.invoke(
        app,
        [
            "--json",
            "--state-dir",
            str(state_dir),
            "db",
            "migrate",
            "--database-url",
            empty_database_url,
        ],
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"mode": "postgres", "applied": LOCAL_VERSIONS}


def test_an_unreachable_database_is_one_line_on_stderr_with_exit_code_7(
    runner: CliRunner, state_dir: Path
) -> None:
    unreachable = "postgresql://nobody:secret@127.0.0.1:1/nothing?connect_timeout=2"
    result = runner.invoke(
        app, ["--state-dir", str(state_dir), "db", "migrate", "--database-url", unreachable]
    )

    assert result.exit_code == 7
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_json_errors_carry_a_code(
    runner: CliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://example.supabase.co")

    result = runner.invoke(app, ["--json", "--state-dir", str(state_dir), "db", "status"])

    assert result.exit_code == 3
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "configuration_error"
    assert "SUPABASE_URL" in error["message"]


def test_reset_without_a_terminal_needs_yes_and_drops_nothing(
    runner: CliRunner, state_dir: Path
) -> None:
    cli = Cli(None, state_dir)
    email = f"{uuid.uuid4().hex[:8]}@example.test"
    cli.run("users", "create", email)

    result = cli.run("db", "reset", input="y\n", code=2)

    assert result.stderr == (
        "error: This deletes data and there is no terminal to ask on: pass --yes to go ahead.\n"
    )
    assert email in [u["email"] for u in cli.json("users", "list")]


def test_reset_yes_starts_over_with_migrations_and_seed(runner: CliRunner, state_dir: Path) -> None:
    cli = Cli(None, state_dir)
    cli.run("users", "create", f"{uuid.uuid4().hex[:8]}@example.test")

    data = cli.json("db", "reset", "--yes")

    assert data == {"database": "postgres", "applied": LOCAL_VERSIONS, "seeded": True}
    assert [u["email"] for u in cli.json("users", "list")] == ["demo@portraitkit.local"]


def test_reset_works_on_a_database_url(
    runner: CliRunner, state_dir: Path, empty_database_url: str
) -> None:
    cli = Cli(empty_database_url, state_dir)
    cli.run("db", "migrate")
    cli.run("users", "create", "someone@example.test")

    data = cli.json("db", "reset", "--yes", "--no-seed")

    assert (data["applied"], data["seeded"]) == (LOCAL_VERSIONS, False)
    assert cli.json("users", "list") == []


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Supabase project folder, with the current directory somewhere inside it."""
    (tmp_path / "supabase" / "migrations").mkdir(parents=True)
    (tmp_path / "supabase" / "config.toml").write_text('project_id = "test"\n')
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    return tmp_path


def test_new_names_the_migration_as_the_supabase_cli_does(runner: CliRunner, project: Path) -> None:
    before = datetime.now(UTC).strftime("%Y%m%d%H%M%S")

    data = Cli(None, project).json("db", "new", "add_avatars")

    path = Path(data["path"])
    assert path.parent == project / "supabase" / "migrations"
    assert path.name == f"{data['version']}_add_avatars.sql"
    assert len(data["version"]) == 14 and data["version"] >= before
    assert path.read_text() == ""


def test_new_sorts_after_a_migration_dated_later(runner: CliRunner, project: Path) -> None:
    (project / "supabase" / "migrations" / "29991231235959_future.sql").write_text("")

    data = Cli(None, project).json("db", "new", "next_one")

    assert data["version"] == "30000101000000"


def test_new_refuses_a_name_with_spaces(runner: CliRunner, project: Path) -> None:
    result = Cli(None, project).run("db", "new", "add avatars", code=2)

    assert "not a migration name" in result.stderr


def test_new_outside_a_project_is_a_configuration_error(runner: CliRunner, tmp_path: Path) -> None:
    result = Cli(None, tmp_path).run("db", "new", "x", code=3)

    assert "No supabase/config.toml" in result.stderr
