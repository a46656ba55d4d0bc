"""Call a function of the SQL contract exactly as PostgREST calls it for an RPC request.

PostgREST runs each request in one transaction, switches to the JWT's role with
``set_config('role', ..., true)``, puts the claims in ``request.jwt.claims`` and calls the
function with named arguments (PostgREST docs: references/transactions, references/api).
Doing the same here means RLS and grants apply to the direct-Postgres transport exactly
as they do through the HTTP API: there is no bypass. Nothing survives the transaction,
so this works through a transaction-mode pooler too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from portraitkit.errors import PortraitkitError, error_from_postgres

ANON_ROLE = "anon"


def _statement(function: str, args: Mapping[str, Any]) -> sql.Composed:
    named = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder()) for name in args
    )
    return sql.SQL("select * from public.{}({})").format(sql.Identifier(function), named)


def _adapt(value: Any) -> Any:
    """JSON-ish values go as jsonb; lists of UUIDs/strings stay arrays."""
    if isinstance(value, dict):
        return psycopg.types.json.Jsonb(value)
    return value


def translate(exc: psycopg.Error) -> PortraitkitError:
    """The typed exception for a database error, as the HTTP transport would see it."""
    diag = exc.diag
    return error_from_postgres(
        exc.sqlstate, diag.message_primary or str(exc), diag.message_detail, diag.message_hint
    )


def call(
    conn: psycopg.Connection[Any],
    function: str,
    args: Mapping[str, Any] | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``public.<function>(name => value, ...)`` as the claims' role, in one transaction.

    ``claims`` are a JWT's claims (``sub``, ``role``...); none means the anonymous role.
    Returns the result rows; a scalar function gives one row keyed by its name.
    """
    args = args or {}
    role = str((claims or {}).get("role") or ANON_ROLE)
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (role, json.dumps(dict(claims or {}))),
            )
            cur.execute(_statement(function, args), [_adapt(v) for v in args.values()])
            return cur.fetchall()
    except psycopg.Error as exc:
        raise translate(exc) from exc


def call_value(
    conn: psycopg.Connection[Any],
    function: str,
    args: Mapping[str, Any] | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
) -> Any:
    """The single value a scalar function returns."""
    rows = call(conn, function, args, claims=claims)
    return rows[0][function] if rows else None
