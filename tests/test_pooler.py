"""Through a transaction-mode pooler, as a DATABASE_URL pointing at Supabase's pooler is.

PgBouncer in transaction mode (what Supavisor's port 6543 does) gives each transaction
whichever server connection is free, so several users' transactions run one after another
on one server session. Every call must therefore carry its whole context in its own
transaction (role and claims with `set_config(..., true)`, no prepared statements, nothing
left behind after an error), and LISTEN, which needs a session, goes to a session URL of
its own (`PORTRAITKIT_LISTEN_URL`).

PgBouncer comes from Debian's package, installed on first use when we are root with
apt-get (as the Supabase CLI test installs its npm package); the tests skip, saying why,
where it cannot be had.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from portraitkit import errors
from portraitkit.auth import create_local_user
from portraitkit.client import PortraitClient
from portraitkit.database.server_account import server_account
from portraitkit.feeds import NotifyFeed
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import BatchStatus
from portraitkit.service import open_worker
from portraitkit.session import LocalTokens
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import PostgresTransport, make_pool
from portraitkit.worker import WorkerOptions
from tests.debian import debian_program
from tests.waiting import until

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-pooler-test-secret-with-32-bytes-or-more"
USERS = 6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pgbouncer_binary() -> str:
    """pgbouncer on PATH (or in /usr/sbin), installed from Debian's package if missing."""
    return debian_program("pgbouncer", "pgbouncer", timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pooler_url(db_url: str) -> Iterator[str]:
    """The module's database behind PgBouncer in transaction mode with ONE server
    connection: every transaction of every client runs on the same server session."""
    binary = pgbouncer_binary()
    server = conninfo_to_dict(db_url)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="portraitkit-pgbouncer-"))
    workdir.chmod(0o755)  # pgbouncer runs as the unprivileged server account under root
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={server['host']} port={server['port']} user={server['user']}"
        f" password={server['password']}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        "default_pool_size = 1\n"
        "max_client_conn = 200\n"
    )
    ini.chmod(0o644)
    account = server_account()
    command = [binary, *(["-u", account.name] if account else []), str(ini)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = make_conninfo(db_url, host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(url, prepare_threshold=None, connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    output = process.communicate()[0].decode(errors="replace")
                    pytest.fail(f"pgbouncer did not start: {output[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def make_client(db_url: str, pooler_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """make_client(credits) -> a user's client whose every call goes through the pooler."""
    transports: list[PostgresTransport] = []

    async def make(credits: int = 30) -> PortraitClient:
        with psycopg.connect(db_url, autocommit=True) as conn:
            user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)
        pool = make_pool(pooler_url, max_size=2)
        await pool.open()
        transport = PostgresTransport(pool, LocalTokens(SECRET, user), SECRET, owns_pool=True)
        transports.append(transport)
        return PortraitClient(transport, LocalStorage(tmp_path / "storage"))

    yield make
    for transport in transports:
        await transport.aclose()


def session_of(url: str) -> tuple[int, str, str | None]:
    """Through the pooler, outside any request: the server session's pid, role and claims."""
    with psycopg.connect(url, prepare_threshold=None, autocommit=True) as conn:
        row = conn.execute(
            "select pg_backend_pid(), current_user, current_setting('request.jwt.claims', true)"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), row[2]


async def test_interleaved_users_each_see_only_their_own_batches(
    make_client: Any, pooler_url: str
) -> None:
    clients = [await make_client() for _ in range(USERS)]
    photo = sample_portrait_png()

    async def use(client: PortraitClient) -> tuple[set[uuid.UUID], set[uuid.UUID], int]:
        made = set()
        for _ in range(3):
            made.add(await client.create_batch(["poster"], photo))
            await client.list_batches()  # interleaves with the other users' writes
        listed = {b.id async for b in client.iter_batches(page_size=2)}
        return made, listed, await client.balance()

    results = await asyncio.gather(*(use(c) for c in clients))
    for made, listed, balance in results:
        assert listed == made and len(made) == 3
        assert balance == 30 - 3  # poster costs 1
    every = [b for made, _, _ in results for b in made]
    assert len(set(every)) == USERS * 3
    # One server session carried them all, and no request's role or claims outlived it.
    first, second = session_of(pooler_url), session_of(pooler_url)
    assert first[0] == second[0]
    assert first[1:] == ("postgres", "") or first[1:] == ("postgres", None)


async def test_errors_through_the_pooler_are_typed_and_leave_nothing_behind(
    make_client: Any, pooler_url: str
) -> None:
    poor, other = await make_client(credits=1), await make_client()
    with pytest.raises(errors.InsufficientCredits) as refused:
        await poor.create_batch(["oil_painting"], sample_portrait_png())
    assert refused.value.details == {"required": 3, "available": 1}
    with pytest.raises(errors.BatchNotFound):
        await other.get_batch(uuid.uuid4())
    # The same server session serves the next request cleanly.
    batch_id = await other.create_batch(["poster"], sample_portrait_png())
    assert [b.id for b in (await other.list_batches()).items] == [batch_id]
    assert (await poor.list_batches()).items == [] and await poor.balance() == 1
    _pid, role, claims = session_of(pooler_url)
    assert role == "postgres" and not claims


async def test_worker_through_the_pooler_is_woken_through_the_session_url(
    make_client: Any, db_url: str, pooler_url: str, tmp_path: Path
) -> None:
    """Claims and results go through the pooler; the wake-up comes over PORTRAITKIT_LISTEN_URL.
    The poll interval is a minute, so a batch finished within seconds was rung in."""
    client = await make_client()
    settings = Settings(
        database_url=pooler_url,
        listen_url=db_url,
        state_dir=tmp_path,
        jwt_secret=SECRET,
        generator="noop",
    )
    options = WorkerOptions(poll_seconds=60)
    async with open_worker(settings, options) as worker:
        running = asyncio.create_task(worker.run())
        assert isinstance(worker.feed, NotifyFeed)
        await asyncio.wait_for(worker.feed.connected.wait(), 10)
        await asyncio.sleep(0.3)  # the worker has looked once and now waits for the bell
        batch_id = await client.create_batch(["poster", "noir", "pixel_art"], sample_portrait_png())

        async def completed() -> bool:
            return (await client.get_batch(batch_id)).status is BatchStatus.COMPLETED

        await until(completed, "the batch completing")
        worker.stop()
        stats = await running
    assert stats.completed == 3
