"""Which database to talk to, and how to open a connection to it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import TupleRow

from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.errors import ConfigurationError
from portraitkit.settings import Settings


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    """The embedded server that belongs to these settings' state directory."""
    return EmbeddedPostgres(settings.state_dir)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when it is set; otherwise the embedded server's URL, started if needed."""
    mode = settings.mode  # raises ConfigurationError for half-made setups
    if settings.database_url:
        return settings.database_url
    if mode == "supabase":
        raise ConfigurationError(
            "direct database access to a Supabase project needs DATABASE_URL "
            "(the project's connection string, session mode or direct)"
        )
    return embedded_server(settings).ensure_running()


def connect(
    conninfo: str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.Connection[TupleRow]:
    """Open a connection that also works through Supabase's transaction-mode pooler.

    `prepare_threshold=None` turns off server-side prepared statements, which a
    transaction pooler (Supavisor, PgBouncer) cannot keep across transactions.
    """
    kwargs.setdefault("application_name", "portraitkit")
    return psycopg.connect(conninfo, autocommit=autocommit, prepare_threshold=None, **kwargs)
