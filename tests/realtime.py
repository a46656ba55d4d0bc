"""Supabase Realtime's `postgres_changes`, standing in for the hosted service in tests.

A Phoenix-channel WebSocket server on localhost (the wire protocol of
`/realtime/v1/websocket?apikey=...&vsn=1.0.0`: `phx_join` with the channel's
`config.postgres_changes` bindings and `access_token`, answered by a `phx_reply` that
gives each binding an id; heartbeats on topic `phoenix`; change messages carrying
`{data, ids}`), in front of the real test database. It refuses what Realtime refuses
(supabase/realtime: user_socket.ex, realtime_channel.ex, postgres_cdc_rls):

- the socket's `apikey` must be a project key (the API gateway's check, which passes on
  the key's role JWT), whose JWT must verify with the project secret and carry `role` and
  `exp`: else HTTP 401 at the handshake, `{"error": ...}`;
- each join acts with its `user_token` or `access_token`, or without one the socket's
  token (realtime_channel.ex, assign_access_token), which must verify likewise (HS256 with
  the secret, or ES256 with the project's JWKS key its `kid` names): else `phx_reply`
  with status `error` and Realtime's reason, and no bindings. An `sb_...` key is not a
  JWT: "InvalidJWTToken: Token claims must be a map";
- an `access_token` message later replaces the claims; an invalid one closes the channel
  (a `system` error, then `phx_close`), and so does the token's expiry ("Token has
  expired N seconds ago"), as Realtime's confirm_token timer does;
- a binding on a table outside the `supabase_realtime` publication gets Realtime's
  system error instead of a subscription;
- a change reaches a subscriber only if that subscriber may select the row: one read per
  subscriber, as its role with its claims (`select 1 from <table> where id = $1`), as
  Realtime checks RLS.

Tests can also make it refuse every join for a while (`refuse_joins(reason)`, e.g.
"RealtimeRestarting: ...") and close every joined channel (`close_channels()`, as an
operator's disconnect does).

Changes reach it the way the WAL reaches Realtime, only simpler: a test-only row trigger
NOTIFYs each change as JSON after commit, and the server handles them in order. supabase-py's
realtime client talks to it unchanged: give it this server's `url` as SUPABASE_URL and mount
the HTTP gateway (respx) on the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import psycopg
from psycopg import sql
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.gateway import ProjectKeys
from tests.postgrest import ANON_ROLE, Jwks, authenticator_conninfo, verification_key

CHANNEL = "test_realtime"

INSTALL = f"""
create schema if not exists test_realtime;
create or replace function test_realtime.notify_change() returns trigger
language plpgsql as $$
begin
  perform pg_notify('{CHANNEL}', json_build_object(
    'schema', tg_table_schema, 'table', tg_table_name, 'type', tg_op,
    'record', to_jsonb(new))::text);
  return null;
end
$$;
create or replace trigger test_realtime_generations
  after insert or update on public.generations
  for each row execute function test_realtime.notify_change();
create or replace trigger test_realtime_batches
  after update on public.generation_batches
  for each row execute function test_realtime.notify_change();
"""

PUBLISHED = (
    "select 1 from pg_publication_tables where pubname = 'supabase_realtime'"
    " and schemaname = %s and (%s::text is null or tablename = %s)"
)


class TokenRefused(Exception):
    """Realtime's reason for refusing a token, e.g. "JwtSignatureError: ..."."""


def verify_token(secret: str, token: str, jwks: Jwks | None = None) -> dict[str, Any]:
    """Realtime's ChannelsAuthorization.authorize_conn: a verified JWT with role and exp."""
    try:
        jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:  # JwtVerification.check_claims_format
        raise TokenRefused("InvalidJWTToken: Token claims must be a map") from exc
    try:
        key, algorithms = verification_key(token, secret, jwks)
        claims = jwt.decode(token, key, algorithms=algorithms, options={"verify_aud": False})
    except jwt.ExpiredSignatureError as exc:
        expired = jwt.decode(token, options={"verify_signature": False}).get("exp", 0)
        raise TokenRefused(
            f"InvalidJWTToken: Token has expired {int(time.time()) - int(expired)} seconds ago"
        ) from exc
    except (jwt.InvalidSignatureError, jwt.InvalidKeyError) as exc:
        raise TokenRefused("JwtSignatureError: Failed to validate JWT signature") from exc
    except jwt.PyJWTError as exc:
        raise TokenRefused("MalformedJWT: The token provided is not a valid JWT") from exc
    if "role" not in claims or "exp" not in claims:
        raise TokenRefused("InvalidJWTToken: Fields `role` and `exp` are required in JWT")
    return claims


@dataclass
class Subscription:
    """One joined channel: its bindings, the claims of its latest access token, and the
    timer that closes it when that token expires."""

    bindings: list[dict[str, Any]]
    claims: dict[str, Any]
    expiry: asyncio.Task[None] | None = None


def _matches(binding: dict[str, Any], change: dict[str, Any]) -> bool:
    if binding.get("event") not in ("*", change["type"]):
        return False
    if binding.get("schema", "public") != change["schema"]:
        return False
    if binding.get("table") not in (None, "*", change["table"]):
        return False
    if filter_ := binding.get("filter"):
        column, _, value = str(filter_).partition("=eq.")
        return str((change["record"] or {}).get(column)) == value
    return True


class RealtimeServer:
    """Realtime for one database and project. `drop_connections()` cuts every socket, as a
    restart of the service would; `joins` counts the channel joins it accepted, `refused`
    the joins and handshakes it refused, `join_tokens` the token each join acted with."""

    def __init__(self, conninfo: str, keys: ProjectKeys) -> None:
        self.conninfo = conninfo
        self.keys = keys
        self.jwks = keys.jwks()
        self.joins = 0
        self.refused = 0
        self.join_tokens: list[str] = []
        self.refusing: str | None = None
        self._server: Server | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._catalog: psycopg.AsyncConnection[Any] | None = None
        self._subscriptions: dict[ServerConnection, dict[str, Subscription]] = {}
        self._socket_tokens: dict[ServerConnection, str] = {}
        self._next_id = 1
        self._port = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> RealtimeServer:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(INSTALL.encode())
        # Realtime reads as the subscriber's role: log in as authenticator, switch per read.
        reader_conninfo = await asyncio.to_thread(authenticator_conninfo, self.conninfo)
        self._reader = await psycopg.AsyncConnection.connect(reader_conninfo, autocommit=True)
        self._catalog = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        listen = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        await listen.execute(f"listen {CHANNEL}".encode())
        self._listener = asyncio.create_task(self._forward(listen))
        self._server = await self._serve(0)
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for conn in (self._reader, self._catalog):
            if conn is not None:
                await conn.close()

    async def stop(self) -> None:
        """Realtime down: every socket cut and nothing listening on the port."""
        assert self._server is not None
        self._port = int(next(iter(self._server.sockets)).getsockname()[1])
        self._server.close()
        await self._server.wait_closed()

    async def restart(self) -> None:
        """Realtime back, on the same port."""
        self._server = await self._serve(self._port)

    async def drop_connections(self) -> None:
        for socket in list(self._subscriptions):
            await socket.close(code=1012, reason="service restart")

    def refuse_joins(self, reason: str | None) -> None:
        """Refuse every join with ``reason`` ("<code>: <message>") until called with None."""
        self.refusing = reason

    async def close_channels(self, message: str = "Server requested disconnect") -> None:
        """Close every joined channel, sockets left open, as Realtime's operational
        disconnect does (a `system` message, then `phx_close`)."""
        for socket, topics in list(self._subscriptions.items()):
            for topic in list(topics):
                await self._close_channel(socket, topics, topic, "ok", message)

    async def _close_channel(
        self,
        socket: ServerConnection,
        topics: dict[str, Subscription],
        topic: str,
        status: str,
        message: str,
    ) -> None:
        subscription = topics.pop(topic, None)
        if subscription is not None and subscription.expiry is not None:
            subscription.expiry.cancel()
        with contextlib.suppress(ConnectionClosed):
            channel = topic.removeprefix("realtime:")
            await self._system(socket, topic, channel, status, message, extension="system")
            await socket.send(
                json.dumps({"event": "phx_close", "topic": topic, "payload": {}, "ref": None})
            )

    async def _serve(self, port: int) -> Server:
        return await serve(self._session, "127.0.0.1", port, process_request=self._handshake)

    # -- the socket -----------------------------------------------------------------------

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """The gateway's key check, then Realtime's verification of the socket's token."""
        apikey = next(iter(parse_qs(urlsplit(request.path).query).get("apikey", [])), None)
        if not apikey:
            return self._refuse(connection, "API key is missing")
        token = self.keys.role_token(apikey)
        if token is None:
            return self._refuse(connection, "Invalid API key")
        try:
            verify_token(self.keys.jwt_secret, token, self.jwks)
        except TokenRefused as refused:
            return self._refuse(connection, str(refused).partition(": ")[2])
        self._socket_tokens[connection] = token
        return None

    def _refuse(self, connection: ServerConnection, message: str) -> Response:
        self.refused += 1
        response = connection.respond(HTTPStatus.UNAUTHORIZED, json.dumps({"error": message}))
        response.headers["Content-Type"] = "application/json"
        return response

    async def _session(self, socket: ServerConnection) -> None:
        topics: dict[str, Subscription] = {}
        self._subscriptions[socket] = topics
        try:
            async for raw in socket:  # ends quietly when the client goes away
                message = json.loads(raw)
                event, topic, ref = message["event"], message["topic"], message.get("ref")
                payload = message.get("payload") or {}
                if event == "phx_join":
                    await self._join(socket, topics, topic, ref, payload)
                elif event == "access_token":
                    await self._renew(socket, topics, topic, payload)
                elif event == "phx_leave":
                    left = topics.pop(topic, None)
                    if left is not None and left.expiry is not None:
                        left.expiry.cancel()
                    await self._reply(socket, topic, ref, "ok", {})
                elif event == "heartbeat":
                    await self._reply(socket, topic, ref, "ok", {})
        except ConnectionClosed:
            pass
        finally:
            for subscription in topics.values():
                if subscription.expiry is not None:
                    subscription.expiry.cancel()
            self._subscriptions.pop(socket, None)
            self._socket_tokens.pop(socket, None)

    async def _join(
        self,
        socket: ServerConnection,
        topics: dict[str, Subscription],
        topic: str,
        ref: str | None,
        payload: dict[str, Any],
    ) -> None:
        token = self._join_token(payload, self._socket_tokens[socket])
        self.join_tokens.append(token)
        try:
            if self.refusing is not None:
                raise TokenRefused(self.refusing)
            claims = verify_token(self.keys.jwt_secret, token, self.jwks)
        except TokenRefused as refused:
            self.refused += 1
            await self._reply(socket, topic, ref, "error", {"reason": str(refused)})
            return
        requested = (payload.get("config") or {}).get("postgres_changes") or []
        bindings = [{**b, "id": self._take_id()} for b in requested]
        unpublished = [b for b in bindings if not await self._published(b)]
        # Subscribed before the reply: a change committed after the join is never missed.
        previous = topics.get(topic)
        if previous is not None and previous.expiry is not None:
            previous.expiry.cancel()  # a rejoin of the same topic replaces the old one
        topics[topic] = Subscription(
            bindings=[b for b in bindings if b not in unpublished], claims=claims
        )
        topics[topic].expiry = asyncio.create_task(self._expire(socket, topics, topic, claims))
        self.joins += 1
        await self._reply(socket, topic, ref, "ok", {"postgres_changes": bindings})
        if not bindings:
            return
        channel = topic.removeprefix("realtime:")
        if unpublished:
            params = ", ".join(
                f"[event: {b.get('event')}, schema: {b.get('schema', 'public')},"
                f" table: {b.get('table')}, filters: []]"
                for b in unpublished
            )
            message = (
                "Unable to subscribe to changes with given parameters. Please check Realtime"
                f" is enabled for the given connect parameters: {params}"
            )
            await self._system(socket, topic, channel, "error", message)
        else:
            await self._system(socket, topic, channel, "ok", "Subscribed to PostgreSQL")

    @staticmethod
    def _join_token(payload: dict[str, Any], socket_token: str) -> str:
        for field in ("user_token", "access_token"):
            if isinstance(payload.get(field), str):
                return str(payload[field])
        return socket_token

    async def _expire(
        self,
        socket: ServerConnection,
        topics: dict[str, Subscription],
        topic: str,
        claims: dict[str, Any],
    ) -> None:
        """Realtime's confirm_token timer: the channel closes when its token expires."""
        await asyncio.sleep(max(0.0, float(claims["exp"]) - time.time()))
        subscription = topics.get(topic)
        if subscription is None or subscription.claims is not claims:
            return
        subscription.expiry = None  # this task: not to be cancelled by the close below
        expired = int(time.time() - float(claims["exp"]))
        await self._close_channel(
            socket, topics, topic, "error", f"Token has expired {expired} seconds ago"
        )

    async def _renew(
        self,
        socket: ServerConnection,
        topics: dict[str, Subscription],
        topic: str,
        payload: dict[str, Any],
    ) -> None:
        """A new access token for a joined channel; an invalid one closes the channel."""
        subscription = topics.get(topic)
        token = payload.get("access_token")
        if subscription is None or not isinstance(token, str):
            return  # Realtime ignores a null token
        try:
            claims = verify_token(self.keys.jwt_secret, token, self.jwks)
        except TokenRefused as refused:
            await self._close_channel(socket, topics, topic, "error", str(refused))
            return
        if subscription.expiry is not None:
            subscription.expiry.cancel()
        subscription.claims = claims
        subscription.expiry = asyncio.create_task(self._expire(socket, topics, topic, claims))

    async def _published(self, binding: dict[str, Any]) -> bool:
        table = binding.get("table")
        table = None if table in (None, "*") else table
        assert self._catalog is not None
        cursor = await self._catalog.execute(
            PUBLISHED, (binding.get("schema", "public"), table, table)
        )
        return await cursor.fetchone() is not None

    @staticmethod
    async def _reply(
        socket: ServerConnection, topic: str, ref: str | None, status: str, response: Any
    ) -> None:
        if ref is None:
            return
        await socket.send(
            json.dumps(
                {
                    "event": "phx_reply",
                    "topic": topic,
                    "payload": {"status": status, "response": response},
                    "ref": ref,
                }
            )
        )

    @staticmethod
    async def _system(
        socket: ServerConnection,
        topic: str,
        channel: str,
        status: str,
        message: str,
        extension: str = "postgres_changes",
    ) -> None:
        payload = {
            "channel": channel,
            "extension": extension,
            "message": message,
            "status": status,
        }
        await socket.send(
            json.dumps({"event": "system", "topic": topic, "payload": payload, "ref": None})
        )

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- changes --------------------------------------------------------------------------

    async def _forward(self, listen: psycopg.AsyncConnection[Any]) -> None:
        """Each change in commit order, to each matching subscriber that may see it."""
        try:
            async for notify in listen.notifies():
                change = json.loads(notify.payload)
                for socket, topics in list(self._subscriptions.items()):
                    for topic, subscription in list(topics.items()):
                        ids = [b["id"] for b in subscription.bindings if _matches(b, change)]
                        if ids and await self._visible(subscription.claims, change):
                            with contextlib.suppress(Exception):
                                await socket.send(json.dumps(self._change(topic, change, ids)))
        finally:
            await listen.close()

    async def _visible(self, claims: dict[str, Any], change: dict[str, Any]) -> bool:
        """Whether the subscriber's role, with its claims, may select the changed row."""
        assert self._reader is not None
        query = sql.SQL("select 1 from {}.{} where id = %s").format(
            sql.Identifier(change["schema"]), sql.Identifier(change["table"])
        )
        try:
            async with self._reader.transaction(force_rollback=True):
                await self._reader.execute(
                    "select set_config('role', %s, true),"
                    " set_config('request.jwt.claims', %s, true)",
                    (str(claims.get("role") or ANON_ROLE), json.dumps(claims)),
                )
                cursor = await self._reader.execute(query, ((change["record"] or {}).get("id"),))
                return await cursor.fetchone() is not None
        except psycopg.Error:
            return False  # a role it cannot switch to, or no privilege on the table

    @staticmethod
    def _change(topic: str, change: dict[str, Any], ids: list[int]) -> dict[str, Any]:
        data = {
            "schema": change["schema"],
            "table": change["table"],
            "commit_timestamp": datetime.now(UTC).isoformat(),
            "type": change["type"],
            "errors": None,
            "columns": [],
            "record": change["record"],
        }
        return {
            "event": "postgres_changes",
            "topic": topic,
            "payload": {"data": data, "ids": ids},
            "ref": None,
        }
