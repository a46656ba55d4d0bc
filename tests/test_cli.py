"""`portraitkit db ...` through Typer's CliRunner, reading the --json output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portraitkit_cli.app import app
from typer.testing import CliRunner

from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import local_migrations
from portraitkit.database.schema_files import schema_dirs

LOCAL_VERSIONS = [m.version for m in local_migrations(schema_dirs().migrations)]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The CLI's own embedded server (these tests stop it)."""
    path = tmp_path_factory.mktemp("pg-cli")
    yield path
    EmbeddedPostgres(path).stop()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """No DATABASE_URL or Supabase settings from the environment or a .env file."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
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


def test_errors_are_one_line_on_stderr_with_exit_code_1(runner: CliRunner, state_dir: Path) -> None:
    unreachable = "postgresql://nobody:secret@127.0.0.1:1/nothing?connect_timeout=2"
    result = runner.invoke(
        app, ["--state-dir", str(state_dir), "db", "migrate", "--database-url", unreachable]
    )

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_json_errors_carry_a_code(
    runner: CliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://example.supabase.co")

    result = runner.invoke(app, ["--json", "--state-dir", str(state_dir), "db", "status"])

    assert result.exit_code == 1
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "configuration_error"
    assert "SUPABASE_URL" in error["message"]
