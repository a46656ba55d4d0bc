"""The worker: claim pending generations, render them, store the images, record outcomes.

Business rules (leases, attempts, backoff, refunds, batch status) live in the SQL
contract; this loop only drives it: claim in small batches with a lease, run items with
bounded concurrency, renew leases by heartbeat, and report results in batches. Any number
of workers may share one database: the lease decides whose result counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from portraitkit.errors import DatabaseUnavailable, PermanentGenerationError, PortraitkitError
from portraitkit.feeds import Feed, PollingFeed
from portraitkit.generators.base import GenerationRequest, Generator
from portraitkit.models import ClaimedGeneration
from portraitkit.storage import Storage, owned_path_problem, result_object_path
from portraitkit.transports.base import Transport

log = logging.getLogger("portraitkit.worker")

# On shutdown, how long giving items back and recording the last results may wait for the
# database before they are given up (leases expire, and the items are redone elsewhere).
LAST_FLUSH_SECONDS = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    lease_seconds: int = 120
    heartbeat_seconds: float = 30.0
    poll_seconds: float = 5.0
    max_running_per_user: int | None = 4
    shutdown_grace_seconds: float = 30.0
    recover_every_seconds: float = 30.0
    flush_seconds: float = 0.02
    generator: str | None = None  # overrides styles.generator for every item
    worker_id: str = field(default_factory=default_worker_id)


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    discarded: int = 0
    released: int = 0


class _SourceCache:
    """The batch's photo is the same for all its styles: fetch it once, keep a few."""

    def __init__(self, storage: Storage, size: int = 16) -> None:
        self._storage = storage
        self._size = size
        self._items: OrderedDict[str, asyncio.Task[bytes]] = OrderedDict()

    async def get(self, path: str) -> bytes:
        task = self._items.get(path)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._storage.get(path))
            self._items[path] = task
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        self._items.move_to_end(path)
        if task.done():  # the common case: the batch's other styles fetched it already
            return task.result()
        return await asyncio.shield(task)


class _Completer:
    """Collects finished items and records them in one call per flush (the SQL side
    handles a whole list in one statement), so a busy worker commits once per many items.
    A flush waits ``flush_seconds`` for more to arrive unless ``flush_items`` already have."""

    def __init__(
        self, queue: Transport, worker_id: str, flush_seconds: float, flush_items: int
    ) -> None:
        self._queue = queue
        self._worker_id = worker_id
        self._flush_seconds = flush_seconds
        self._flush_items = flush_items
        self._pending: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completer")

    async def complete(self, generation_id: str, path: str) -> bool:
        """True when the result was accepted (the item was still ours to finish)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((generation_id, path, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self._flush_items:
                await asyncio.sleep(self._flush_seconds)  # let a few more arrive
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await self._flush(batch)
                except asyncio.CancelledError:
                    self._pending[:0] = batch  # aclose() records them, or gives them up
                    raise

    async def _flush(self, batch: list[tuple[str, str, asyncio.Future[bool]]]) -> None:
        delay = 0.2
        while True:
            try:
                accepted = await self._queue.rpc(
                    "complete_generations",
                    {
                        "worker_id": self._worker_id,
                        "generation_ids": [b[0] for b in batch],
                        "image_paths": [b[1] for b in batch],
                    },
                )
                break
            except DatabaseUnavailable as exc:
                # Keep the results: the lease may still hold when the database is back.
                log.warning(
                    "complete failed, retrying",
                    extra={"event": "db_unavailable", "error": str(exc), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        done = {str(a) for a in accepted or []}
        for gid, _path, future in batch:
            if not future.done():
                future.set_result(gid in done)

    async def aclose(self, give_up_after: float) -> None:
        """Record what is left, trying for at most ``give_up_after`` seconds: a worker whose
        database is gone must still stop, and results it could not record only cost a redo
        (their leases expire and the items are claimed again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        batch, self._pending = self._pending, []
        if batch:
            try:
                async with asyncio.timeout(give_up_after):
                    await self._flush(batch)
            except TimeoutError:
                log.warning(
                    "results not recorded",
                    extra={"event": "results_dropped", "items": len(batch)},
                )


class Worker:
    """One worker process's loop. ``run()`` returns when stopped (or, with ``once``, when
    the queue is empty)."""

    def __init__(
        self,
        queue: Transport,
        storage: Storage,
        generators: Callable[[str], Generator],
        *,
        feed: Feed | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.queue = queue
        self.storage = storage
        self.options = options or WorkerOptions()
        self.feed = feed or PollingFeed()
        self.stats = WorkerStats()
        self._generators = generators
        self._generator_cache: dict[str, Generator] = {}
        self._sources = _SourceCache(storage)
        self._claim_threshold = max(1, self.options.concurrency // 4)
        self._completer = _Completer(
            queue, self.options.worker_id, self.options.flush_seconds, self._claim_threshold
        )
        # Every claimed item's task, until it ends (heartbeats and shutdown cover them all);
        # of those, the ones still rendering or storing hold a slot. An item waiting for its
        # result to be recorded gives its slot back, so the next claim runs while the
        # completion is in flight and the database and this process work side by side.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._rendering: set[asyncio.Task[None]] = set()
        self._lost: set[str] = set()
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()

    def stop(self) -> None:
        """Stop claiming; in-flight items get the grace period to finish."""
        self._stopping.set()

    async def run(self, *, once: bool = False) -> WorkerStats:
        opts = self.options
        self._completer.start()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._recover_loop(), name="recover"),
        ]
        log.info(
            "worker started",
            extra={"event": "start", "worker": opts.worker_id, "concurrency": opts.concurrency},
        )
        try:
            await self._claim_loop(once)
        finally:
            await self._shutdown()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._completer.aclose(give_up_after=LAST_FLUSH_SECONDS)
            for generator in self._generator_cache.values():
                close = getattr(generator, "aclose", None)
                if close is not None:
                    await close()
        log.info(
            "worker stopped", extra={"event": "stop", "worker": opts.worker_id, **vars(self.stats)}
        )
        return self.stats

    async def _claim_loop(self, once: bool) -> None:
        opts = self.options
        backoff = 0.2
        empty_looks = 0
        while not self._stopping.is_set():
            free = self._free_slots()
            claimed: list[Any] = []
            if free > 0:
                try:
                    claimed = await self.queue.rpc(
                        "claim_generations",
                        {
                            "worker_id": opts.worker_id,
                            "max_items": free,
                            "lease_seconds": opts.lease_seconds,
                            "max_running_per_user": opts.max_running_per_user,
                        },
                    )
                    backoff = 0.2
                except DatabaseUnavailable as exc:
                    log.warning(
                        "claim failed",
                        extra={"event": "db_unavailable", "error": str(exc), "retry_in": backoff},
                    )
                    await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                    backoff = min(backoff * 2, 10.0)
                    continue
                for row in claimed:
                    item = ClaimedGeneration.model_validate(row)
                    key = str(item.id)
                    self.stats.claimed += 1
                    task = asyncio.create_task(self._process(item), name=key)
                    self._running[key] = task
                    self._rendering.add(task)
            if once and not claimed and not self._running:
                # An empty claim can be a pending row another transaction holds for a moment
                # (SKIP LOCKED skips it): only a second empty look ends a --once run.
                if empty_looks:
                    return
                empty_looks += 1
                await asyncio.sleep(0.05)
                continue
            empty_looks = 0
            if self._free_slots() < self._claim_threshold:
                await self._wait_for_slot()
            elif not claimed or len(claimed) < free:
                await self._wait_for_work()
            # else: every slot asked for was filled; there may be more right away

    def _free_slots(self) -> int:
        return self.options.concurrency - len(self._rendering)

    def _give_back_slot(self) -> None:
        task = asyncio.current_task()
        if task in self._rendering:
            self._rendering.discard(task)
            self._slot_freed.set()

    async def _wait_for_slot(self) -> None:
        """Until enough slots are free to claim a worthwhile batch (a quarter of them):
        claiming one item per finished item would cost a transaction per item."""
        while self._free_slots() < self._claim_threshold:
            self._slot_freed.clear()
            await self._until(self._slot_freed.wait())
            if self._stopping.is_set():
                return

    async def _wait_for_work(self) -> None:
        """Until the feed rings, a slot frees, or the poll interval (with jitter) ends."""
        self._slot_freed.clear()
        timeout = self.options.poll_seconds * (0.8 + random.random() * 0.4)
        await self._until(self._slot_freed.wait(), self.feed.wait(timeout))

    async def _until(self, *waits: Any) -> None:
        """Whichever comes first of ``waits`` and a stop request."""
        tasks = {asyncio.ensure_future(w) for w in (*waits, self._stopping.wait())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    def _generator(self, name: str) -> Generator:
        if name not in self._generator_cache:
            self._generator_cache[name] = self._generators(name)
        return self._generator_cache[name]

    async def _process(self, item: ClaimedGeneration) -> None:
        key = str(item.id)
        started = time.perf_counter()
        outcome = "completed"
        try:
            if problem := owned_path_problem(item.source_image_path, item.user_id):
                # Defence in depth: the contract refuses such a source, but a row written
                # some other way must not get another user's photo stylised.
                raise PermanentGenerationError(
                    f"The source photo is not in its owner's folder ({problem})."
                )
            source = await self._sources.get(item.source_image_path)
            generator = self._generator(self.options.generator or item.generator)
            image = await generator.generate(
                GenerationRequest(
                    source=source,
                    style_key=item.style_key,
                    prompt=item.prompt,
                    custom_prompt=item.custom_prompt,
                    model=item.model,
                )
            )
            if key in self._lost:
                outcome = "discarded"
                return
            path = result_object_path(item.user_id, item.batch_id, item.id, image.extension)
            await self.storage.put(path, image.data, image.content_type)
            self._give_back_slot()
            if await self._completer.complete(key, path):
                self.stats.completed += 1
            else:  # cancelled, deleted or re-leased meanwhile: the result must not stay
                outcome = "discarded"
                self.stats.discarded += 1
                await self.storage.remove([path])
        except asyncio.CancelledError:
            outcome = "released"
            raise
        except Exception as exc:
            outcome = await self._fail(item, exc)
        finally:
            # The item may already be claimed again (a retry, woken by the feed before this
            # task ended): only forget the entry if it is still this task's.
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]
                self._lost.discard(key)
            self._give_back_slot()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "item %s",
                    outcome,
                    extra={
                        "event": "item",
                        "item": key,
                        "batch": str(item.batch_id),
                        "style": item.style_key,
                        "attempt": item.attempts,
                        "duration_ms": round((time.perf_counter() - started) * 1000),
                        "outcome": outcome,
                    },
                )

    async def _fail(self, item: ClaimedGeneration, exc: Exception) -> str:
        retryable = not isinstance(exc, PermanentGenerationError)
        message = str(exc) if isinstance(exc, PortraitkitError) else f"{type(exc).__name__}: {exc}"
        delay = 0.2
        while True:
            try:
                status = await self.queue.rpc(
                    "fail_generation",
                    {
                        "worker_id": self.options.worker_id,
                        "generation_id": str(item.id),
                        "error": message[:2000],
                        "retryable": retryable,
                    },
                )
                break
            except DatabaseUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if status == "pending":
            self.stats.retried += 1
            return "retry"
        if status == "failed":
            self.stats.failed += 1
            return "failed"
        self.stats.discarded += 1
        return "discarded"

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            ids = list(self._running)
            if not ids:
                continue
            try:
                held = await self.queue.rpc(
                    "heartbeat_generations",
                    {
                        "worker_id": self.options.worker_id,
                        "generation_ids": ids,
                        "lease_seconds": self.options.lease_seconds,
                    },
                )
            except DatabaseUnavailable:
                continue
            self._lost.update(set(ids) - {str(h) for h in held or []})

    async def _recover_loop(self) -> None:
        """Any worker may put back items whose worker died; the SQL makes it safe to race."""
        while True:
            try:
                moved = await self.queue.rpc("recover_expired_leases")
                if moved and (moved.get("requeued") or moved.get("failed")):
                    log.info("recovered expired leases", extra={"event": "recovered", **moved})
            except DatabaseUnavailable:
                pass
            await asyncio.sleep(self.options.recover_every_seconds * (0.8 + random.random() * 0.4))

    async def _shutdown(self) -> None:
        """Let in-flight items finish within the grace period, then give the rest back."""
        if self._running:
            _done, late = await asyncio.wait(
                set(self._running.values()), timeout=self.options.shutdown_grace_seconds
            )
            if late:
                ids = [t.get_name() for t in late]
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                # With the database gone their leases expire instead: never wait long here.
                with contextlib.suppress(DatabaseUnavailable, TimeoutError):
                    async with asyncio.timeout(LAST_FLUSH_SECONDS):
                        released = await self.queue.rpc(
                            "release_generations",
                            {"worker_id": self.options.worker_id, "generation_ids": ids},
                        )
                    self.stats.released += int(released or 0)
