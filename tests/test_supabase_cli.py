"""The real Supabase CLI and portraitkit agree about our migrations and their history.

The CLI (npm package `supabase`, a prebuilt binary in an optional per-platform package, no
postinstall download) is installed once into ~/.cache/portraitkit/supabase-cli/<version>.
Without Docker it talks to any PostgreSQL through `--db-url`; here that is a fresh database
on the session's embedded server (`database_url` in tests/conftest.py).

What is shown:
- `supabase db push` applies every migration to a database that has only our sql/ shim,
  the schema works, and it records for each file the same `statements` array that
  portraitkit's splitter computes;
- after portraitkit's migrator, `supabase migration list` shows every local migration as
  applied and `supabase db push --dry-run` has nothing to push; the history rows are the
  ones the CLI writes itself;
- after `supabase db push`, portraitkit's migrator finds nothing pending;
- both refuse a database that records a version this checkout does not have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from portraitkit.database.migrations import Migrator, local_migrations
from portraitkit.database.schema_files import schema_dirs
from portraitkit.database.sqlsplit import split_statements
from portraitkit.errors import MigrationHistoryError
from tests.npm import npm_install

CLI_VERSION = "2.117.0"
CLI_TIMEOUT = 120
# Nothing to fetch: no update check, no telemetry (only package registries are reachable).
CLI_ENV = {
    "SUPABASE_NO_UPDATE_NOTIFIER": "1",
    "SUPABASE_TELEMETRY_DISABLED": "1",
    "DO_NOT_TRACK": "1",
}


def _cli_version(entry: Path) -> str | None:
    if not entry.exists():
        return None
    try:
        done = subprocess.run(
            [str(entry), "--version"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env={**os.environ, **CLI_ENV},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="session")
def supabase_cli() -> Path:
    """The `supabase` command of the pinned CLI version, installed with npm on first use."""
    entry = Path("node_modules") / ".bin" / "supabase"
    ready = lambda prefix: _cli_version(prefix / entry) == CLI_VERSION  # noqa: E731
    return npm_install("supabase", CLI_VERSION, ready=ready, name="supabase-cli") / entry


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch Supabase project with our config and migrations (the CLI writes .temp/)."""
    root = tmp_path_factory.mktemp("supabase_project")
    migrations = schema_dirs().migrations
    shutil.copytree(migrations, root / "supabase" / "migrations")
    config = migrations.parent / "config.toml"
    if config.is_file():
        shutil.copy(config, root / "supabase" / "config.toml")
    return root


def _db_url(database_url: str, dbname: str) -> str:
    """The URL form the CLI wants: percent-encoded, TCP, no TLS (a local server)."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    user = quote(str(params.get("user") or "postgres"), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(params.get("host") or "127.0.0.1")
    port = str(params.get("port") or 5432)
    return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}?sslmode=disable"


class Databases:
    """Creates fresh databases on the session's server and drops them afterwards."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.created: list[str] = []

    def create(self, label: str) -> tuple[str, str]:
        """A new empty database: (psycopg conninfo, CLI --db-url)."""
        name = f"t_supabase_cli_{label}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        self.created.append(name)
        conninfo = psycopg.conninfo.make_conninfo(self.database_url, dbname=name)
        return conninfo, _db_url(self.database_url, name)

    def drop_all(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as admin:
            for name in self.created:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


@pytest.fixture(scope="module")
def databases(database_url: str) -> Iterator[Databases]:
    dbs = Databases(database_url)
    yield dbs
    dbs.drop_all()


def run_cli(cli: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cli), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env={**os.environ, **CLI_ENV},
        stdin=subprocess.DEVNULL,
    )


def cli_json(cli: Path, cwd: Path, *args: str) -> dict:
    done = run_cli(cli, cwd, *args, "--output-format", "json")
    assert done.returncode == 0, f"supabase {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def apply_shim(conninfo: str) -> None:
    """What a plain PostgreSQL needs to look like Supabase: sql/*.sql, as psql would run it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for path in sorted(schema_dirs().bootstrap.glob("*.sql")):
            conn.execute(path.read_text(encoding="utf-8").encode())


def history(conninfo: str) -> list[tuple[str, str, list[str]]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()
    return [(str(v), str(n), list(s)) for v, n, s in rows]


def local_files() -> list[tuple[str, str, Path]]:
    found = [(m.version, m.name, m.path) for m in local_migrations(schema_dirs().migrations)]
    assert found, "no migrations found"
    return found


@pytest.fixture(scope="module")
def cli_pushed(supabase_cli: Path, project_dir: Path, databases: Databases) -> dict:
    """A database with only the shim, then everything `supabase db push` applies."""
    conninfo, url = databases.create("push")
    apply_shim(conninfo)
    done = run_cli(supabase_cli, project_dir, "db", "push", "--db-url", url, "--yes")
    assert done.returncode == 0, f"supabase db push failed:\n{done.stdout}\n{done.stderr}"
    return {"conninfo": conninfo, "url": url, "output": done.stdout + done.stderr}


@pytest.fixture(scope="module")
def migrator_migrated(databases: Databases) -> dict:
    """A fresh database migrated by portraitkit alone (bootstrap and migrations)."""
    conninfo, url = databases.create("migrator")
    applied = Migrator(conninfo).migrate()
    return {"conninfo": conninfo, "url": url, "applied": applied}


def test_cli_pushes_every_migration_onto_the_shim(cli_pushed: dict) -> None:
    files = local_files()
    for version, name, _ in files:
        assert f"Applying migration {version}_{name}.sql" in cli_pushed["output"]
    recorded = history(cli_pushed["conninfo"])
    assert [(v, n) for v, n, _ in recorded] == [(v, n) for v, n, _ in files]
    # The CLI's statement split is the one portraitkit records (sqlsplit mirrors its parser).
    for (version, _, statements), (_, _, path) in zip(recorded, files, strict=True):
        # Raw text: the CLI keeps a CRLF file's \r\n inside statements (no newline translation).
        assert statements == split_statements(path.read_bytes().decode("utf-8")), version
    with psycopg.connect(cli_pushed["conninfo"]) as conn:
        styles = conn.execute("select count(*) from public.styles").fetchone()
        assert styles is not None and styles[0] > 12
        # Sign-up trigger from the migrations, running on the shim's auth schema.
        user_id = uuid.uuid4()
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)",
            [user_id, f"{user_id}@example.com"],
        )
        profile = conn.execute("select count(*) from public.profiles where id = %s", [user_id])
        assert profile.fetchone() == (1,)
        conn.rollback()


def test_cli_sees_the_migrator_history_as_its_own(
    supabase_cli: Path, project_dir: Path, migrator_migrated: dict, cli_pushed: dict
) -> None:
    files = local_files()
    assert migrator_migrated["applied"] == [v for v, _, _ in files]

    listed = cli_json(
        supabase_cli, project_dir, "migration", "list", "--db-url", migrator_migrated["url"]
    )
    rows = [(m["local"], m["remote"]) for m in listed["migrations"]]
    assert rows == [(v, v) for v, _, _ in files]

    dry = cli_json(
        supabase_cli, project_dir, "db", "push", "--dry-run", "--db-url", migrator_migrated["url"]
    )
    assert dry["upToDate"] is True and dry["migrations"] == [], dry

    # Row for row what the CLI itself writes: version, name and the statements array.
    assert history(migrator_migrated["conninfo"]) == history(cli_pushed["conninfo"])


def test_migrator_finds_nothing_pending_after_cli_push(cli_pushed: dict) -> None:
    migrator = Migrator(cli_pushed["conninfo"])
    status = migrator.status()
    assert status.pending == [] and status.missing_locally == []
    assert migrator.migrate() == []


def test_both_refuse_a_version_missing_locally(
    supabase_cli: Path, project_dir: Path, databases: Databases
) -> None:
    conninfo, url = databases.create("drift")
    ghost = "20000101000000"  # older than every real migration: the table stays empty
    with psycopg.connect(conninfo) as conn:
        conn.execute("create schema supabase_migrations")
        conn.execute(
            "create table supabase_migrations.schema_migrations"
            " (version text not null primary key, statements text[], name text)"
        )
        conn.execute(
            "insert into supabase_migrations.schema_migrations values (%s, '{}', 'ghost')", [ghost]
        )

    done = run_cli(supabase_cli, project_dir, "db", "push", "--dry-run", "--db-url", url)
    assert done.returncode != 0
    assert "Remote migration versions not found in local migrations directory" in done.stderr
    assert ghost in done.stderr

    with pytest.raises(MigrationHistoryError) as raised:
        Migrator(conninfo).migrate()
    assert raised.value.missing == [ghost]
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("select to_regclass('public.styles')").fetchone() == (None,)
