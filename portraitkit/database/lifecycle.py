"""Make the configured database ready, and describe it: what `portraitkit db` shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portraitkit.database.connection import embedded_server, resolve_database_url
from portraitkit.database.embedded import EmbeddedStatus
from portraitkit.database.migrations import (
    MigrationFile,
    MigrationStatus,
    Migrator,
    local_migrations,
)
from portraitkit.database.schema_files import schema_dirs
from portraitkit.settings import Mode, Settings


@dataclass(frozen=True)
class DatabaseReady:
    """The outcome of `bring_up`: where the database is and what was just applied."""

    mode: Mode
    url: str
    applied: list[str]
    embedded: EmbeddedStatus | None  # None for a database we do not run ourselves


@dataclass(frozen=True)
class DatabaseReport:
    """The outcome of `describe`; `migrations` is None when the embedded server is down."""

    mode: Mode
    state_dir: Path
    embedded: EmbeddedStatus | None
    migrations: MigrationStatus | None
    local_migrations: list[MigrationFile]


def bring_up(settings: Settings) -> DatabaseReady:
    """Start the embedded server if it is the one configured, then migrate the database.

    The embedded server is plain PostgreSQL and always gets the sql/ bootstrap; another
    database gets it unless it is a Supabase one.
    """
    mode = settings.mode
    url = resolve_database_url(settings)
    is_embedded = mode == "embedded"
    applied = Migrator(url, bootstrap=True if is_embedded else None).migrate()
    embedded = embedded_server(settings).status() if is_embedded else None
    return DatabaseReady(mode=mode, url=url, applied=applied, embedded=embedded)


def describe(settings: Settings) -> DatabaseReport:
    """Report on the database without starting or changing anything."""
    mode = settings.mode
    embedded = embedded_server(settings).status() if mode == "embedded" else None
    if embedded is None:
        migrations: MigrationStatus | None = Migrator(resolve_database_url(settings)).status()
    elif embedded.url is not None:
        migrations = Migrator(embedded.url).status()
    else:
        migrations = None
    return DatabaseReport(
        mode=mode,
        state_dir=settings.state_dir,
        embedded=embedded,
        migrations=migrations,
        local_migrations=local_migrations(schema_dirs().migrations),
    )
