"""Apply portraitkit's SQL to a database, keeping history the way the Supabase CLI does.

Two phases, under one advisory lock so that concurrent migrators take turns:

1. bootstrap: `sql/*.sql` in name order, on a plain PostgreSQL only (roles, auth schema,
   publication that a Supabase project already has). Idempotent, so it runs every time.
   A database with the role `supabase_admin` is a Supabase one and is skipped.
2. migrations: `supabase/migrations/<digits>_<name>.sql`, pending ones in file-name order,
   each file in one transaction together with its row in
   `supabase_migrations.schema_migrations`, so `supabase db push` and
   `supabase migration list` agree with us about what is applied (and vice versa).

The advisory lock is a session lock: migrate over a session connection (direct, or the
pooler's session mode), not the transaction-mode pooler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from portraitkit.database.connection import connect
from portraitkit.database.schema_files import SchemaDirs, schema_dirs
from portraitkit.database.sqlsplit import split_statements
from portraitkit.errors import MigrationError, MigrationHistoryError

# The Supabase CLI's own pattern (pkg/migration/file.go); other files are skipped.
MIGRATION_FILE = re.compile(r"^([0-9]+)_(.*)\.sql$")
# An arbitrary constant shared by every portraitkit process: "pkmigrat" as a bigint.
ADVISORY_LOCK_KEY = int.from_bytes(b"pkmigrat", "big") - 2**63

# Exactly the CLI's statements (pkg/migration/history.go), so either tool can go first.
CREATE_HISTORY = [
    "CREATE SCHEMA IF NOT EXISTS supabase_migrations",
    "CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations "
    "(version text NOT NULL PRIMARY KEY)",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[]",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text",
]
Connection = psycopg.Connection[TupleRow]

INSERT_HISTORY = (
    "INSERT INTO supabase_migrations.schema_migrations(version, name, statements) "
    "VALUES (%s, %s, %s)"
)


@dataclass(frozen=True)
class MigrationFile:
    """One `supabase/migrations/<version>_<name>.sql` file."""

    version: str
    name: str
    path: Path

    def sql(self) -> str:
        # Bytes, not read_text(): the CLI records CRLF line endings as they are.
        return self.path.read_bytes().decode("utf-8")


@dataclass(frozen=True)
class MigrationState:
    version: str
    name: str
    applied: bool


@dataclass(frozen=True)
class MigrationStatus:
    """What is applied, what is pending, and which server we looked at."""

    migrations: list[MigrationState]
    missing_locally: list[str]
    server_version: str
    database: str
    user: str
    is_supabase: bool
    bootstrap_files: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[MigrationState]:
        return [m for m in self.migrations if not m.applied]


def local_migrations(directory: Path) -> list[MigrationFile]:
    """Migration files in file-name order; names the CLI would skip are skipped."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        match = MIGRATION_FILE.match(path.name)
        if match and path.is_file():
            found.append(MigrationFile(version=match[1], name=match[2], path=path))
    return found


def bootstrap_files(directory: Path) -> list[Path]:
    """The plain-PostgreSQL bootstrap scripts, in name order."""
    return sorted(directory.glob("*.sql"), key=lambda p: p.name) if directory.is_dir() else []


class Migrator:
    """Runs the two phases against one database."""

    def __init__(
        self, conninfo: str, *, dirs: SchemaDirs | None = None, bootstrap: bool | None = None
    ) -> None:
        """`bootstrap`: None detects (skip on Supabase); True/False forces the sql/ phase."""
        self.conninfo = conninfo
        self.dirs = dirs or schema_dirs()
        self.bootstrap = bootstrap

    def status(self) -> MigrationStatus:
        """Applied and pending migrations, without changing anything."""
        with connect(self.conninfo, autocommit=True) as conn:
            applied = _applied_versions(conn) if _history_exists(conn) else set()
            local = local_migrations(self.dirs.migrations)
            version, database, user = conn.execute(
                "select current_setting('server_version'), current_database(), current_user"
            ).fetchone() or ("", "", "")
            return MigrationStatus(
                migrations=[MigrationState(m.version, m.name, m.version in applied) for m in local],
                missing_locally=sorted(applied - {m.version for m in local}),
                server_version=version,
                database=database,
                user=user,
                is_supabase=_is_supabase(conn),
                bootstrap_files=[p.name for p in bootstrap_files(self.dirs.bootstrap)],
            )

    def migrate(self) -> list[str]:
        """Bootstrap if needed, then apply pending migrations; returns applied versions."""
        with connect(self.conninfo, autocommit=True) as conn:
            conn.execute("select pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
            try:
                return self._migrate_locked(conn)
            finally:
                # Explicitly: a session pooler may hand this backend to someone else.
                if not conn.closed and not conn.broken:
                    conn.execute("select pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])

    def _migrate_locked(self, conn: Connection) -> list[str]:
        wants_bootstrap = self.bootstrap if self.bootstrap is not None else not _is_supabase(conn)
        if wants_bootstrap:
            for path in bootstrap_files(self.dirs.bootstrap):
                with conn.transaction():
                    _execute_file(conn, path.read_text(encoding="utf-8"), what=f"sql/{path.name}")
        with conn.transaction():
            for statement in CREATE_HISTORY:
                conn.execute(statement.encode())
        applied = _applied_versions(conn)
        local = local_migrations(self.dirs.migrations)
        missing = sorted(applied - {m.version for m in local})
        if missing:
            raise MigrationHistoryError(missing)
        done = []
        for migration in local:
            if migration.version not in applied:
                _apply(conn, migration)
                done.append(migration.version)
        return done


def _apply(conn: Connection, migration: MigrationFile) -> None:
    """The file and its history row commit together, or neither does."""
    sql = migration.sql()
    with conn.transaction():
        _execute_file(conn, sql, what=migration.path.name, version=migration.version)
        conn.execute(INSERT_HISTORY, (migration.version, migration.name, split_statements(sql)))


def _execute_file(conn: Connection, sql: str, *, what: str, version: str | None = None) -> None:
    """Run a whole file as one simple-protocol query (no parameters: many statements).

    Like the CLI, each file starts from the session defaults (RESET ALL), so a `SET` in
    one file does not leak into the next.
    """
    try:
        conn.execute(b"RESET ALL")
        conn.execute(sql.encode())
    except psycopg.Error as exc:
        raise MigrationError(f"{what} failed: {_describe(exc)}", version=version) from exc


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [diag.message_primary or str(exc).strip()]
    if diag.sqlstate:
        parts.append(f"(SQLSTATE {diag.sqlstate})")
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.context:
        parts.append(f"CONTEXT: {diag.context.strip()}")
    return " ".join(parts)


def _is_supabase(conn: Connection) -> bool:
    row = conn.execute("select exists (select from pg_roles where rolname = 'supabase_admin')")
    return bool((row.fetchone() or (False,))[0])


def _history_exists(conn: Connection) -> bool:
    row = conn.execute("select to_regclass('supabase_migrations.schema_migrations') is not null")
    return bool((row.fetchone() or (False,))[0])


def _applied_versions(conn: Connection) -> set[str]:
    rows = conn.execute("select version from supabase_migrations.schema_migrations").fetchall()
    return {str(row[0]) for row in rows}
