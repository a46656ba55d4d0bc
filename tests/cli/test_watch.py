"""`portraitkit batches watch`: follows a batch that a worker in another process runs, woken
by the change feed (LISTEN/NOTIFY on portraitkit_batches), until the batch ends."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portraitkit.feeds import NotifyFeed
from portraitkit.models import Batch, BatchStatus
from portraitkit.session import open_client
from portraitkit.settings import Settings
from portraitkit.watch import BATCHES_CHANNEL, watch_batch

from .conftest import Cli

ROOT = Path(__file__).resolve().parents[2]
SECRET = "portraitkit-cli-watch-test-secret-32-bytes-or-more"
STYLES = ("noir", "poster", "pixel_art", "pop_art", "charcoal", "cyanotype")
MakeUser = Callable[..., str]


@pytest.fixture(scope="module")
def worker_process(db_url: str, cli_state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A real worker in another process: half a second per item, two at a time."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker.process",
            "--database-url",
            db_url,
            "--secret",
            SECRET,
            "--state-dir",
            str(cli_state_dir),
            "--generator",
            "slow:0.5",
            "--concurrency",
            "2",
            "--worker-id",
            "cli-watch-worker",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.fixture
def watcher(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, worker_process: subprocess.Popen[str]
) -> Cli:
    """The CLI with the worker's JWT secret (what PORTRAITKIT_JWT_SECRET is for)."""
    monkeypatch.setenv("PORTRAITKIT_JWT_SECRET", SECRET)
    return cli


def create(cli: Cli, user: str) -> str:
    styles = ",".join(STYLES)
    return str(cli.json("batches", "create", "-u", user, "--sample", "-s", styles)["batch_id"])


def test_watch_shows_the_batch_filling_up_until_it_ends(watcher: Cli, make_user: MakeUser) -> None:
    user = make_user()
    batch_id = create(watcher, user)

    out = watcher.run("batches", "watch", batch_id, "--user", user).stdout

    lines = out.strip().splitlines()
    batch_lines = [line for line in lines if line.startswith(f"batch {batch_id}:")]
    assert batch_lines[0].split(": ")[1].startswith(("pending", "processing"))
    assert batch_lines[-1] == f"batch {batch_id}: completed, 6/6 photos (100%)"
    for name in ("Film Noir", "Poster", "Pixel Art", "Pop Art", "Charcoal", "Cyanotype"):
        assert any(re.match(rf"\s+{name}\s+completed", line) for line in lines)
    assert any("processing" in line for line in lines)
    assert lines[-1].startswith(f"batch {batch_id} completed in ")
    assert lines[-1].endswith(": 6/6 photos, 0 failed, 0 cancelled; 8 credits charged")


def test_watch_json_prints_the_final_batch(watcher: Cli, make_user: MakeUser) -> None:
    user = make_user()
    batch_id = create(watcher, user)

    batch = json.loads(watcher.run("batches", "watch", batch_id, "--user", user, "--json").stdout)

    assert (batch["id"], batch["status"], batch["completed_count"]) == (batch_id, "completed", 6)
    assert {i["status"] for i in batch["items"]} == {"completed"}


def test_watching_a_finished_batch_prints_its_summary_at_once(
    watcher: Cli, make_user: MakeUser
) -> None:
    user = make_user()
    batch_id = create(watcher, user)
    watcher.run("batches", "watch", batch_id, "--user", user)

    started = time.monotonic()
    out = watcher.run("batches", "watch", batch_id, "--user", user).stdout

    assert time.monotonic() - started < 2
    assert out.strip().splitlines()[-1].startswith(f"batch {batch_id} completed in ")


def test_watch_batch_is_woken_by_the_feed_not_the_backstop(
    watcher: Cli, make_user: MakeUser, db_url: str
) -> None:
    user = make_user()
    batch_id = create(watcher, user)
    settings = Settings(database_url=db_url, state_dir=watcher.state_dir, jwt_secret=SECRET)

    async def follow() -> list[Batch]:
        async with await open_client(settings, user=user) as client:
            feed = await NotifyFeed(db_url, BATCHES_CHANNEL, payload=batch_id).start()
            try:
                return [b async for b in watch_batch(client, batch_id, feed, backstop=60)]
            finally:
                await feed.aclose()

    started = time.monotonic()
    snapshots = asyncio.run(follow())

    assert time.monotonic() - started < 15  # one missed ring would cost the 60 s backstop
    assert snapshots[-1].status == BatchStatus.COMPLETED
    assert len(snapshots) >= 3  # it saw the batch on its way, not only at the end
    counts = [b.completed_count for b in snapshots]
    assert counts == sorted(counts)
