"""Where the SQL lives: in the wheel (package data) or in a repository checkout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SchemaDirs:
    """The two folders the migration runner reads."""

    bootstrap: Path  # sql/*.sql: roles, auth schema, publication for a plain PostgreSQL
    migrations: Path  # supabase/migrations/<digits>_<name>.sql, as the Supabase CLI knows them


def schema_dirs() -> SchemaDirs:
    """Find the SQL shipped with this installation.

    A wheel carries it under portraitkit/_schema (force-included by pyproject.toml); an
    editable install or a plain checkout reads the repository's own sql/ and supabase/.
    """
    packaged = _PACKAGE_DIR / "_schema"
    root = packaged if packaged.is_dir() else _PACKAGE_DIR.parent
    return SchemaDirs(bootstrap=root / "sql", migrations=root / "supabase" / "migrations")
