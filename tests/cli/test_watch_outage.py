"""`portraitkit batches watch` rides out a database outage, as the worker does: the database
stops for 15 s under a running watch, comes back, and the watch follows the batch to its
end. Ctrl-C during an outage still ends the watch at once.

The database is a server of this module's own (stopping the session's would break every
other test); the watch is a real process, reading the batch as the user."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import Migrator
from portraitkit.feeds import NotifyFeed
from portraitkit.watch import BATCHES_CHANNEL

from .conftest import FOREIGN_ENV, Cli, finish_batch

PORTRAITKIT = Path(sys.executable).with_name("portraitkit")
OUTAGE_SECONDS = 15.0


class Database:
    """An embedded server that a test may stop and start again (on the same port)."""

    def __init__(self, state_dir: Path) -> None:
        self.server = EmbeddedPostgres(state_dir)
        self.url = self.server.ensure_running()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        assert self.server.ensure_running() == self.url


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    # Outside pytest's basetemp, as the session's server (see tests/conftest.py).
    state_dir = Path(tempfile.mkdtemp(prefix="portraitkit-outage-test-"))
    database = Database(state_dir)
    Migrator(database.url, bootstrap=True).migrate()
    yield database
    database.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def running(database: Database) -> Iterator[Database]:
    """The server, up at the start of the test and again at its end, whatever happened."""
    database.start()
    yield database
    database.start()


@pytest.fixture
def cli(clean_env: None, running: Database, tmp_path: Path) -> Cli:
    return Cli(database_url=running.url, state_dir=tmp_path / "state")


def new_batch(cli: Cli) -> tuple[str, str]:
    """A user with a batch of two items waiting; the user's email and the batch id."""
    email = f"outage-{time.monotonic_ns()}@example.test"
    cli.json("users", "create", email, "--credits", "10")
    batch = cli.json("batches", "create", "-u", email, "--sample", "-s", "poster,noir")
    return email, str(batch["batch_id"])


class Watch:
    """`portraitkit batches watch` in a process of its own; its output read as it comes."""

    def __init__(self, cli: Cli, email: str, batch_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        self.proc = subprocess.Popen(
            [
                str(PORTRAITKIT),
                "--state-dir",
                str(cli.state_dir),
                "--database-url",
                str(cli.database_url),
                "batches",
                "watch",
                batch_id,
                "--user",
                email,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, keep: Callable[[str], None]) -> None:
        assert stream is not None
        for line in stream:
            keep(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, seconds: float = 30.0) -> None:
        """Return once the watch has printed a line starting with ``prefix``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} within {seconds} s: {self.stderr()[-2000:]}")
            if line.startswith(prefix):
                return

    def stderr(self) -> str:
        return "\n".join(self.errors)

    def end(self, timeout: float) -> list[str]:
        """Wait for the process to end (killing it after ``timeout`` seconds); the lines it
        printed since the last one waited for."""
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join()
        return list(self.lines.queue)


def test_watch_finishes_normally_after_a_15_second_outage(cli: Cli, running: Database) -> None:
    email, batch_id = new_batch(cli)
    watch = Watch(cli, email, batch_id)
    try:
        watch.wait_for_line(f"batch {batch_id}: pending")  # it has read the batch once

        running.stop()
        time.sleep(OUTAGE_SECONDS)
        assert watch.proc.poll() is None, f"the watch gave up: {watch.stderr()[-2000:]}"
        running.start()
        finish_batch(running.url, batch_id, "completed")
    finally:
        lines = watch.end(timeout=60)

    assert watch.proc.returncode == 0, watch.stderr()
    assert f"batch {batch_id}: completed, 2/2 photos (100%)" in lines
    assert lines[-1].startswith(f"batch {batch_id} completed in ")
    assert lines[-1].endswith(": 2/2 photos, 0 failed, 0 cancelled; 2 credits charged")


def test_ctrl_c_ends_a_watch_waiting_out_an_outage_at_once(cli: Cli, running: Database) -> None:
    email, batch_id = new_batch(cli)
    watch = Watch(cli, email, batch_id)
    try:
        watch.wait_for_line(f"batch {batch_id}: pending")
        running.stop()
        time.sleep(2.0)  # the watch is now retrying its read
        assert watch.proc.poll() is None

        watch.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        watch.proc.wait(10)
        stopped_in = time.monotonic() - started
    finally:
        watch.end(timeout=10)

    assert watch.proc.returncode == 130, watch.stderr()
    assert stopped_in < 2.0
    assert "stopped watching; the batch goes on" in watch.stderr()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_listen_feed_rings_again_after_a_restart(running: Database) -> None:
    """What wakes the watch once the database is back: LISTEN resumes by itself."""
    feed = await NotifyFeed(running.url, BATCHES_CHANNEL, payload="the-batch").start()
    try:
        await asyncio.wait_for(feed.connected.wait(), 10)
        assert await feed.wait(0) is True  # connecting rings

        await asyncio.to_thread(running.stop)
        await asyncio.sleep(1.0)
        assert not feed.connected.is_set()
        await asyncio.to_thread(running.start)
        await asyncio.wait_for(feed.connected.wait(), 20)
        assert await feed.wait(0) is True  # again: anything may have happened meanwhile

        with psycopg.connect(running.url, autocommit=True) as conn:
            conn.execute("select pg_notify(%s, 'the-batch')", (BATCHES_CHANNEL,))
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
