"""The worker's typed view of the queue functions of the SQL contract (service role).

Each method is one call of ``claim_generations``, ``heartbeat_generations``,
``complete_generations``, ``fail_generation``, ``release_generations``,
``recover_expired_leases`` or ``worker_checkin``, with typed arguments and results,
retried with backoff on transient errors (a dropped connection, a deadlock, a
serialization failure, a timeout). Retrying is safe for each of them: a call that did not
commit changed nothing, and a call whose answer was lost after its commit answers the
same the second time (a completion is accepted again for the same path) or, for a claim,
only costs the claimed items a lease expiry.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any
from uuid import UUID

from portraitkit.models import ClaimedGeneration, GenerationStatus, RecoveredLeases
from portraitkit.retrying import retrying
from portraitkit.transports.base import Transport


class WorkQueue:
    """The queue as one worker sees it: its id and lease length are fixed."""

    def __init__(
        self,
        transport: Transport,
        worker_id: str,
        lease_seconds: int,
        *,
        retry_seconds: float | None = None,
    ) -> None:
        self.transport = transport
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        # None: retry until it works or the caller cancels (the worker's loops);
        # a number bounds each call (shutdown, tests).
        self.retry_seconds = retry_seconds

    async def _call(self, function: str, args: dict[str, Any] | None = None) -> Any:
        async for attempt in retrying(function, seconds=self.retry_seconds):
            with attempt:
                return await self.transport.rpc(function, args or {})
        raise AssertionError("unreachable: retrying re-raises the last error")  # pragma: no cover

    async def claim(self, max_items: int) -> list[ClaimedGeneration]:
        """Lease up to ``max_items`` runnable items, fair across users (see the contract)."""
        rows = await self._call(
            "claim_generations",
            {
                "worker_id": self.worker_id,
                "max_items": max_items,
                "lease_seconds": self.lease_seconds,
            },
        )
        return [ClaimedGeneration.model_validate(row) for row in rows or []]

    async def heartbeat(self, leases: Mapping[UUID, int]) -> set[UUID]:
        """Renew the leases (item id → the attempt this worker runs); returns the ids still
        held (the others are no longer ours)."""
        if not leases:
            return set()
        ids = sorted(leases)
        held = await self._call(
            "heartbeat_generations",
            {
                "worker_id": self.worker_id,
                "generation_ids": ids,
                "lease_seconds": self.lease_seconds,
                "attempts": [leases[i] for i in ids],
            },
        )
        return {UUID(str(h)) for h in held or []}

    async def complete(self, results: Sequence[tuple[UUID, str, int]]) -> set[UUID]:
        """Record ``(id, image path, attempt)`` results; returns the ids accepted."""
        if not results:
            return set()
        accepted = await self._call(
            "complete_generations",
            {
                "worker_id": self.worker_id,
                "generation_ids": [r[0] for r in results],
                "image_paths": [r[1] for r in results],
                "attempts": [r[2] for r in results],
            },
        )
        return {UUID(str(a)) for a in accepted or []}

    async def fail(
        self, item: UUID, attempt: int, error: str, *, retryable: bool
    ) -> GenerationStatus | None:
        """Record a failure of ``attempt``; the item's new status, or None when that attempt
        was no longer ours (a resent failure never lands on the next attempt)."""
        status = await self._call(
            "fail_generation",
            {
                "worker_id": self.worker_id,
                "generation_id": item,
                "error": error[:2000],
                "retryable": retryable,
                "attempt": attempt,
            },
        )
        return GenerationStatus(status) if status else None

    async def release(self, ids: Collection[UUID]) -> int:
        """Give items back untouched (shutting down); returns how many were still ours."""
        if not ids:
            return 0
        released = await self._call(
            "release_generations", {"worker_id": self.worker_id, "generation_ids": sorted(ids)}
        )
        return int(released or 0)

    async def checkin(
        self, info: Mapping[str, Any], ttl_seconds: int, *, stopping: bool = False
    ) -> None:
        """Record this worker as live for ``ttl_seconds`` more (or as stopped), so that
        ``portraitkit workers`` and a user's watch can tell whether anybody is working."""
        await self._call(
            "worker_checkin",
            {
                "worker_id": self.worker_id,
                "info": dict(info),
                "ttl_seconds": ttl_seconds,
                "stopping": stopping,
            },
        )

    async def recover(self) -> RecoveredLeases:
        """Put back the items of workers whose leases ran out (any worker may do it)."""
        return RecoveredLeases.model_validate(await self._call("recover_expired_leases"))
