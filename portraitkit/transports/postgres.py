"""Direct Postgres: the embedded server, or any database reached by DATABASE_URL.

Each call does what PostgREST does for a request: verify the JWT (the project's HS256
secret, or its published key pair), then in one transaction switch to its role, set
``request.jwt.claims`` and call the function. RLS and grants apply exactly as through the HTTP API. No server-side prepared
statements and nothing kept between transactions, so a transaction-mode pooler works.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from portraitkit.auth import TokenVerifier
from portraitkit.database import rpc
from portraitkit.errors import DatabaseBusy, DatabaseUnavailable
from portraitkit.retrying import is_transient
from portraitkit.transports.base import RetryPolicy

TokenSource = Callable[[], str | None]


def make_pool(conninfo: str, *, max_size: int = 10) -> AsyncConnectionPool:
    """A pool whose connections suit PostgREST-style calls (and a transaction pooler)."""
    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        kwargs={"prepare_threshold": None, "autocommit": False},
        open=False,
        timeout=10,
    )


class PostgresTransport:
    """Calls the SQL contract over psycopg for one identity."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        token: TokenSource,
        jwt_secret: str,
        *,
        owns_pool: bool = False,
        retry: RetryPolicy | None = None,
        verify: Callable[[str], Mapping[str, Any]] | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        """``verifier`` checks the token (by default: HS256 with ``jwt_secret`` only);
        ``verify`` replaces the check for a server that has verified the token already."""
        self._pool = pool
        self._token = token
        self._verify = verify
        self._verifier = verifier or TokenVerifier(jwt_secret)
        self._owns_pool = owns_pool
        self._retry = retry or RetryPolicy()

    async def _claims(self) -> dict[str, Any] | None:
        """The claims a call runs with; a key-pair token may need the key set fetched."""
        token = self._token()
        if not token:
            return None
        if self._verify is not None:
            return dict(self._verify(token))
        # Any role's token, as PostgREST takes them: the service role's has no sub or aud.
        return await self._verifier.verify(token, require=())

    @property
    def user_id(self) -> str | None:
        token = self._token()
        if not token:
            return None
        if self._verify is not None:
            claims = dict(self._verify(token))
        else:  # the keys it needs were fetched when the client was opened
            claims = self._verifier.check(token, require=())
        return str(claims["sub"]) if claims.get("sub") else None

    async def rpc(
        self, function: str, args: Mapping[str, Any] | None = None, *, retry_safe: bool = False
    ) -> Any:
        claims = await self._claims()

        async def call(conn: psycopg.AsyncConnection[Any]) -> Any:
            return await rpc.acall(conn, function, args, claims=claims)

        return await self._on_connection(call, retry_safe=retry_safe)

    async def select(
        self, table: str, *, columns: Sequence[str] = ("*",), order: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        cols = (
            sql.SQL("*")
            if tuple(columns) == ("*",)
            else sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        query = sql.SQL("select {} from public.{}").format(cols, sql.Identifier(table))
        if order:
            query += sql.SQL(" order by ") + sql.SQL(", ").join(map(sql.Identifier, order))
        claims = await self._claims()

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
            return await rpc.aselect(conn, query, claims=claims)

        result: list[dict[str, Any]] = await self._on_connection(read, retry_safe=True)
        return result

    async def _on_connection(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]], *, retry_safe: bool
    ) -> Any:
        """Run one request's transaction on a pooled connection. A retry-safe request that
        failed for a reason that passes (its connection broke under it: the server
        restarted, a pooler or the network dropped it; or a deadlock or a timeout rolled it
        back) is sent again on another connection, as the Supabase transport resends it. A
        request that is not safe to repeat fails at once."""
        try:
            if not retry_safe:
                return await self._transaction(work)
            result: Any = None
            async for attempt in self._retry.retrying("database call", retry_on=_resendable):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        await self._pool.check()  # its other idle connections likely died too
                    result = await self._transaction(work)
            return result
        except PoolTimeout as exc:
            # The database may be fine: every pooled connection was busy for that long.
            raise DatabaseBusy(f"All database connections are busy: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"The database cannot be reached: {exc}") from exc

    async def _transaction(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
    ) -> Any:
        async with self._pool.connection() as conn:
            return await work(conn)

    async def aclose(self) -> None:
        if self._owns_pool:
            await self._pool.close()


def _resendable(exc: BaseException) -> bool:
    """A transient failure of the call itself. Not a pool that found no connection within
    its own timeout: it has waited already, and waiting as long again only delays the error."""
    return is_transient(exc) and not isinstance(exc, PoolTimeout)
