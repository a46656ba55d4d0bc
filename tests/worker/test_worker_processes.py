"""Workers as real processes: several on one queue, one killed mid-item, a database restart.

Each worker is `python -m tests.worker.process` running portraitkit's real worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from portraitkit.auth import create_local_user
from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import Migrator

from .conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    db_url: str, state_dir: Path, worker_id: str, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker.process",
            "--database-url",
            db_url,
            "--secret",
            SECRET,
            "--state-dir",
            str(state_dir),
            "--worker-id",
            worker_id,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def stats_of(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def enqueue(db_url: str, state_dir: Path, batches: int, styles: list[str]) -> list[uuid.UUID]:
    """Create batches through the contract, as users would (one user per 10 batches)."""
    ids = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for b in range(batches):
            if b % 10 == 0:
                user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", 10_000)
                claims = json.dumps({"sub": str(user.id), "role": "authenticated"})
                source = f"{user.id}/sources/photo.png"
                path = state_dir / "storage" / "portraits" / source
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\x89PNG not really")  # the noop generator never decodes it
            with conn.transaction():
                conn.execute(
                    "select set_config('role', 'authenticated', true),"
                    " set_config('request.jwt.claims', %s, true)",
                    (claims,),
                )
                ids.append(
                    conn.execute(
                        "select public.create_generation_batch(%s, %s)", (styles, source)
                    ).fetchone()[0]
                )
    return ids


def counts(db_url: str, batch_ids: list[uuid.UUID]) -> dict[str, int]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "select status::text, count(*)::int as n from public.generations"
            " where batch_id = any(%s) group by status",
            (batch_ids,),
        ).fetchall()
    return {r["status"]: r["n"] for r in rows}


def ledger_ok(db_url: str) -> bool:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select count(*) = 0 from (select p.id from public.profiles p left join public.credit_ledger l"
            " on l.user_id = p.id group by p.id having p.starting_credits + coalesce(sum(l.delta), 0)"
            " <> p.total_credits) bad"
        ).fetchone()[0]


@pytest.mark.parametrize("workers", [2, 4])
def test_many_workers_complete_every_item_exactly_once(
    db_url: str, state_dir: Path, workers: int
) -> None:
    batch_ids = enqueue(
        db_url,
        state_dir,
        30,
        [
            "poster",
            "noir",
            "pixel_art",
            "charcoal",
            "cartoon",
            "pop_art",
            "cyanotype",
            "ink_wash",
            "watercolor",
            "neon_glow",
        ],
    )
    procs = [
        start_worker(db_url, state_dir, f"multi-{workers}-{i}", "--once", "--concurrency", "8")
        for i in range(workers)
    ]
    stats = [stats_of(p) for p in procs]
    assert sum(s["completed"] for s in stats) == 300
    assert all(s["discarded"] == 0 and s["failed"] == 0 for s in stats)
    assert sum(1 for s in stats if s["completed"] > 0) >= 2  # the work was really shared
    assert counts(db_url, batch_ids) == {"completed": 300}
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "select bool_and(status = 'completed') and bool_and(completed_count = 10)"
            " from public.generation_batches where id = any(%s)",
            (batch_ids,),
        ).fetchone()[0]
        assert (
            conn.execute(
                "select max(attempts) from public.generations where batch_id = any(%s)",
                (batch_ids,),
            ).fetchone()[0]
            == 1
        )


def test_killed_worker_item_is_finished_by_another_exactly_once(
    db_url: str, state_dir: Path
) -> None:
    [batch_id] = enqueue(db_url, state_dir, 1, ["poster"])
    doomed = start_worker(db_url, state_dir, "doomed", "--generator", "slow:30", "--lease", "2")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        deadline = time.time() + 20
        while (
            conn.execute(
                "select status::text as s from public.generations where batch_id = %s", (batch_id,)
            ).fetchone()["s"]
            != "processing"
        ):
            assert time.time() < deadline, "the first worker never claimed the item"
            time.sleep(0.05)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        rescuer = start_worker(db_url, state_dir, "rescuer", "--lease", "5")
        try:
            deadline = time.time() + 30
            while (
                item := conn.execute(
                    "select status::text as s, attempts, lease_owner, generated_image_url"
                    " from public.generations where batch_id = %s",
                    (batch_id,),
                ).fetchone()
            )["s"] != "completed":
                assert time.time() < deadline, f"not recovered: {item}"
                time.sleep(0.1)
        finally:
            rescuer.send_signal(signal.SIGTERM)
            stats = stats_of(rescuer)
    assert item["attempts"] == 2 and stats["completed"] == 1
    assert counts(db_url, [batch_id]) == {"completed": 1}
    assert ledger_ok(db_url)


def test_sigterm_finishes_in_flight_items_and_exits_zero(db_url: str, state_dir: Path) -> None:
    batch_ids = enqueue(db_url, state_dir, 1, ["poster", "noir"])
    proc = start_worker(
        db_url, state_dir, "graceful", "--generator", "slow:1", "--concurrency", "2"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        deadline = time.time() + 20
        while (
            conn.execute(
                "select count(*) from public.generations where batch_id = any(%s)"
                " and status = 'processing'",
                (batch_ids,),
            ).fetchone()[0]
            < 2
        ):
            assert time.time() < deadline
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stats = stats_of(proc)
    assert stats["completed"] == 2 and stats["released"] == 0
    assert counts(db_url, batch_ids) == {"completed": 2}


def test_worker_survives_a_database_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.ensure_running()
    Migrator(url, bootstrap=True).migrate()
    state_dir = tmp_path / "state"
    try:
        first = enqueue(url, state_dir, 2, ["poster", "noir", "charcoal"])
        proc = start_worker(
            url,
            state_dir,
            "survivor",
            "--generator",
            "slow:0.3",
            "--concurrency",
            "2",
            "--poll",
            "0.3",
        )
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.time() + 20
            while (
                conn.execute(
                    "select count(*) from public.generations where status = 'completed'"
                ).fetchone()[0]
                < 1
            ):
                assert time.time() < deadline
                time.sleep(0.05)
        server.stop()
        time.sleep(1.0)
        assert proc.poll() is None, "the worker died with the database"
        url = server.ensure_running()
        second = enqueue(url, state_dir, 1, ["pixel_art", "cartoon"])
        deadline = time.time() + 60
        while counts(url, first + second).get("completed", 0) < 8:
            assert time.time() < deadline, counts(url, first + second)
            assert proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stats = stats_of(proc)
        assert stats["completed"] == 8
        assert counts(url, first + second) == {"completed": 8}
        assert ledger_ok(url)
    finally:
        server.stop()


def test_sigterm_with_the_database_gone_still_exits(tmp_path: Path) -> None:
    """Results that cannot be recorded are given up a few seconds after the grace period
    (their leases expire and another worker redoes them): the process never hangs, even
    with results waiting behind a recording that is already retrying."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.ensure_running()
    Migrator(url, bootstrap=True).migrate()
    state_dir = tmp_path / "state"

    def processing() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            return int(
                conn.execute(
                    "select count(*) from public.generations where status = 'processing'"
                ).fetchone()[0]
            )

    try:
        enqueue(url, state_dir, 1, ["poster"])
        proc = start_worker(
            url, state_dir, "stranded", "--generator", "slow:1.0", "--concurrency", "2"
        )
        deadline = time.time() + 20
        while processing() < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.4)
        enqueue(url, state_dir, 1, ["noir"])  # finishes 0.4 s after the first
        while processing() < 2:
            assert time.time() < deadline
            time.sleep(0.02)
        server.stop()  # both results now fail to be recorded, one behind the other
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the worker hung after SIGTERM: {proc.communicate()[1][-2000:]}")
        # At most: a claim waiting out the pool's 10 s, the 5 s grace, then 5 s each to give
        # items back and to record the last results.
        assert time.monotonic() - started < 28
        assert stats_of(proc)["completed"] == 0
    finally:
        server.stop()
