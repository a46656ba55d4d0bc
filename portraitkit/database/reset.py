"""Start a database over, and add migrations, the way the Supabase CLI does it.

- :func:`reset_database`: drop and recreate the database, apply every migration, then the
  seed (``supabase db reset`` for the local stack). Never on a Supabase-hosted database.
- :func:`new_migration`: ``supabase/migrations/<YYYYMMDDHHMMSS>_<name>.sql``, empty
  (``supabase migration new``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from portraitkit.database.connection import connect
from portraitkit.database.migrations import Migrator, local_migrations
from portraitkit.database.schema_files import schema_dirs
from portraitkit.errors import ConfigurationError, InvalidInput

MIGRATION_NAME = re.compile(r"^[A-Za-z0-9_]+$")
VERSION_FORMAT = "%Y%m%d%H%M%S"


@dataclass(frozen=True)
class ResetTarget:
    """What a reset would drop, for the question asked before it does."""

    database: str
    host: str
    port: str

    def __str__(self) -> str:
        return f"database {self.database!r} on {self.host}:{self.port}"


@dataclass(frozen=True)
class ResetOutcome:
    target: ResetTarget
    applied: list[str]
    seeded: bool


def reset_target(url: str) -> ResetTarget:
    params = conninfo_to_dict(url)
    return ResetTarget(
        database=str(params.get("dbname") or params.get("user") or "postgres"),
        host=str(params.get("host") or "localhost"),
        port=str(params.get("port") or "5432"),
    )


def seed_file() -> Path | None:
    """supabase/seed.sql next to the migrations, when this installation has one."""
    path = schema_dirs().migrations.parent / "seed.sql"
    return path if path.is_file() else None


def reset_database(url: str, *, seed: bool = True, storage_dir: Path | None = None) -> ResetOutcome:
    """Drop the database at ``url`` with everything in it, recreate it empty (same owner),
    apply the bootstrap and every migration, then ``supabase/seed.sql``.

    ``storage_dir``: a local storage folder holding this database's images, emptied too
    (the rows that named them are gone).
    """
    target = reset_target(url)
    with connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select exists (select from pg_roles where rolname = 'supabase_admin'),"
            " pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        ).fetchone()
    assert row is not None
    is_supabase, owner = bool(row[0]), str(row[1])
    if is_supabase:
        raise ConfigurationError(
            f"{target} is a Supabase database: reset it with `supabase db reset`, not portraitkit."
        )
    maintenance = "template1" if target.database == "postgres" else "postgres"
    with connect(make_conninfo(url, dbname=maintenance), autocommit=True) as conn:
        name = sql.Identifier(target.database)
        conn.execute(sql.SQL("drop database {} with (force)").format(name))
        conn.execute(sql.SQL("create database {} owner {}").format(name, sql.Identifier(owner)))
    if storage_dir is not None and storage_dir.is_dir():
        shutil.rmtree(storage_dir)
    applied = Migrator(url, bootstrap=True).migrate()
    seeded = False
    path = seed_file() if seed else None
    if path is not None:
        with connect(url, autocommit=True) as conn:
            conn.execute(path.read_bytes())
        seeded = True
    return ResetOutcome(target=target, applied=applied, seeded=seeded)


def new_migration(name: str, directory: Path | None = None, now: datetime | None = None) -> Path:
    """Create an empty migration named for the current UTC time, as the Supabase CLI does.

    If the newest existing migration has a later version (a clock behind, or versions
    dated ahead), the new one takes the next second after it, so it still sorts last.
    """
    if not MIGRATION_NAME.match(name):
        raise InvalidInput(
            f"{name!r} is not a migration name: use letters, digits and underscores.",
            details={"field": "name"},
        )
    directory = directory or project_migrations_dir()
    stamp = (now or datetime.now(UTC)).strftime(VERSION_FORMAT)
    existing = [m.version for m in local_migrations(directory) if len(m.version) == len(stamp)]
    if existing and max(existing) >= stamp:
        latest = datetime.strptime(max(existing), VERSION_FORMAT)
        stamp = datetime.fromtimestamp(latest.replace(tzinfo=UTC).timestamp() + 1, UTC).strftime(
            VERSION_FORMAT
        )
    path = directory / f"{stamp}_{name}.sql"
    directory.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=False)
    return path


def project_migrations_dir(start: Path | None = None) -> Path:
    """supabase/migrations of the project around ``start`` (the nearest folder, upwards,
    holding supabase/config.toml), as the Supabase CLI finds its project."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "supabase" / "config.toml").is_file():
            return folder / "supabase" / "migrations"
    raise ConfigurationError(
        f"No supabase/config.toml in {here} or above: run this inside the project."
    )
