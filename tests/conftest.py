"""Shared fixtures: one real embedded PostgreSQL for the whole session.

- `pg_server`: the running EmbeddedPostgres (its own temporary state directory), not migrated.
- `database_url`: its superuser URL, with the repository's schema applied (sql/ bootstrap
  and supabase/migrations). Use it for anything that needs the product schema.
- `admin_conn`: a superuser connection to `database_url`, autocommit, closed after the test.
- `empty_database_url`: a brand-new empty database on the same server, dropped afterwards;
  for tests that run migrations of their own.
- `db_url`: a migrated database of the test module's own, cloned from a template (fast),
  so the worker functions' global queue never sees another module's items.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from portraitkit.database.connection import connect
from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import Migrator


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Outside pytest's basetemp on purpose: a pytest session starting meanwhile (another
    # terminal) resets /tmp/pytest-of-<user> to 0700, and the server, running as its own
    # unprivileged user when we are root, could then no longer reach its data directory.
    state_dir = Path(tempfile.mkdtemp(prefix="portraitkit-test-"))
    server = EmbeddedPostgres(state_dir)
    server.ensure_running()
    yield server
    server.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server: EmbeddedPostgres) -> str:
    url = pg_server.ensure_running()
    Migrator(url, bootstrap=True).migrate()
    return url


@pytest.fixture
def admin_conn(database_url: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def empty_database_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    server_url = pg_server.ensure_running()
    name = f"test_{uuid.uuid4().hex[:12]}"
    with connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"'.encode())
    yield make_conninfo(server_url, dbname=name)
    with connect(server_url, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)'.encode())


TEMPLATE = "portraitkit_test_template"


@pytest.fixture(scope="session")
def template_url(pg_server: EmbeddedPostgres) -> str:
    server_url = pg_server.ensure_running()
    with connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(TEMPLATE)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE)))
    url = make_conninfo(server_url, dbname=TEMPLATE)
    Migrator(url, bootstrap=True).migrate()
    return url


@pytest.fixture(scope="module")
def db_url(
    pg_server: EmbeddedPostgres, template_url: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    server_url = pg_server.ensure_running()
    name = "t_" + request.module.__name__.rsplit(".", 1)[-1][:40] + "_" + uuid.uuid4().hex[:6]
    with connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield make_conninfo(server_url, dbname=name)
    with connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
