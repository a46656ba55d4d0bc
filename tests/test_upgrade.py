"""Upgrading a project from release 1: every in-flight item still ends, and exactly once.

A project that applied release 1's migrations (kept in tests/data/release_1) has users and
batches in every state when it applies this checkout's new migrations: items pending,
waiting out a retry backoff, processing under a live lease of a worker that is about to
die, processing under a lease that already expired. After the upgrade a worker of this
checkout must finish all of them as the lifecycle says (docs/contract.md, "Lifecycle"),
counters and ledgers must still agree, and the user API must work on the old rows.

Only what release 1 promised is used before the upgrade. After it, batch ids go to the
user functions as strings, the one form both uuid and text parameters accept.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from portraitkit.database import rpc
from portraitkit.database.migrations import Migrator, local_migrations
from portraitkit.database.schema_files import SchemaDirs, schema_dirs
from portraitkit.errors import PortraitkitError
from portraitkit.generators.noop import NoopGenerator
from portraitkit.service import open_worker
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage, source_object_path, validate_source_image
from portraitkit.worker import WorkerOptions
from tests.invariants import counter_mismatches, queue_mismatches
from tests.waiting import until

RELEASE_1 = Path(__file__).parent / "data" / "release_1"
SERVICE = {"role": "service_role"}
SECRET = "portraitkit-upgrade-test-secret-with-32-bytes-or-more"
FINISHED_WORKER = "release-1-worker"  # finished its items before the upgrade
CRASHED_WORKER = "crashed-worker"  # died before the upgrade; its leases already ran out
DEAD_WORKER = "dead-worker"  # holds live leases across the upgrade, then dies

Admin = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Release1Project:
    """A release-1 database with its users, their batches by scenario name, and the photos
    those batches were made from (path -> PNG bytes, to put in the worker's storage)."""

    url: str
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    batches: dict[str, uuid.UUID] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # batch scenario -> user name
    sources: dict[str, bytes] = field(default_factory=dict)

    def claims(self, user: str) -> dict[str, str]:
        return {"sub": str(self.users[user]), "role": "authenticated", "aud": "authenticated"}


# Each scenario's batch status right after release 1 created it, and at the end, once a
# worker of the new release has run everything that was in flight.
STATUS_AT_UPGRADE = {
    "completed": "completed",
    "failed": "failed",
    "partial": "partial",
    "lease_expired_on_last_attempt": "processing",
    "lease_expired": "processing",
    "lease_live": "processing",
    "cancelled_while_running": "processing",
    "waiting_for_retry": "pending",
    "half_done": "processing",
    "cancelled": "cancelled",
    "pending_to_cancel": "pending",
    "pending": "pending",
}
STATUS_AFTER_WORKER = {
    **STATUS_AT_UPGRADE,
    "lease_expired_on_last_attempt": "failed",
    "lease_expired": "completed",
    "lease_live": "completed",
    "cancelled_while_running": "completed",
    "waiting_for_retry": "completed",
    "half_done": "completed",
    "pending_to_cancel": "completed",
    "pending": "completed",
}


def photo(shade: int) -> bytes:
    """A small, valid PNG; a different shade gives a different content-addressed path."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 80), (shade, 128, 255 - shade)).save(buffer, format="PNG")
    return buffer.getvalue()


class Release1Api:
    """Release 1's SQL API, called as PostgREST calls it (rpc.call), with uuid arguments."""

    def __init__(self, project: Release1Project, conn: Admin) -> None:
        self.project = project
        self.conn = conn  # autocommit, superuser: rpc.call sets the role per call

    def create_batch(self, name: str, user: str, styles: list[str], **extra: Any) -> uuid.UUID:
        data = photo(len(self.project.batches) * 20)
        path = source_object_path(self.project.users[user], data, validate_source_image(data))
        batch_id: uuid.UUID = rpc.call(
            self.conn,
            "create_generation_batch",
            {"style_keys": styles, "source_image_path": path, **extra},
            claims=self.project.claims(user),
        )
        self.project.batches[name] = batch_id
        self.project.owners[name] = user
        self.project.sources[path] = data
        return batch_id

    def items(self, name: str) -> list[uuid.UUID]:
        rows = self.conn.execute(
            "select id from public.generations where batch_id = %s order by position",
            (self.project.batches[name],),
        ).fetchall()
        return [row["id"] for row in rows]

    def claim(
        self, name: str, count: int, worker: str, lease_seconds: int = 3600
    ) -> list[uuid.UUID]:
        """Claim the batch's first `count` items; asserts the queue offered exactly those."""
        rows = rpc.call(
            self.conn,
            "claim_generations",
            {"worker_id": worker, "max_items": count, "lease_seconds": lease_seconds},
            claims=SERVICE,
        )
        claimed = [row["id"] for row in rows]
        assert claimed == self.items(name)[:count], f"{name}: claimed other items"
        return claimed

    def complete(self, worker: str, ids: list[uuid.UUID], name: str) -> None:
        user = self.project.users[self.project.owners[name]]
        paths = [f"{user}/{self.project.batches[name]}/{gid}.png" for gid in ids]
        accepted = rpc.call(
            self.conn,
            "complete_generations",
            {"worker_id": worker, "generation_ids": ids, "image_paths": paths},
            claims=SERVICE,
        )
        assert sorted(accepted) == sorted(ids)

    def fail(self, worker: str, gid: uuid.UUID, retryable: bool) -> str:
        """The item's new status: pending (to retry after a backoff) or failed."""
        status: str = rpc.call(
            self.conn,
            "fail_generation",
            {"worker_id": worker, "generation_id": gid, "error": "boom", "retryable": retryable},
            claims=SERVICE,
        )
        return status

    def cancel(self, name: str) -> None:
        rpc.call(
            self.conn,
            "cancel_batch",
            {"batch_id": self.project.batches[name]},
            claims=self.project.claims(self.project.owners[name]),
        )


def populate(api: Release1Api) -> None:
    """Batches in every state, made through release 1's API as users and workers would.

    The queue hands out the oldest runnable items first, so the batches that get claimed
    come first and those left (partly) pending come last.
    """
    for user in ("ana", "ben", "cleo"):
        uid = uuid.uuid4()
        api.conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (uid, f"{user}@example.test")
        )
        api.project.users[user] = uid

    api.create_batch("completed", "ana", ["pencil_sketch", "watercolor"])
    api.complete(FINISHED_WORKER, api.claim("completed", 2, FINISHED_WORKER), "completed")

    api.create_batch("failed", "ana", ["oil_painting"])
    [gid] = api.claim("failed", 1, FINISHED_WORKER)
    assert api.fail(FINISHED_WORKER, gid, retryable=False) == "failed"

    api.create_batch("partial", "ana", ["poster", "pop_art"])
    done, failing = api.claim("partial", 2, FINISHED_WORKER)
    api.complete(FINISHED_WORKER, [done], "partial")
    assert api.fail(FINISHED_WORKER, failing, retryable=False) == "failed"

    # Two retryable failures, then a third claim: its last attempt, under a lease that ran
    # out before the upgrade. Recovery must end it failed (and refunded), not requeue it.
    api.create_batch("lease_expired_on_last_attempt", "ben", ["charcoal"])
    for _ in range(2):
        [gid] = api.claim("lease_expired_on_last_attempt", 1, CRASHED_WORKER)
        assert api.fail(CRASHED_WORKER, gid, retryable=True) == "pending"
        api.conn.execute(  # the retry backoff passes
            "update public.generations set run_after = now() where id = %s", (gid,)
        )
    api.claim("lease_expired_on_last_attempt", 1, CRASHED_WORKER)

    api.create_batch("lease_expired", "ben", ["ink_wash", "neon_glow"])
    api.claim("lease_expired", 2, CRASHED_WORKER)
    api.conn.execute(  # the crashed worker's leases run out before the upgrade
        "update public.generations set lease_expires_at = now() - interval '5 minutes'"
        " where lease_owner = %s",
        (CRASHED_WORKER,),
    )

    api.create_batch("lease_live", "cleo", ["cartoon", "noir"])
    api.claim("lease_live", 2, DEAD_WORKER)

    # Cancelled while two of its three items run: the pending one is cancelled, the
    # running ones are left to finish.
    api.create_batch("cancelled_while_running", "cleo", ["pixel_art", "poster", "cyanotype"])
    api.claim("cancelled_while_running", 2, DEAD_WORKER)
    api.cancel("cancelled_while_running")

    # Failed once, retryably: pending again, but not before its backoff (seconds away).
    api.create_batch("waiting_for_retry", "ben", ["vintage_photo"])
    [gid] = api.claim("waiting_for_retry", 1, FINISHED_WORKER)
    assert api.fail(FINISHED_WORKER, gid, retryable=True) == "pending"

    api.create_batch("half_done", "ben", ["pencil_sketch", "comic_halftone", "impressionist"])
    api.complete(FINISHED_WORKER, api.claim("half_done", 1, FINISHED_WORKER), "half_done")

    api.create_batch("cancelled", "ana", ["pixel_art", "charcoal"])
    api.cancel("cancelled")
    api.create_batch("pending_to_cancel", "ana", ["noir", "cartoon"])
    api.create_batch(
        "pending",
        "cleo",
        ["watercolor", "pop_art", "poster"],
        custom_prompt="golden hour",
        idempotency_key="upgrade-test-1",
    )


def batch_statuses(admin: Admin, project: Release1Project) -> dict[str, str]:
    rows = admin.execute("select id, status::text from public.generation_batches").fetchall()
    by_id = {row["id"]: row["status"] for row in rows}
    return {name: by_id[batch_id] for name, batch_id in project.batches.items()}


def snapshot(admin: Admin) -> dict[str, list[dict[str, Any]]]:
    """The rows an upgrade must leave alone: items, batch counters, balances, ledger."""
    queries = {
        "generations": "select id, user_id, batch_id, status::text, attempts, max_attempts,"
        " lease_owner, lease_expires_at, run_after, generated_image_url, finished_at"
        " from public.generations order by id",
        "batches": "select id, status::text, total_count, pending_count, processing_count,"
        " completed_count, failed_count, cancelled_count, credits_charged"
        " from public.generation_batches order by id",
        "profiles": "select id, starting_credits, total_credits from public.profiles order by id",
        "ledger": "select id, user_id, kind, delta, generation_id from public.credit_ledger"
        " order by id",
    }
    return {name: admin.execute(query).fetchall() for name, query in queries.items()}


@pytest.fixture
def admin(empty_database_url: str) -> Iterator[Admin]:
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def release_1_project(empty_database_url: str, admin: Admin) -> Release1Project:
    """A database on release 1's schema, with batches in every state (not yet upgraded)."""
    release_1 = SchemaDirs(bootstrap=schema_dirs().bootstrap, migrations=RELEASE_1)
    Migrator(empty_database_url, dirs=release_1, bootstrap=True).migrate()
    project = Release1Project(empty_database_url)
    populate(Release1Api(project, admin))
    assert batch_statuses(admin, project) == STATUS_AT_UPGRADE
    return project


def upgrade(url: str) -> list[str]:
    """Apply this checkout's migrations as a deployment would."""
    return Migrator(url, bootstrap=True).migrate()


def test_upgrade_applies_every_new_migration_and_keeps_the_rows(
    release_1_project: Release1Project, admin: Admin
) -> None:
    before = snapshot(admin)

    applied = upgrade(release_1_project.url)

    current = [m.version for m in local_migrations(schema_dirs().migrations)]
    released = {m.version for m in local_migrations(RELEASE_1)}
    assert applied == [v for v in current if v not in released]
    recorded = admin.execute(
        "select version from supabase_migrations.schema_migrations order by version"
    ).fetchall()
    assert [row["version"] for row in recorded] == current
    status = Migrator(release_1_project.url).status()
    assert status.pending == [] and status.missing_locally == []
    assert snapshot(admin) == before


def test_user_api_reads_batches_from_release_1(
    release_1_project: Release1Project, admin: Admin
) -> None:
    project = release_1_project
    upgrade(project.url)

    for name, batch_id in project.batches.items():
        batch = rpc.call(
            admin,
            "get_batch",
            {"batch_id": str(batch_id)},
            claims=project.claims(project.owners[name]),
        )
        assert (batch["id"], batch["status"]) == (str(batch_id), STATUS_AT_UPGRADE[name])
        assert len(batch["items"]) == batch["total_count"]
    for user in project.users:
        page = rpc.call(admin, "list_batches", {"page_size": 100}, claims=project.claims(user))
        own = {str(b) for name, b in project.batches.items() if project.owners[name] == user}
        assert {item["id"] for item in page["items"]} == own


def test_user_api_cancels_and_retries_batches_from_release_1(
    release_1_project: Release1Project, admin: Admin
) -> None:
    project = release_1_project
    upgrade(project.url)

    def call(function: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = rpc.call(
            admin,
            function,
            {"batch_id": str(project.batches[name])},
            claims=project.claims(project.owners[name]),
        )
        return result

    cancelled = call("cancel_batch", "pending_to_cancel")
    assert (cancelled["cancelled"], cancelled["refunded"]) == (2, 3)  # noir 1 + cartoon 2
    assert cancelled["status"] == "cancelled"
    retried = call("retry_failed", "partial")
    assert (retried["retried"], retried["status"]) == (1, "processing")
    retried = call("retry_failed", "failed")
    assert (retried["retried"], retried["status"]) == (1, "pending")
    with pytest.raises(PortraitkitError) as finished:
        call("cancel_batch", "completed")
    assert finished.value.code == "batch_finished"
    with pytest.raises(PortraitkitError) as nothing:
        call("retry_failed", "completed")
    assert nothing.value.code == "nothing_to_retry"
    assert counter_mismatches(admin) == []
    assert queue_mismatches(admin) == []
    assert unexplained_balances(admin) == []


def test_idempotency_key_from_release_1_still_returns_its_batch(
    release_1_project: Release1Project, admin: Admin
) -> None:
    project = release_1_project
    upgrade(project.url)
    source = admin.execute(
        "select original_image_url from public.generation_batches where id = %s",
        (project.batches["pending"],),
    ).fetchone()
    assert source is not None
    request = {
        "style_keys": ["watercolor", "pop_art", "poster"],
        "source_image_path": source["original_image_url"],
        "custom_prompt": "golden hour",
        "idempotency_key": "upgrade-test-1",
    }
    claims = project.claims("cleo")
    balance = "select total_credits from public.profiles where id = %s"
    credits_before = admin.execute(balance, (project.users["cleo"],)).fetchone()

    again = rpc.call(admin, "create_generation_batch", request, claims=claims)

    assert str(again) == str(project.batches["pending"])
    assert admin.execute(balance, (project.users["cleo"],)).fetchone() == credits_before
    with pytest.raises(PortraitkitError) as conflict:
        rpc.call(
            admin, "create_generation_batch", {**request, "custom_prompt": "dusk"}, claims=claims
        )
    assert conflict.value.code == "idempotency_conflict"


def unexplained_balances(admin: Admin) -> list[dict[str, Any]]:
    """Users whose balance the ledger does not explain (tests/sqlapi's ledger_balances)."""
    return admin.execute(
        """
        select p.id, p.starting_credits, p.total_credits, coalesce(sum(l.delta), 0) as ledger
          from public.profiles p
          left join public.credit_ledger l on l.user_id = p.id
         group by p.id
        having p.starting_credits + coalesce(sum(l.delta), 0) <> p.total_credits
        """
    ).fetchall()


def in_flight(admin: Admin) -> int:
    row = admin.execute(
        "select count(*) as n from public.generations where status in ('pending', 'processing')"
    ).fetchone()
    return int(row["n"]) if row else 0


@pytest.mark.anyio
async def test_worker_ends_every_item_in_flight_at_the_upgrade(
    release_1_project: Release1Project, admin: Admin, tmp_path: Path
) -> None:
    project = release_1_project
    upgrade(project.url)
    before = {row["id"]: row for row in snapshot(admin)["generations"]}
    storage = LocalStorage(tmp_path / "storage")
    for path, data in project.sources.items():
        await storage.put(path, data, "image/png")
    # Time passes: the dead worker's leases run out, and the retry backoff ends.
    admin.execute(
        "update public.generations set lease_expires_at = now() + interval '1 second'"
        " where status = 'processing' and lease_owner = %s",
        (DEAD_WORKER,),
    )
    admin.execute("update public.generations set run_after = now() where status = 'pending'")

    settings = Settings(database_url=project.url, jwt_secret=SECRET, state_dir=tmp_path)
    options = WorkerOptions(
        concurrency=4,
        lease_seconds=10,
        heartbeat_seconds=0.5,
        poll_seconds=0.2,
        recover_every_seconds=0.2,
        worker_id="new-release-worker",
    )
    async with open_worker(settings, options, lambda _name: NoopGenerator()) as worker:
        run = asyncio.create_task(worker.run())
        await until(lambda: in_flight(admin) == 0, "every item ending", seconds=20)
        worker.stop()
        stats = await asyncio.wait_for(run, timeout=10)

    after = {row["id"]: row for row in snapshot(admin)["generations"]}
    was_in_flight = {
        gid for gid, row in before.items() if row["status"] in ("pending", "processing")
    }
    for gid in was_in_flight:
        old, new = before[gid], after[gid]
        if new["status"] == "failed":  # only the item whose lease ran out on its last attempt
            assert old["lease_owner"] == CRASHED_WORKER
            assert new["attempts"] == old["attempts"] == old["max_attempts"]
        else:
            assert new["status"] == "completed" and new["attempts"] == old["attempts"] + 1
            assert await storage.get(new["generated_image_url"])
    for gid in before.keys() - was_in_flight:  # ended before: untouched
        assert after[gid] == before[gid]
    ended_completed = [gid for gid in was_in_flight if after[gid]["status"] == "completed"]
    assert (stats.completed, stats.discarded) == (len(ended_completed), 0)
    assert batch_statuses(admin, project) == STATUS_AFTER_WORKER

    # The dead workers come back with their results: nothing of theirs may count now.
    stale = [before[gid] for gid in was_in_flight if before[gid]["lease_owner"]]
    for stale_worker in (CRASHED_WORKER, DEAD_WORKER):
        accepted = rpc.call(
            admin,
            "complete_generations",
            {
                "worker_id": stale_worker,
                "generation_ids": [str(g["id"]) for g in stale],
                "image_paths": [f"{g['user_id']}/{g['batch_id']}/{g['id']}.png" for g in stale],
            },
            claims=SERVICE,
        )
        assert accepted == []
    assert snapshot(admin)["generations"] == list(after.values())

    assert counter_mismatches(admin) == []
    assert queue_mismatches(admin) == []
    assert unexplained_balances(admin) == []
    refunds = admin.execute(
        "select g.id, count(l.id) as refunds from public.generations g"
        " left join public.credit_ledger l on l.generation_id = g.id and l.kind = 'refund'"
        " group by g.id, g.status having count(l.id)"
        " <> case when g.status in ('failed', 'cancelled') then 1 else 0 end"
    ).fetchall()
    assert refunds == []
    # Everything ended, nothing retried by hand: each user paid exactly for what completed.
    paid_for_completed = admin.execute(
        "select p.id from public.profiles p where p.total_credits <> p.starting_credits - ("
        " select coalesce(sum(g.credit_cost), 0) from public.generations g"
        " where g.user_id = p.id and g.status = 'completed')"
    ).fetchall()
    assert paid_for_completed == []
