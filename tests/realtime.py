"""Supabase Realtime's `postgres_changes`, standing in for the hosted service in tests.

A Phoenix-channel WebSocket server on localhost (the wire protocol of
`/realtime/v1/websocket?apikey=...&vsn=1.0.0`: `phx_join` with the channel's
`config.postgres_changes` bindings, answered by a `phx_reply` that gives each binding an
id; heartbeats on topic `phoenix`; change messages carrying `{data, ids}`), in front of the
real test database. Changes reach it the way the WAL reaches Realtime, only simpler: a
test-only row trigger NOTIFYs each change as JSON, and the server forwards it to every
channel binding whose event, schema, table and `column=eq.value` filter match. RLS is not
re-checked per subscriber: these tests ask whether a subscriber is rung, not what it may
see. supabase-py's realtime client talks to it unchanged: give it this server's `url`
as SUPABASE_URL and mount the HTTP gateway (respx) on the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from websockets.asyncio.server import Server, ServerConnection, serve

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


def _matches(binding: dict[str, Any], change: dict[str, Any]) -> bool:
    if binding.get("event") not in ("*", change["type"]):
        return False
    if binding.get("schema", "public") != change["schema"]:
        return False
    if binding.get("table") not in (None, change["table"]):
        return False
    if filter_ := binding.get("filter"):
        column, _, value = filter_.partition("=eq.")
        return str((change["record"] or {}).get(column)) == value
    return True


class RealtimeServer:
    """Realtime for one database. `drop_connections()` cuts every socket, as a restart of
    the service would; `joins` counts the channel joins it answered."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.joins = 0
        self._server: Server | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscriptions: dict[ServerConnection, dict[str, list[dict[str, Any]]]] = {}
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
        listen = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        await listen.execute(f"listen {CHANNEL}".encode())
        self._listener = asyncio.create_task(self._forward(listen))
        self._server = await serve(self._session, "127.0.0.1", 0)
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def stop(self) -> None:
        """Realtime down: every socket cut and nothing listening on the port."""
        assert self._server is not None
        self._port = int(next(iter(self._server.sockets)).getsockname()[1])
        self._server.close()
        await self._server.wait_closed()

    async def restart(self) -> None:
        """Realtime back, on the same port."""
        self._server = await serve(self._session, "127.0.0.1", self._port)

    async def drop_connections(self) -> None:
        for socket in list(self._subscriptions):
            await socket.close(code=1012, reason="service restart")

    async def _forward(self, listen: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for notify in listen.notifies():
                change = json.loads(notify.payload)
                for socket, topics in list(self._subscriptions.items()):
                    for topic, bindings in topics.items():
                        ids = [b["id"] for b in bindings if _matches(b, change)]
                        if ids:
                            with contextlib.suppress(Exception):
                                await socket.send(json.dumps(self._change(topic, change, ids)))
        finally:
            await listen.close()

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

    async def _session(self, socket: ServerConnection) -> None:
        topics: dict[str, list[dict[str, Any]]] = {}
        self._subscriptions[socket] = topics
        try:
            async for raw in socket:
                message = json.loads(raw)
                event, topic, ref = message["event"], message["topic"], message.get("ref")
                response: dict[str, Any] = {}
                if event == "phx_join":
                    bindings = [
                        {**b, "id": self._take_id()}
                        for b in message["payload"]["config"].get("postgres_changes", [])
                    ]
                    topics[topic] = bindings
                    self.joins += 1
                    response = {"postgres_changes": bindings}
                elif event == "phx_leave":
                    topics.pop(topic, None)
                elif event not in ("heartbeat", "access_token"):
                    continue
                if ref is not None:
                    await socket.send(
                        json.dumps(
                            {
                                "event": "phx_reply",
                                "topic": topic,
                                "payload": {"status": "ok", "response": response},
                                "ref": ref,
                            }
                        )
                    )
        finally:
            self._subscriptions.pop(socket, None)

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id
