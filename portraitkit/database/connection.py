"""Which database to talk to, and how to open a connection to it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
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


# Supabase's shared pooler (Supavisor): transaction mode on port 6543, session mode on port
# 5432 of the same host; only session mode carries LISTEN/NOTIFY (Supabase docs:
# guides/database/connecting-to-postgres).
SUPABASE_POOLER_HOST_SUFFIX = ".pooler.supabase.com"
TRANSACTION_MODE_PORT = "6543"
SESSION_MODE_PORT = "5432"


def listen_url(settings: Settings, url: str) -> str:
    """The session connection LISTEN/NOTIFY wake-ups go over, for a database reached by ``url``.

    PORTRAITKIT_LISTEN_URL when set; for Supabase's transaction pooler, which hands the
    session to another client after each transaction, its session mode on the same host;
    otherwise ``url`` itself.
    """
    if settings.listen_url:
        return settings.listen_url
    params = conninfo_to_dict(url)
    host, port = str(params.get("host") or ""), str(params.get("port") or "")
    if host.endswith(SUPABASE_POOLER_HOST_SUFFIX) and port == TRANSACTION_MODE_PORT:
        return make_conninfo(url, port=SESSION_MODE_PORT)
    return url


def connect(
    conninfo: str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.Connection[TupleRow]:
    """Open a connection that also works through Supabase's transaction-mode pooler.

    `prepare_threshold=None` turns off server-side prepared statements, which a
    transaction pooler (Supavisor, PgBouncer) cannot keep across transactions.
    """
    kwargs.setdefault("application_name", "portraitkit")
    return psycopg.connect(conninfo, autocommit=autocommit, prepare_threshold=None, **kwargs)
