"""What the triggers keep true whoever writes, checked against the rows themselves.

Every test that drives items through their lifecycle ends by asking these for the
exceptions (an empty list when all is well): the batch counters and status the statement
triggers keep (the status is derived inline there, so it is compared with
``private.derive_batch_status``, the rule), and the queue table
(``private.generation_queue``) that mirrors the pending and processing items.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg


def counter_mismatches(conn: psycopg.Connection[Any], users: list[UUID] | None = None) -> list[Any]:
    """Batches (of ``users``, or all) whose counters or status differ from their items'."""
    return conn.execute(
        """
        select b.id, b.status::text as status, b.total_count, b.pending_count,
               b.processing_count, b.completed_count, b.failed_count, b.cancelled_count,
               array_agg(g.status::text order by g.id) as items
          from public.generation_batches b
          left join public.generations g on g.batch_id = b.id
         where %(users)s::uuid[] is null or b.user_id = any (%(users)s::uuid[])
         group by b.id
        having b.total_count <> count(g.id)
            or b.pending_count <> count(g.id) filter (where g.status = 'pending')
            or b.processing_count <> count(g.id) filter (where g.status = 'processing')
            or b.completed_count <> count(g.id) filter (where g.status = 'completed')
            or b.failed_count <> count(g.id) filter (where g.status = 'failed')
            or b.cancelled_count <> count(g.id) filter (where g.status = 'cancelled')
            or b.status <> private.derive_batch_status(
                 b.pending_count, b.processing_count, b.completed_count, b.failed_count,
                 b.cancelled_count)
        """,
        {"users": users},
    ).fetchall()


def queue_mismatches(conn: psycopg.Connection[Any]) -> list[Any]:
    """Pending or processing items without their exact queue row, and queue rows of items
    that are neither (or gone)."""
    return conn.execute(
        """
        select coalesce(g.id, q.id) as id, g.status::text as item_status,
               q.status::text as queue_status
          from (select * from public.generations
                 where status in ('pending', 'processing')) g
          full join private.generation_queue q on q.id = g.id
         where (g.status, g.user_id, g.batch_id, g.position, g.fair_tag, g.queued_at,
                g.run_after, g.lease_expires_at)
               is distinct from
               (q.status, q.user_id, q.batch_id, q.position, q.fair_tag, q.queued_at,
                q.run_after, q.lease_expires_at)
        """
    ).fetchall()
