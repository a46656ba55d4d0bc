"""Pydantic models of what the SQL contract returns.

Field names are the JSON keys the SQL functions build, so one model validates a row read
over direct Postgres and a body returned by PostgREST alike.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, computed_field


class BatchStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (BatchStatus.PENDING, BatchStatus.PROCESSING)


class GenerationStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Style(_Model):
    key: str
    name: str
    category: str
    description: str = ""
    credit_cost: int
    prompt_template: str
    generator: str = "local"
    model: str | None = None
    is_active: bool = True
    sort_order: int = 0


class BatchSummary(_Model):
    """One gallery card: the "X/Y photos" counts, status, progress and cover."""

    id: UUID
    status: BatchStatus
    original_image_url: str
    custom_prompt: str | None = None
    total_count: int
    pending_count: int
    processing_count: int
    completed_count: int
    failed_count: int
    cancelled_count: int
    progress: int
    credits_charged: int
    cover_image_url: str | None = None
    cover_style_key: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class Generation(_Model):
    """One style of a batch, as the batch-detail screen shows it."""

    id: UUID
    style_key: str
    style_name: str
    position: int
    status: GenerationStatus
    generated_image_url: str | None = None
    credit_cost: int
    attempts: int
    max_attempts: int
    last_error: str | None = None
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None


class Batch(BatchSummary):
    items: list[Generation]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def refunded_credits(self) -> int:
        """What the batch got back: each item now failed or cancelled was refunded its own
        cost once (docs/contract.md, "Credits"); a failed item that was retried was charged
        again, so only those failed or cancelled now count."""
        ended_unpaid = (GenerationStatus.FAILED, GenerationStatus.CANCELLED)
        return sum(item.credit_cost for item in self.items if item.status in ended_unpaid)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def net_credits(self) -> int:
        """What the batch cost in the end: charged, less what was refunded."""
        return self.credits_charged - self.refunded_credits


class BatchPage(_Model):
    """A keyset page of the gallery; pass ``next_cursor`` as ``after`` for the next one."""

    items: list[BatchSummary]
    next_cursor: str | None = None


class CancelResult(_Model):
    batch_id: UUID
    cancelled: int
    refunded: int
    status: BatchStatus


class RetryResult(_Model):
    batch_id: UUID
    retried: int
    charged: int
    status: BatchStatus


class DeleteResult(_Model):
    batch_id: UUID
    deleted: bool
    refunded: int
    # None when the row named a path outside the caller's folder (see docs/contract.md).
    original_image_url: str | None = None
    image_paths: list[str]


class Stats(_Model):
    batches: int
    items: int
    completed: int
    failed: int
    cancelled: int
    pending: int
    processing: int
    success_rate: float | None = None
    avg_generation_ms: int | None = None
    credits_spent: int
    credits_refunded: int
    credits_granted: int
    balance: int | None = None


class ClaimedGeneration(_Model):
    """A generation leased to a worker, with what it needs to render it."""

    id: UUID
    batch_id: UUID
    user_id: UUID
    style_key: str
    generator: str
    model: str | None = None
    prompt: str
    custom_prompt: str | None = None
    source_image_path: str
    attempts: int
    max_attempts: int
    lease_expires_at: datetime


class RecoveredLeases(_Model):
    """What one ``recover_expired_leases`` call put back."""

    requeued: int
    failed: int


class WorkerState(StrEnum):
    LIVE = "live"
    STOPPED = "stopped"
    LOST = "lost"  # stopped checking in without saying goodbye (killed, or cut off)


class WorkerRecord(_Model):
    """One worker process as its heartbeats last reported it (``list_workers``)."""

    worker_id: str
    status: WorkerState
    hostname: str | None = None
    pid: int | None = None
    version: str | None = None
    concurrency: int | None = None
    generator: str | None = None
    running: int
    stats: dict[str, int] = {}
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None = None
