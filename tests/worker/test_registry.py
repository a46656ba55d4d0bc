"""Live workers, recorded by their heartbeat: who works, who stopped, who was lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from portraitkit import watch
from portraitkit.admin import open_service_client
from portraitkit.errors import InvalidInput, NotAllowed
from portraitkit.feeds import PollingFeed
from portraitkit.generators import get_generator
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import Batch, BatchStatus, WorkerState
from portraitkit.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_workers(admin: psycopg.Connection[Any]) -> None:
    admin.execute("delete from private.workers")


async def _until(condition: Callable[[], Any], seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_a_running_worker_is_live_then_stopped(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], settings: Settings
) -> None:
    user = make_client()
    assert await user.workers_online() == 0
    async with (
        await open_service_client(settings) as service,
        worker_factory(get_generator, concurrency=3, worker_id="w-registry") as worker,
    ):
        task = asyncio.create_task(worker.run())
        try:
            await _until(lambda: user.workers_online())
            [record] = await service.list_workers()
            assert (record.worker_id, record.status, record.concurrency) == (
                "w-registry",
                WorkerState.LIVE,
                3,
            )
            assert record.pid is not None and record.hostname
            # Its counters ride on the heartbeat.
            await user.create_batch(["pencil_sketch", "noir"], sample_portrait_png())

            async def counted() -> bool:
                [record] = await service.list_workers()
                return record.stats.get("completed") == 2

            await _until(counted)
        finally:
            worker.stop()
            await task
        assert await user.workers_online() == 0
        assert await service.list_workers() == []
        [record] = await service.list_workers(include_stopped=True)
        assert record.status is WorkerState.STOPPED and record.stopped_at is not None
        assert record.stats["completed"] == 2 and record.running == 0


async def test_a_worker_that_stops_checking_in_is_lost(
    make_client: Callable[..., Any], settings: Settings, admin: psycopg.Connection[Any]
) -> None:
    """A killed worker says no goodbye: its record runs out and it shows as lost."""
    user = make_client()
    async with await open_service_client(settings) as service:
        await service.transport.rpc(
            "worker_checkin", {"worker_id": "w-killed", "info": {"pid": 4242}, "ttl_seconds": 60}
        )
        assert await user.workers_online() == 1
        admin.execute(
            "update private.workers set expires_at = now() - interval '1 second'"
            " where worker_id = 'w-killed'"
        )
        assert await user.workers_online() == 0
        assert await service.list_workers() == []
        [record] = await service.list_workers(include_stopped=True)
        assert (record.status, record.pid, record.stopped_at) == (WorkerState.LOST, 4242, None)


async def test_only_the_service_role_sees_or_writes_workers(
    make_client: Callable[..., Any],
) -> None:
    user = make_client()
    with pytest.raises(NotAllowed):
        await user.list_workers()
    with pytest.raises(NotAllowed):
        await user.transport.rpc("worker_checkin", {"worker_id": "forged"})
    assert await user.workers_online() == 0


@pytest.mark.parametrize(
    "args",
    [
        {"worker_id": " "},
        {"worker_id": "x" * 201},
        {"worker_id": "w", "info": "[1]"},
        {"worker_id": "w", "ttl_seconds": 0},
        {"worker_id": "w", "ttl_seconds": 86401},
    ],
)
async def test_bad_check_ins_are_refused_and_change_nothing(
    settings: Settings, admin: psycopg.Connection[Any], args: dict[str, Any]
) -> None:
    async with await open_service_client(settings) as service:
        with pytest.raises(InvalidInput):
            await service.transport.rpc("worker_checkin", args)
    assert admin.execute("select count(*) as n from private.workers").fetchone() == {"n": 0}


async def test_records_of_long_gone_workers_are_dropped(
    settings: Settings, admin: psycopg.Connection[Any]
) -> None:
    admin.execute(
        "insert into private.workers (worker_id, expires_at)"
        " values ('w-old', now() - interval '2 days'), ('w-recent', now() - interval '1 hour')"
    )
    async with await open_service_client(settings) as service:
        await service.transport.rpc("worker_checkin", {"worker_id": "w-new", "info": {}})
        ids = {w.worker_id for w in await service.list_workers(include_stopped=True)}
    assert ids == {"w-new", "w-recent"}


async def test_once_stops_as_soon_as_its_last_item_is_recorded(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    """Not after another poll interval: with an hour's poll, --once must still end."""
    user = make_client()
    batch_id = await user.create_batch(["pencil_sketch", "noir", "pop_art"], sample_portrait_png())
    async with worker_factory(get_generator, poll_seconds=3600, concurrency=4) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=60)
    assert stats.completed == 3
    assert (await user.get_batch(batch_id)).completed_count == 3


async def test_a_watch_says_when_no_worker_is_running_and_when_one_is(
    make_client: Callable[..., Any],
    worker_factory: Callable[..., Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "WORKERS_CHECK_SECONDS", 0.1)
    user = make_client()
    batch_id = await user.create_batch(["noir"], sample_portrait_png())
    notes: list[str] = []

    async def follow() -> list[Batch]:
        feed = PollingFeed()
        return [
            b
            async for b in watch.watch_batch(
                user, batch_id, feed, backstop=0.05, on_note=notes.append
            )
        ]

    async def noted(count: int) -> bool:
        return len(notes) >= count

    watching = asyncio.create_task(follow())
    await _until(lambda: noted(1))
    assert notes == [watch.NO_WORKER]
    async with await open_service_client(settings) as service:  # a worker comes up
        await service.transport.rpc("worker_checkin", {"worker_id": "w-arriving"})
    await _until(lambda: noted(2))
    assert notes == [watch.NO_WORKER, watch.WORKER_BACK]
    async with worker_factory(get_generator) as worker:
        running = asyncio.create_task(worker.run())
        snapshots = await asyncio.wait_for(watching, 60)
        worker.stop()
        await running
    assert snapshots[-1].status is BatchStatus.COMPLETED
    assert notes == [watch.NO_WORKER, watch.WORKER_BACK]
