"""The user-facing API: everything a signed-in user of the app can do, over any transport.

``PortraitClient`` is async; ``SyncPortraitClient`` wraps it for scripts. Both return the
pydantic models of :mod:`portraitkit.models` and raise the typed errors of
:mod:`portraitkit.errors`, whichever transport carries the calls.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from portraitkit.errors import NotAuthenticated
from portraitkit.models import (
    Batch,
    BatchPage,
    BatchStatus,
    BatchSummary,
    CancelResult,
    DeleteResult,
    RetryResult,
    Stats,
    Style,
    WorkerRecord,
)
from portraitkit.storage import Storage, source_object_path, validate_source_image
from portraitkit.transports.base import Transport

T = TypeVar("T")
Source = str | Path | bytes


class PortraitClient:
    """One user's session with portraitkit."""

    def __init__(self, transport: Transport, storage: Storage | None = None) -> None:
        self.transport = transport
        self.storage = storage

    @property
    def user_id(self) -> str:
        uid = self.transport.user_id
        if uid is None:
            raise NotAuthenticated("Sign in first: this call acts for a signed-in user.")
        return uid

    async def styles(self) -> list[Style]:
        """The active catalogue, grouped by category and in display order."""
        rows = await self.transport.select("styles", order=("category", "sort_order", "key"))
        return [Style.model_validate(r) for r in rows]

    async def balance(self) -> int:
        rows = await self.transport.select("profiles", columns=("total_credits",))
        if not rows:
            raise NotAuthenticated("No profile is visible: sign in first.")
        return int(rows[0]["total_credits"])

    async def upload_source(self, source: Path | bytes) -> str:
        """Validate a photo and store it under the user's folder; returns its object path.

        Validation happens before anything is charged, so a bad file costs nothing.
        """
        if self.storage is None:
            raise RuntimeError("This client has no storage: pass one to upload images.")
        data = (
            source
            if isinstance(source, bytes)
            else await asyncio.to_thread(Path(source).read_bytes)
        )
        info = validate_source_image(data, None if isinstance(source, bytes) else str(source))
        path = source_object_path(self.user_id, data, info)
        await self.storage.put(path, data, info.content_type)
        return path

    async def create_batch(
        self,
        style_keys: Sequence[str],
        source: Source,
        custom_prompt: str | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Pay once for several styles; returns the new batch's id.

        ``source`` is an object path already in storage, or a file path / bytes to upload
        first. Without an ``idempotency_key`` one is made for this call, so the transport
        can safely resend it after a dropped connection without charging twice.
        """
        path = source if isinstance(source, str) else await self.upload_source(source)
        value = await self.transport.rpc(
            "create_generation_batch",
            {
                "style_keys": list(style_keys),
                "source_image_path": path,
                "custom_prompt": custom_prompt,
                "idempotency_key": idempotency_key or f"pk-{uuid.uuid4()}",
            },
            retry_safe=True,
        )
        return UUID(str(value))

    async def list_batches(
        self, status: BatchStatus | str | None = None, page_size: int = 20, after: str | None = None
    ) -> BatchPage:
        page = await self.transport.rpc(
            "list_batches",
            {"status": str(status) if status else None, "page_size": page_size, "after": after},
            retry_safe=True,
        )
        return BatchPage.model_validate(page)

    async def iter_batches(
        self, status: BatchStatus | str | None = None, page_size: int = 50
    ) -> AsyncIterator[BatchSummary]:
        """Every batch, newest first, fetching page after page as it is consumed."""
        after: str | None = None
        while True:
            page = await self.list_batches(status, page_size, after)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            after = page.next_cursor

    async def get_batch(self, batch_id: UUID | str) -> Batch:
        data = await self.transport.rpc("get_batch", {"batch_id": str(batch_id)}, retry_safe=True)
        return Batch.model_validate(data)

    async def cancel_batch(self, batch_id: UUID | str) -> CancelResult:
        data = await self.transport.rpc("cancel_batch", {"batch_id": str(batch_id)})
        return CancelResult.model_validate(data)

    async def retry_failed(self, batch_id: UUID | str) -> RetryResult:
        data = await self.transport.rpc("retry_failed", {"batch_id": str(batch_id)})
        return RetryResult.model_validate(data)

    async def delete_batch(self, batch_id: UUID | str) -> DeleteResult:
        """Delete the batch, then its result images from storage (the source photo stays:
        other batches may use it)."""
        data = await self.transport.rpc("delete_batch", {"batch_id": str(batch_id)})
        result = DeleteResult.model_validate(data)
        if self.storage is not None and result.image_paths:
            await self.storage.remove(result.image_paths)
        return result

    async def stats(self) -> Stats:
        return Stats.model_validate(await self.transport.rpc("batch_stats", retry_safe=True))

    async def workers_online(self) -> int:
        """How many workers are live (checked in and not stopped): a pending batch waits
        for nothing else."""
        return int(await self.transport.rpc("workers_online", retry_safe=True) or 0)

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerRecord]:
        """Every live worker, or every recorded one (service role)."""
        rows = await self.transport.rpc(
            "list_workers", {"include_stopped": include_stopped}, retry_safe=True
        )
        return [WorkerRecord.model_validate(row) for row in rows or []]

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> PortraitClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncPortraitClient:
    """The same API for scripts: each call runs on a private event loop thread."""

    def __init__(self, client: PortraitClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def user_id(self) -> str:
        return self._client.user_id

    def styles(self) -> list[Style]:
        return self._run(self._client.styles())

    def balance(self) -> int:
        return self._run(self._client.balance())

    def upload_source(self, source: Path | bytes) -> str:
        return self._run(self._client.upload_source(source))

    def create_batch(
        self,
        style_keys: Sequence[str],
        source: Source,
        custom_prompt: str | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        return self._run(
            self._client.create_batch(style_keys, source, custom_prompt, idempotency_key)
        )

    def list_batches(
        self, status: BatchStatus | str | None = None, page_size: int = 20, after: str | None = None
    ) -> BatchPage:
        return self._run(self._client.list_batches(status, page_size, after))

    def iter_batches(
        self, status: BatchStatus | str | None = None, page_size: int = 50
    ) -> Iterator[BatchSummary]:
        after: str | None = None
        while True:
            page = self.list_batches(status, page_size, after)
            yield from page.items
            if page.next_cursor is None:
                return
            after = page.next_cursor

    def get_batch(self, batch_id: UUID | str) -> Batch:
        return self._run(self._client.get_batch(batch_id))

    def cancel_batch(self, batch_id: UUID | str) -> CancelResult:
        return self._run(self._client.cancel_batch(batch_id))

    def retry_failed(self, batch_id: UUID | str) -> RetryResult:
        return self._run(self._client.retry_failed(batch_id))

    def delete_batch(self, batch_id: UUID | str) -> DeleteResult:
        return self._run(self._client.delete_batch(batch_id))

    def stats(self) -> Stats:
        return self._run(self._client.stats())

    def close(self) -> None:
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> SyncPortraitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
