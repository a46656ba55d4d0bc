"""Fixtures for the app's HTTP side: the ASGI app on the module's real database, users
with access tokens, and a local JWKS endpoint serving a key pair of our own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from portraitkit.auth import LocalUser, create_local_user, issue_user_token
from portraitkit.settings import Settings
from portraitkit.web import create_app
from tests.jwks import Jwks

SECRET = "portraitkit-web-test-secret-with-32-bytes-or-more"
LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    keys = Jwks()
    yield keys
    keys.close()


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
