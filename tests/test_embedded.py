"""The embedded launcher: shared, fast when running, recovers from crashes, one per state dir."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from portraitkit.database.connection import connect
from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.server_account import SYSTEM_USER


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A server of this module's own: these tests stop and kill it."""
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg-launcher"))
    embedded.ensure_running()
    yield embedded
    embedded.stop()


def select_one(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return int(row[0])


def wait_until_gone(pid: int) -> None:
    """Gone or a zombie: a killed postmaster is only reaped if its new parent reaps."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not die")


def test_second_ensure_running_is_fast_and_returns_the_same_url(
    server: EmbeddedPostgres,
) -> None:
    first = server.ensure_running()
    started = time.perf_counter()
    second = EmbeddedPostgres(server.state_dir).ensure_running()
    elapsed = time.perf_counter() - started

    assert second == first
    assert elapsed < 0.05
    assert select_one(second) == 1


def test_listens_on_loopback_tcp_with_a_password(server: EmbeddedPostgres) -> None:
    url = server.ensure_running()
    with connect(url) as conn:
        row = conn.execute(
            "select inet_server_addr()::text, current_setting('max_connections'), "
            "current_setting('fsync'), "
            "(select array_agg(distinct auth_method) from pg_hba_file_rules)"
        ).fetchone()

    assert row == ("127.0.0.1/32", "200", "on", ["scram-sha-256"])
    assert url.startswith("postgresql://postgres:")
    bad = url.replace(server.password_file.read_text().strip(), "wrong")
    with pytest.raises(Exception, match="password authentication failed"):
        select_one(bad)


def test_state_file_describes_the_running_server(server: EmbeddedPostgres) -> None:
    server.ensure_running()
    status = server.status()
    state = json.loads(server.state_file.read_text())

    assert state == {
        "running": True,
        "pid": status.pid,
        "host": "127.0.0.1",
        "port": status.port,
        "pgdata": str(server.pgdata),
        "password_file": str(server.password_file),
        "log_file": str(server.log_file),
        "user": "postgres",
    }


def test_password_file_is_private(server: EmbeddedPostgres) -> None:
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to a system user")
def test_under_root_the_server_runs_as_the_system_user(server: EmbeddedPostgres) -> None:
    pid = server.status().pid
    assert pid is not None

    assert psutil.Process(pid).username() == SYSTEM_USER
    assert server.pgdata.owner() == SYSTEM_USER


def test_recovers_after_the_postmaster_is_killed(server: EmbeddedPostgres) -> None:
    url = server.ensure_running()
    old = server.status()
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    wait_until_gone(old.pid)

    assert server.status().running is False
    assert EmbeddedPostgres(server.state_dir).ensure_running() == url  # same port, same password
    assert server.status().pid != old.pid
    assert select_one(url) == 1


def test_stop_stops_and_a_second_stop_finds_nothing(server: EmbeddedPostgres) -> None:
    server.ensure_running()

    assert server.stop() is True
    assert server.stop() is False
    assert server.status().running is False
    assert server.status().initialized is True
    assert json.loads(server.state_file.read_text())["running"] is False


def test_restart_keeps_the_port(server: EmbeddedPostgres) -> None:
    url = server.ensure_running()
    server.stop()

    assert server.ensure_running() == url


CHILD = """
import sys
from portraitkit.database.embedded import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1])
url = server.ensure_running()
print(url, server.status().pid)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_processes_share_one_server(server: EmbeddedPostgres, attempt: int) -> None:
    server.stop()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(server.state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [child.communicate(timeout=60) for child in children]

    assert [child.returncode for child in children] == [0, 0, 0, 0], outputs
    assert len({out for out, _err in outputs}) == 1
    pid = server.status().pid
    assert outputs[0][0].split()[1] == str(pid)


def test_a_long_state_dir_gets_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    embedded = EmbeddedPostgres(deep)
    try:
        url = embedded.ensure_running()
        assert select_one(url) == 1
    finally:
        embedded.stop()


def test_stop_on_an_unused_state_dir_creates_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "never-used"

    assert EmbeddedPostgres(state_dir).stop() is False
    assert not state_dir.exists()
