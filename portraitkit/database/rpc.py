"""Call a function of the SQL contract exactly as PostgREST calls it for an RPC request.

PostgREST runs each request in one transaction, switches to the JWT's role with
``set_config('role', ..., true)``, puts the claims in ``request.jwt.claims`` and calls the
function with named arguments (PostgREST docs: references/transactions, references/api).
Doing the same here means RLS and grants apply to the direct-Postgres transport exactly
as they do through the HTTP API: there is no bypass. Nothing outlives the transaction and
no statement is prepared, so this works through a transaction-mode pooler too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from portraitkit.errors import (
    DatabaseUnavailable,
    InvalidInput,
    PortraitkitError,
    error_from_postgres,
)

ANON_ROLE = "anon"
SET_REQUEST = "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)"


def request_settings(claims: Mapping[str, Any] | None) -> tuple[str, str]:
    """The role and claims JSON PostgREST would set for a request with these claims."""
    role = str((claims or {}).get("role") or ANON_ROLE)
    return role, json.dumps(dict(claims or {}), default=str)


def statement(function: str, args: Mapping[str, Any]) -> sql.Composed:
    named = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder()) for name in args
    )
    return sql.SQL("select * from public.{}({})").format(sql.Identifier(function), named)


def parameters(args: Mapping[str, Any]) -> list[Any]:
    """Dicts travel as jsonb; a uuid or an integer as text of no declared type, which the
    function's parameter type then parses, as it parses the JSON that PostgREST passes
    on (the user API takes ids as text and checks them itself; a number out of range is
    a data exception, not a missing int8 overload); everything else as psycopg adapts it."""
    return [
        Jsonb(v)
        if isinstance(v, dict)
        else str(v)
        if isinstance(v, UUID) or (isinstance(v, int) and not isinstance(v, bool))
        else v
        for v in args.values()
    ]


def shape(function: str, description: Any, rows: list[dict[str, Any]]) -> Any:
    """What PostgREST would answer: a scalar function's value, or a set's rows."""
    if description is not None and len(description) == 1 and description[0].name == function:
        return rows[0][function] if rows else None
    return rows


def translate(exc: psycopg.Error, role: str | None = None) -> PortraitkitError:
    """The typed exception for a database error, as the HTTP transport would see it
    (PostgREST answers a privilege error 401 to an anonymous caller, 403 otherwise)."""
    if exc.sqlstate is None and isinstance(exc, psycopg.OperationalError):
        # The connection itself failed (closed by the server, the network, a pooler): there
        # is no server error to map, only an unreachable database.
        return DatabaseUnavailable(f"The database connection failed: {exc}")
    if exc.sqlstate is None and isinstance(exc, psycopg.DataError):
        # Refused before it was sent (a NUL character in a text argument): bad input.
        return InvalidInput(f"An argument cannot be sent: {exc}", details={"reason": str(exc)})
    diag = exc.diag
    status = (401 if role == ANON_ROLE else 403) if exc.sqlstate == "42501" else None
    return error_from_postgres(
        exc.sqlstate,
        diag.message_primary or str(exc),
        diag.message_detail,
        diag.message_hint,
        status,
    )


def call(
    conn: psycopg.Connection[Any],
    function: str,
    args: Mapping[str, Any] | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
) -> Any:
    """Run ``public.<function>(name => value, ...)`` as the claims' role, in one transaction.

    ``claims`` are a verified JWT's claims; none means the anonymous role.
    """
    args = args or {}
    role, claims_json = request_settings(claims)
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(SET_REQUEST, (role, claims_json))
            cur.execute(statement(function, args), parameters(args))
            return shape(function, cur.description, cur.fetchall())
    except psycopg.Error as exc:
        raise translate(exc, role) from exc


async def acall(
    conn: psycopg.AsyncConnection[Any],
    function: str,
    args: Mapping[str, Any] | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
) -> Any:
    """The async twin of :func:`call`."""
    args = args or {}
    role, claims_json = request_settings(claims)
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SET_REQUEST, (role, claims_json))
            await cur.execute(statement(function, args), parameters(args))
            return shape(function, cur.description, await cur.fetchall())
    except psycopg.Error as exc:
        raise translate(exc, role) from exc


async def aselect(
    conn: psycopg.AsyncConnection[Any],
    query: sql.Composed,
    params: list[Any] | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read rows as the claims' role (RLS applies), as a PostgREST GET would."""
    role, claims_json = request_settings(claims)
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SET_REQUEST, (role, claims_json))
            await cur.execute(query, params)
            return await cur.fetchall()
    except psycopg.Error as exc:
        raise translate(exc, role) from exc
