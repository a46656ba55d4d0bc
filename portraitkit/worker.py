"""The worker: claim pending generations, render them, store the images, record outcomes.

Business rules (leases, attempts, backoff, refunds, batch status, fairness) live in the SQL
contract; this loop only drives it through :class:`~portraitkit.queue.WorkQueue`: claim
with a lease, run items with bounded concurrency, renew leases by heartbeat, record
results in batches. Any number of workers may share one database: the lease decides
whose result counts.

Nothing is stranded: every queue call is retried through transient errors; a result
waiting on a failed flush stays queued until it is recorded or the worker stops; an item
whose lease was lost is abandoned at once. The side tasks (completer, heartbeat,
recovery) are watched as procrastinate's worker watches its own: if one dies of an error
that is not transient, the worker stops loudly, gives its items back and
:meth:`Worker.run` raises :class:`WorkerFailed`, instead of running half alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from portraitkit import __version__
from portraitkit.errors import PermanentGenerationError, PortraitkitError, WorkerFailed
from portraitkit.feeds import Feed, PollingFeed
from portraitkit.generators.base import GenerationRequest, Generator
from portraitkit.models import ClaimedGeneration, GenerationStatus
from portraitkit.queue import WorkQueue
from portraitkit.storage import Storage, owned_path_problem, result_object_path
from portraitkit.transports.base import Transport

log = logging.getLogger("portraitkit.worker")
T = TypeVar("T")

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


class _Lease(NamedTuple):
    """A claimed item's task and the attempt it runs (what the lease is, to the SQL)."""

    task: asyncio.Task[None]
    attempt: int


class _SourceCache:
    """The batch's photo is the same for all its styles: fetch it once, keep a few (at
    most ``size`` photos and ``max_bytes`` of them: sources may be 20 MiB each)."""

    def __init__(self, storage: Storage, size: int = 16, max_bytes: int = 64 << 20) -> None:
        self._storage = storage
        self._size = size
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, asyncio.Task[bytes]] = OrderedDict()

    def _held_bytes(self) -> int:
        return sum(
            len(t.result())
            for t in self._items.values()
            if t.done() and not t.cancelled() and t.exception() is None
        )

    async def get(self, path: str) -> bytes:
        task = self._items.get(path)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._storage.get(path))
            self._items[path] = task
            while len(self._items) > self._size or (
                len(self._items) > 1 and self._held_bytes() > self._max_bytes
            ):
                self._items.popitem(last=False)
        self._items.move_to_end(path)
        if task.done():  # the common case: the batch's other styles fetched it already
            return task.result()
        return await asyncio.shield(task)


class _Completer:
    """Collects finished items and records them in one call per flush (the SQL side takes a
    whole list in one statement), so a busy worker commits once per many items. A flush
    waits ``flush_seconds`` for more to arrive unless ``flush_items`` already have.

    A flush that fails transiently is retried (by the queue) with everything that arrived
    meanwhile left waiting; one refused outright hands the error to each of its items."""

    def __init__(self, queue: WorkQueue, flush_seconds: float, flush_items: int) -> None:
        self._queue = queue
        self._flush_seconds = flush_seconds
        self._flush_items = flush_items
        self._pending: list[tuple[UUID, str, int, asyncio.Future[bool]]] = []
        self._wakeup = asyncio.Event()

    async def complete(self, generation_id: UUID, path: str, attempt: int) -> bool:
        """True when the result was accepted (the item was still ours to finish)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((generation_id, path, attempt, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self._flush_items:
                await asyncio.sleep(self._flush_seconds)  # let a few more arrive
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            try:
                await self._flush(batch)
            except asyncio.CancelledError:
                self._pending[:0] = [b for b in batch if not b[3].done()]
                raise

    async def _flush(self, batch: list[tuple[UUID, str, int, asyncio.Future[bool]]]) -> None:
        if not batch:
            return
        try:
            accepted = await self._queue.complete([(b[0], b[1], b[2]) for b in batch])
        except PortraitkitError as exc:  # not transient (the queue retried those)
            for *_result, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for gid, _path, _attempt, future in batch:
            if not future.done():
                future.set_result(gid in accepted)

    async def aclose(self, give_up_after: float) -> None:
        """Record what is left, trying for at most ``give_up_after`` seconds: a worker whose
        database is gone must still stop, and results it could not record only cost a redo
        (their leases expire and the items are claimed again)."""
        batch, self._pending = self._pending, []
        try:
            async with asyncio.timeout(give_up_after):
                await self._flush(batch)
        except TimeoutError:
            log.warning(
                "results not recorded", extra={"event": "results_dropped", "items": len(batch)}
            )
        for *_result, future in batch:
            if not future.done():
                future.cancel()


class Worker:
    """One worker process's loop. ``run()`` returns when stopped (or, with ``once``, when
    the queue is empty), and raises :class:`WorkerFailed` when a side task died."""

    def __init__(
        self,
        transport: Transport,
        storage: Storage,
        generators: Callable[[str], Generator],
        *,
        feed: Feed | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.options = options or WorkerOptions()
        self.queue = WorkQueue(transport, self.options.worker_id, self.options.lease_seconds)
        self.storage = storage
        self.feed = feed or PollingFeed()
        self.stats = WorkerStats()
        self._generators = generators
        self._generator_cache: dict[str, Generator] = {}
        self._sources = _SourceCache(storage)
        self._claim_threshold = max(1, self.options.concurrency // 4)
        self._completer = _Completer(self.queue, self.options.flush_seconds, self._claim_threshold)
        # Every claimed item's task, until it ends (heartbeats and shutdown cover them all);
        # of those, the ones still rendering or storing hold a slot. An item waiting for its
        # result to be recorded gives its slot back, so the next claim runs while the
        # completion is in flight and the database and this process work side by side.
        self._running: dict[UUID, _Lease] = {}
        self._rendering: set[asyncio.Task[None]] = set()
        self._lost: set[asyncio.Task[None]] = set()  # abandoned: their lease is gone
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._drained = asyncio.Event()  # set when the last running item has ended

    def stop(self) -> None:
        """Stop claiming; in-flight items get the grace period to finish."""
        self._stopping.set()

    async def run(self, *, once: bool = False) -> WorkerStats:
        opts = self.options
        if opts.generator is not None:
            # A setting it lacks (an API token) must stop the worker now, with a clear
            # error, not fail every item it claims three times over.
            self._generator(opts.generator)
        side_tasks = {
            asyncio.create_task(self._completer.run(), name="completer"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._recover_loop(), name="recover"),
        }
        main = asyncio.create_task(self._claim_loop(once), name="claim")
        log.info(
            "worker started",
            extra={"event": "start", "worker": opts.worker_id, "concurrency": opts.concurrency},
        )
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait({main, *side_tasks}, return_when=asyncio.FIRST_COMPLETED)
            if main in done:
                main.result()  # the claim loop's own error, if it had one
            else:
                failure = self._side_task_failure(done)
                self.stop()
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await main
        finally:
            main.cancel()
            # After a failure nothing is waited for: the side task that died may be the
            # one the running items need (the completer).
            await self._shutdown(side_tasks, grace=0 if failure else opts.shutdown_grace_seconds)
        if failure is not None:
            raise WorkerFailed(f"The worker stopped: {failure}") from failure
        log.info(
            "worker stopped", extra={"event": "stop", "worker": opts.worker_id, **vars(self.stats)}
        )
        return self.stats

    def _side_task_failure(self, done: set[asyncio.Task[Any]]) -> BaseException:
        task = next(iter(done))
        error = task.exception() if not task.cancelled() else None
        failure = error or RuntimeError(f"the {task.get_name()} task ended unexpectedly")
        log.error(
            "side task failed, stopping",
            extra={"event": "side_task_failed", "task": task.get_name(), "error": str(failure)},
        )
        return failure

    async def _claim_loop(self, once: bool) -> None:
        empty_looks = 0
        while not self._stopping.is_set():
            free = self._free_slots()
            claimed: list[ClaimedGeneration] = []
            if free > 0:
                got = await self._unless_stopped(self.queue.claim(free))
                if got is None:
                    return
                claimed = got
                for item in claimed:
                    self.stats.claimed += 1
                    stale = self._running.get(item.id)
                    if stale is not None and not stale.task.done():
                        # Our own earlier attempt, whose lease ran out meanwhile (recovered
                        # and claimed again): that attempt is no longer ours to finish.
                        self._abandon(stale.task)
                    task = asyncio.create_task(self._process(item), name=str(item.id))
                    self._running[item.id] = _Lease(task, item.attempts)
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
                await self._wait_for_work(once)
            # else: every slot asked for was filled; there may be more right away

    def _abandon(self, task: asyncio.Task[None]) -> None:
        log.warning("lease lost", extra={"event": "lease_lost", "item": task.get_name()})
        self._lost.add(task)
        task.cancel()

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

    async def _wait_for_work(self, once: bool) -> None:
        """Until the feed rings, a slot frees, or the poll interval (with jitter) ends; for
        a ``--once`` run also until its last item ends, so it stops as soon as it is done."""
        self._slot_freed.clear()
        self._drained.clear()
        timeout = self.options.poll_seconds * (0.8 + random.random() * 0.4)
        waits = [self._slot_freed.wait(), self.feed.wait(timeout)]
        if once:
            if not self._running:
                return
            waits.append(self._drained.wait())
        await self._until(*waits)

    async def _until(self, *waits: Awaitable[Any]) -> None:
        """Whichever comes first of ``waits`` and a stop request."""
        tasks = {asyncio.ensure_future(w) for w in (*waits, self._stopping.wait())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                # Only the doorbell can fail here (e.g. Realtime refused its token): the
                # worker still finds its work by polling, so it is said, not fatal.
                log.warning(
                    "wake-ups unavailable, polling: %s", error, extra={"event": "feed_failed"}
                )

    async def _unless_stopped(self, call: Awaitable[T]) -> T | None:
        """``call``'s result, or None when a stop request comes first (a claim retrying
        through an outage must not hold up a shutdown)."""
        task = asyncio.ensure_future(call)
        await self._until(task)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    def _generator(self, name: str) -> Generator:
        if name not in self._generator_cache:
            self._generator_cache[name] = self._generators(name)
        return self._generator_cache[name]

    async def _process(self, item: ClaimedGeneration) -> None:
        started = time.perf_counter()
        outcome = "completed"
        path: str | None = None
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
            # Each attempt has its own path: a result discarded here never removes the
            # image another worker stored for the same item.
            path = result_object_path(
                item.user_id, item.batch_id, item.id, image.extension, attempt=item.attempts
            )
            await self.storage.put(path, image.data, image.content_type)
            self._give_back_slot()
            if await self._completer.complete(item.id, path, item.attempts):
                self.stats.completed += 1
            else:  # cancelled, deleted or re-leased meanwhile: the result must not stay
                outcome = "discarded"
                self.stats.discarded += 1
                await self.storage.remove([path])
        except asyncio.CancelledError:
            outcome = "lost" if asyncio.current_task() in self._lost else "released"
            if outcome == "lost":
                self.stats.discarded += 1
                if path is not None:
                    with contextlib.suppress(Exception):
                        await self.storage.remove([path])
                return  # abandoned on purpose: nothing to hand back
            raise
        except Exception as exc:
            outcome = await self._fail(item, exc)
        finally:
            # The item may already be claimed again (a retry, woken by the feed before this
            # task ended): only forget the entry if it is still this task's.
            me = asyncio.current_task()
            if me is not None:
                self._lost.discard(me)
            lease = self._running.get(item.id)
            if lease is not None and lease.task is me:
                del self._running[item.id]
                if not self._running:
                    self._drained.set()
            self._give_back_slot()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "item %s",
                    outcome,
                    extra={
                        "event": "item",
                        "item": str(item.id),
                        "batch": str(item.batch_id),
                        "style": item.style_key,
                        "attempt": item.attempts,
                        "outcome": outcome,
                        "ms": round((time.perf_counter() - started) * 1000),
                    },
                )

    async def _fail(self, item: ClaimedGeneration, exc: Exception) -> str:
        retryable = not isinstance(exc, PermanentGenerationError)
        message = str(exc) if isinstance(exc, PortraitkitError) else f"{type(exc).__name__}: {exc}"
        status = await self.queue.fail(item.id, item.attempts, message, retryable=retryable)
        if status is GenerationStatus.PENDING:
            self.stats.retried += 1
            return "retry"
        if status is GenerationStatus.FAILED:
            self.stats.failed += 1
            return "failed"
        self.stats.discarded += 1
        return "discarded"

    def _presence(self) -> dict[str, Any]:
        opts = self.options
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "concurrency": opts.concurrency,
            "generator": opts.generator,
            "stats": vars(self.stats),
        }

    @property
    def _presence_ttl(self) -> int:
        """How long a check-in holds: a few heartbeats, so one late beat is not a death."""
        return max(5, math.ceil(self.options.heartbeat_seconds * 3))

    async def _heartbeat_loop(self) -> None:
        """Say this worker is alive (three times per check-in's life, so a fast heartbeat
        does not pay a check-in each time); renew the leases of every item it holds and
        abandon the ones it lost."""
        checked_in_at: float | None = None
        while True:
            now = time.monotonic()
            if checked_in_at is None or now - checked_in_at >= self._presence_ttl / 3:
                await self.queue.checkin(self._presence(), self._presence_ttl)
                checked_in_at = now
            await asyncio.sleep(self.options.heartbeat_seconds)
            holding = dict(self._running)
            held = await self.queue.heartbeat({gid: h.attempt for gid, h in holding.items()})
            for lost in holding.keys() - held:
                task = holding[lost].task
                # Only an item still rendering is abandoned: one whose result is being
                # recorded may have just completed (and so left 'processing'), and one
                # claimed again since the snapshot is a new task with a new lease.
                if task in self._rendering and self._running.get(lost) is holding[lost]:
                    self._abandon(task)

    async def _recover_loop(self) -> None:
        """Any worker may put back items whose worker died; the SQL makes it safe to race."""
        while True:
            moved = await self.queue.recover()
            if moved.requeued or moved.failed:
                log.info("recovered expired leases", extra={"event": "recovered", **vars(moved)})
            await asyncio.sleep(self.options.recover_every_seconds * (0.8 + random.random() * 0.4))

    async def _shutdown(self, side_tasks: set[asyncio.Task[Any]], grace: float) -> None:
        """Let in-flight items finish within the grace period (the completer and the
        heartbeat keep running for them), give the rest back, record the last results."""
        if self._running:
            tasks = {lease.task for lease in self._running.values()}
            _done, late = await asyncio.wait(tasks, timeout=grace)
            if late:
                ids = {UUID(t.get_name()) for t in late}
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                # With the database gone their leases expire instead: never wait long here.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(LAST_FLUSH_SECONDS):
                        self.stats.released += await self.queue.release(ids)
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        await self._completer.aclose(give_up_after=LAST_FLUSH_SECONDS)
        with contextlib.suppress(Exception):  # if it cannot be said, the record runs out
            async with asyncio.timeout(LAST_FLUSH_SECONDS):
                await self.queue.checkin(self._presence(), self._presence_ttl, stopping=True)
        for generator in self._generator_cache.values():
            close = getattr(generator, "aclose", None)
            if close is not None:
                await close()
