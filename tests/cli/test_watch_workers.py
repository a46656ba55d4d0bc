"""`batches watch` on a batch that no worker will run: it says so instead of waiting in
silence, then follows the batch once a worker starts."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portraitkit.watch import NO_WORKER

from .conftest import FOREIGN_ENV, Cli

PORTRAITKIT = Path(sys.executable).parent / "portraitkit"


@pytest.fixture(autouse=True)
def no_workers(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("delete from private.workers")
        conn.execute("update public.generations set status = 'cancelled' where status = 'pending'")


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue[str], wanted: str, seconds: float = 60) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if wanted in line:
            return seen
    raise AssertionError(f"never printed {wanted!r}; printed {seen!r}")


def test_watch_says_no_worker_is_running_then_follows_the_one_that_starts(
    cli: Cli, make_user: Any
) -> None:
    user = make_user()
    batch_id = cli.json("batches", "create", "-u", user, "--sample", "-s", "noir")["batch_id"]
    assert cli.database_url is not None
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    watch = subprocess.Popen(
        [
            str(PORTRAITKIT),
            "--state-dir",
            str(cli.state_dir),
            "--database-url",
            cli.database_url,
            "batches",
            "watch",
            batch_id,
            "-u",
            user,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = lines_of(watch)
        wait_for(lines, NO_WORKER)
        cli.run("worker", "--once", "--generator", "noop")
        wait_for(lines, f"batch {batch_id} completed")
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()
