"""Fixtures for the app's HTTP side: the ASGI app on the module's real database, users
with access tokens, and a local JWKS endpoint serving a key pair of our own."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from portraitkit.auth import LocalUser, create_local_user, issue_user_token
from portraitkit.settings import Settings
from portraitkit.web import create_app

SECRET = "portraitkit-web-test-secret-with-32-bytes-or-more"
KID = "test-key-1"
LOOPBACK = ("127.0.0.1", 50000)


class Jwks:
    """A key pair, its public half served at ``url`` as Supabase Auth serves its JWKS."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        body = json.dumps({"keys": [{**public, "kid": KID, "alg": "ES256", "use": "sig"}]})
        self.requests = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/auth/v1/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, user: LocalUser, *, kid: str = KID, ttl: int = 3600, **claims: Any) -> str:
        import time

        now = int(time.time())
        payload = {
            "sub": str(user.id),
            "aud": "authenticated",
            "role": "authenticated",
            "email": user.email,
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        return jwt.encode(payload, self.private, algorithm="ES256", headers={"kid": kid})


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    keys = Jwks()
    yield keys
    keys.server.shutdown()


@pytest.fixture(scope="module")
def web_settings(db_url: str, tmp_path_factory: pytest.TempPathFactory, jwks: Jwks) -> Settings:
    state: Path = tmp_path_factory.mktemp("web-state")
    return Settings(database_url=db_url, jwt_secret=SECRET, state_dir=state, jwks_url=jwks.url)


@pytest.fixture(scope="module")
def api(web_settings: Settings) -> Iterator[TestClient]:
    """The app without its in-process worker (tests drive the queue themselves)."""
    # From this machine, as a developer's browser would be (local sign-in needs that).
    with TestClient(create_app(web_settings, worker=False), client=LOOPBACK) as client:
        yield client


@pytest.fixture
def make_user(db_url: str) -> Callable[..., tuple[LocalUser, dict[str, str]]]:
    def make(credits: int = 50) -> tuple[LocalUser, dict[str, str]]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)
        token = issue_user_token(SECRET, user.id, user.email)
        return user, {"Authorization": f"Bearer {token}"}

    return make
