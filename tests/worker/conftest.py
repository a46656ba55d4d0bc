"""Fixtures for the worker's tests: users with clients, and workers on the module database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from portraitkit.auth import LocalUser, create_local_user
from portraitkit.client import PortraitClient
from portraitkit.generators.base import Generator
from portraitkit.service import open_worker
from portraitkit.session import LocalTokens
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import PostgresTransport, make_pool
from portraitkit.worker import Worker, WorkerOptions

SECRET = "portraitkit-worker-test-secret-with-32-bytes-or-more"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-state")


@pytest.fixture
def settings(db_url: str, state_dir: Path) -> Settings:
    return Settings(database_url=db_url, jwt_secret=SECRET, state_dir=state_dir)


@pytest.fixture
def admin(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(autouse=True)
def empty_queue(admin: psycopg.Connection[dict[str, Any]]) -> None:
    """Each test starts with nothing pending or running from earlier tests."""
    admin.execute(
        "update public.generations set status = 'cancelled'"
        " where status in ('pending', 'processing')"
    )


@pytest.fixture
async def make_client(db_url: str, state_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    pool = make_pool(db_url, max_size=2)
    await pool.open()
    clients: list[PortraitClient] = []

    def make(credits: int = 100) -> PortraitClient:
        with psycopg.connect(db_url, autocommit=True) as conn:
            user: LocalUser = create_local_user(
                conn, f"{uuid.uuid4().hex[:10]}@example.test", credits
            )
        client = PortraitClient(
            PostgresTransport(pool, LocalTokens(SECRET, user), SECRET),
            LocalStorage(state_dir / "storage"),
        )
        clients.append(client)
        return client

    yield make
    await pool.close()


@pytest.fixture
def worker_factory(settings: Settings) -> Callable[..., Any]:
    """worker_factory(generators, **options) -> an async context manager giving a Worker."""

    @contextlib.asynccontextmanager
    async def make(generators: Callable[[str], Generator], **options: Any) -> AsyncIterator[Worker]:
        defaults: dict[str, Any] = {
            "concurrency": 4,
            "poll_seconds": 0.2,
            "recover_every_seconds": 0.2,
            "heartbeat_seconds": 0.5,
            "lease_seconds": 10,
            "worker_id": f"w-{uuid.uuid4().hex[:6]}",
        }
        defaults.update(options)
        async with open_worker(settings, WorkerOptions(**defaults), generators) as worker:
            yield worker

    return make
