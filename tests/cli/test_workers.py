"""`portraitkit workers`: the live workers, for people and programs."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from .conftest import Cli


@pytest.fixture(autouse=True)
def no_workers(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("delete from private.workers")


def test_the_workers_command_lists_live_workers(cli: Cli, db_url: str) -> None:
    assert "no worker is running" in cli.run("workers").stdout
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "insert into private.workers (worker_id, hostname, pid, concurrency, expires_at)"
            " values ('w-cli', 'host-a', 77, 4, now() + interval '1 minute'),"
            " ('w-gone', 'host-b', 78, 4, now() - interval '1 minute')"
        )
    table = cli.run("workers").stdout
    assert "w-cli" in table and "live" in table and "host-a" in table and "w-gone" not in table
    listed: list[dict[str, Any]] = cli.json("workers", "--all")
    assert [(w["worker_id"], w["status"], w["running"]) for w in listed] == [
        ("w-cli", "live", 0),
        ("w-gone", "lost", 0),
    ]
