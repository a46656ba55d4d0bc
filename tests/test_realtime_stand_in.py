"""The Realtime stand-in (tests/realtime.py) refuses what Supabase Realtime refuses.

Its socket and join checks, pinned with the replies Realtime gives (sources in the
stand-in's docstring): the API key at the handshake, each join's token (another secret,
expired, an API key that is not a JWT), the socket's token when a join carries none,
tokens of the project's key pair, and the channels it closes (an expired token, an invalid
new token, an operator's disconnect).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import InvalidStatus

from tests.gateway import ProjectKeys, create_supabase_database, drop_database
from tests.realtime import RealtimeServer

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-realtime-stand-in-secret-with-32-bytes-or-more"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    url = create_supabase_database(database_url, f"t_realtime_stand_in_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(database_url, url)


def signed(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")


def es256(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    return jwt.encode(
        {"exp": int(time.time()) + 600, **claims}, key, algorithm="ES256", headers={"kid": kid}
    )


@pytest.fixture
async def realtime(db_url: str) -> AsyncIterator[RealtimeServer]:
    server = await RealtimeServer(db_url, ProjectKeys.create(SECRET)).start()
    yield server
    await server.aclose()


def socket_url(realtime: RealtimeServer, apikey: str) -> str:
    return realtime.url.replace("http", "ws") + f"/realtime/v1/websocket?apikey={apikey}&vsn=1.0.0"


def join_message(access_token: str | None) -> str:
    payload: dict[str, Any] = {
        "config": {
            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "generations"}]
        }
    }
    if access_token is not None:
        payload["access_token"] = access_token
    return json.dumps(
        {"topic": "realtime:test", "event": "phx_join", "payload": payload, "ref": "1"}
    )


async def join(
    realtime: RealtimeServer, access_token: str | None, apikey: str | None = None
) -> dict[str, Any]:
    """phx_join a generations channel with ``access_token`` (None: none in the join) on a
    socket opened with ``apikey`` (the anon key unless given); Realtime's reply payload."""
    async with websocket_connect(socket_url(realtime, apikey or realtime.keys.anon_key)) as socket:
        await socket.send(join_message(access_token))
        reply: dict[str, dict[str, Any]] = json.loads(await socket.recv())
        return reply["payload"]


async def messages_after_join(
    realtime: RealtimeServer,
    access_token: str,
    act: Callable[[ClientConnection], Awaitable[object]],
) -> list[dict[str, Any]]:
    """Join (successfully), run ``act`` with the socket, and return the last two messages
    the server sends up to ``phx_close`` among ``system`` and ``phx_close``."""
    received: list[dict[str, Any]] = []
    async with websocket_connect(socket_url(realtime, realtime.keys.anon_key)) as socket:
        await socket.send(join_message(access_token))
        reply = json.loads(await socket.recv())
        assert reply["payload"]["status"] == "ok"
        await act(socket)
        async with asyncio.timeout(10):
            while not received or received[-1]["event"] != "phx_close":
                message = json.loads(await socket.recv())
                if message["event"] in ("system", "phx_close"):
                    received.append(message)
    return received[-2:]


async def test_realtime_refuses_a_join_with_a_token_of_another_secret(
    realtime: RealtimeServer,
) -> None:
    token = signed({"role": "authenticated", "sub": str(uuid.uuid4())}, secret="x" * 40)
    assert await join(realtime, token) == {
        "status": "error",
        "response": {"reason": "JwtSignatureError: Failed to validate JWT signature"},
    }
    assert realtime.joins == 0


async def test_realtime_refuses_a_join_with_an_expired_token(realtime: RealtimeServer) -> None:
    token = jwt.encode(
        {"role": "authenticated", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"
    )
    reply = await join(realtime, token)
    assert reply["status"] == "error"
    assert reply["response"]["reason"].startswith("InvalidJWTToken: Token has expired")


async def test_realtime_accepts_a_join_with_a_valid_token(realtime: RealtimeServer) -> None:
    reply = await join(realtime, signed({"role": "authenticated", "sub": str(uuid.uuid4())}))
    assert reply["status"] == "ok"
    assert realtime.joins == 1


@pytest.mark.parametrize("key", ["publishable_key", "secret_key"])
async def test_realtime_refuses_a_join_with_an_api_key_as_its_token(
    realtime: RealtimeServer, key: str
) -> None:
    """What supabase-py sends until someone signs in: Realtime takes it for a JWT."""
    assert await join(realtime, getattr(realtime.keys, key)) == {
        "status": "error",
        "response": {"reason": "InvalidJWTToken: Token claims must be a map"},
    }
    assert (realtime.joins, realtime.refused) == (0, 1)


@pytest.mark.parametrize(
    ("key", "role_token"), [("publishable_key", "anon_key"), ("secret_key", "service_key")]
)
async def test_a_join_without_a_token_acts_with_the_sockets_key(
    realtime: RealtimeServer, key: str, role_token: str
) -> None:
    reply = await join(realtime, None, apikey=getattr(realtime.keys, key))
    assert reply["status"] == "ok"
    assert realtime.join_tokens == [getattr(realtime.keys, role_token)]


async def test_realtime_accepts_a_join_with_a_token_of_the_projects_key_pair(
    realtime: RealtimeServer,
) -> None:
    claims = {"role": "authenticated", "sub": str(uuid.uuid4())}
    token = es256(claims, realtime.keys.signing_key, realtime.keys.signing_kid)
    assert (await join(realtime, token))["status"] == "ok"


async def test_realtime_refuses_every_join_while_told_to(realtime: RealtimeServer) -> None:
    realtime.refuse_joins("RealtimeRestarting: Realtime is restarting, please standby")
    reply = await join(realtime, signed({"role": "anon"}))
    assert reply["response"] == {
        "reason": "RealtimeRestarting: Realtime is restarting, please standby"
    }
    realtime.refuse_joins(None)
    assert (await join(realtime, signed({"role": "anon"})))["status"] == "ok"


async def test_realtime_closes_a_channel_when_its_token_expires(realtime: RealtimeServer) -> None:
    token = jwt.encode(
        {"role": "authenticated", "exp": int(time.time()) + 2}, SECRET, algorithm="HS256"
    )
    system, close = await messages_after_join(realtime, token, lambda _socket: asyncio.sleep(0))
    assert system["payload"]["status"] == "error"
    assert system["payload"]["message"].startswith("Token has expired")
    assert (close["event"], close["topic"]) == ("phx_close", "realtime:test")


async def test_realtime_closes_a_channel_given_an_api_key_as_new_token(
    realtime: RealtimeServer,
) -> None:
    async def renew_with_the_key(socket: ClientConnection) -> None:
        await socket.send(
            json.dumps(
                {
                    "topic": "realtime:test",
                    "event": "access_token",
                    "payload": {"access_token": realtime.keys.publishable_key},
                    "ref": "2",
                }
            )
        )

    system, close = await messages_after_join(
        realtime, signed({"role": "anon"}), renew_with_the_key
    )
    assert system["payload"]["message"] == "InvalidJWTToken: Token claims must be a map"
    assert close["event"] == "phx_close"


async def test_realtime_closes_channels_on_request(realtime: RealtimeServer) -> None:
    system, close = await messages_after_join(
        realtime, signed({"role": "anon"}), lambda _socket: realtime.close_channels()
    )
    assert (system["payload"]["status"], system["payload"]["message"]) == (
        "ok",
        "Server requested disconnect",
    )
    assert close["event"] == "phx_close"


async def test_realtime_refuses_a_socket_without_a_project_key(realtime: RealtimeServer) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with websocket_connect(socket_url(realtime, signed({"role": "anon"}))):
            pass
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body) == {"error": "Invalid API key"}
