"""What every benchmark shares: a throwaway database, users, timing, and the report.

Each benchmark runs against its own freshly migrated database: on an embedded server
started in a temporary state directory (stopped and removed at the end), or, with
`--database-url`, in a new database created on that server and dropped afterwards.
Data is arranged as the superuser in bulk SQL; what is measured runs the way the app
runs it (a role plus JWT claims in one transaction per call, as PostgREST does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from portraitkit.database.connection import connect
from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import Migrator

Connection = psycopg.Connection[Any]

# Progress goes to stderr so that `--json` leaves stdout clean for a program.
log = Console(stderr=True, highlight=False)
SERVICE_CLAIMS: dict[str, Any] = {"role": "service_role"}


def user_claims(user_id: uuid.UUID) -> dict[str, Any]:
    """The JWT claims of a signed-in user, as Supabase Auth issues them."""
    return {"sub": str(user_id), "role": "authenticated", "aud": "authenticated"}


# -- command line ---------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer samples")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument(
        "--database-url",
        help="a superuser URL of an existing server: the benchmark creates its own database "
        "there and drops it afterwards (default: start an embedded server in a temp dir)",
    )
    return p


# -- the database under test ----------------------------------------------------------


@contextmanager
def bench_database(database_url: str | None, name: str) -> Iterator[str]:
    """Yield the superuser URL of a new, migrated database that is gone afterwards."""
    with bench_server(database_url, name) as server_url, scratch_database(server_url, name) as url:
        yield url


@contextmanager
def bench_server(database_url: str | None, name: str) -> Iterator[str]:
    """Yield a superuser URL of a server to make scratch databases on: `database_url`'s
    server, or an embedded one in a temporary state directory, stopped and removed after."""
    if database_url:
        yield database_url
        return
    state_dir = tempfile.mkdtemp(prefix=f"portraitkit-bench-{name}-")
    server = EmbeddedPostgres(state_dir)
    try:
        log.print(f"[dim]starting PostgreSQL in {state_dir}[/]")
        yield server.ensure_running()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)


@contextmanager
def scratch_database(
    server_url: str, name: str, *, migrate: bool = True, template: str | None = None
) -> Iterator[str]:
    """Yield the URL of a new database on the server (migrated, or a copy of `template`,
    or empty with `migrate=False`), dropped afterwards."""
    dbname = f"portraitkit_bench_{name}_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("create database {}").format(sql.Identifier(dbname))
    if template:
        create += sql.SQL(" template {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(create)
    url = psycopg.conninfo.make_conninfo(server_url, dbname=dbname)
    try:
        if migrate and not template:
            Migrator(url).migrate()
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
            )


def open_connection(url: str, *, autocommit: bool = False) -> Connection:
    """A connection as the transports open one (no server-side prepared statements)."""
    return connect(url, autocommit=autocommit, application_name="portraitkit-bench")


def server_facts(conn: Connection) -> dict[str, Any]:
    """What a reader needs to judge the figures: version, durability, cores."""
    version, sync, fsync = conn.execute(
        "select current_setting('server_version'), current_setting('synchronous_commit'),"
        " current_setting('fsync')"
    ).fetchone()
    return {
        "postgres": version,
        "synchronous_commit": sync,
        "fsync": fsync,
        "cpus": os.cpu_count(),
    }


# -- arranging data as the superuser ---------------------------------------------------


def make_users(
    conn: Connection, count: int, *, credits: int | None = None, label: str = "user"
) -> list[uuid.UUID]:
    """Sign up `count` users in one statement (the auth trigger makes their profiles)."""
    rows = conn.execute(
        "insert into auth.users (id, email)"
        " select gen_random_uuid(), %s || '-' || i || '-' || left(md5(random()::text), 6)"
        "        || '@bench.test'"
        "   from generate_series(1, %s) i"
        " returning id",
        (label, count),
    ).fetchall()
    ids = [row[0] for row in rows]
    if credits is not None:
        conn.execute(
            "update public.profiles set starting_credits = %s, total_credits = %s"
            " where id = any(%s)",
            (credits, credits, ids),
        )
    if not conn.autocommit:
        conn.commit()
    return ids


# -- bulk data: batches as the trigger would have left them --------------------------

# A gallery's mix of batch outcomes, in percent; each kind fixes its items' statuses.
STATUS_MIX = {
    "completed": 80,
    "partial": 8,
    "failed": 4,
    "cancelled": 3,
    "processing": 3,
    "pending": 2,
}


def _kind_sql(mix: Mapping[str, int] = STATUS_MIX) -> str:
    """SQL mapping a bucket 0..99 to a batch kind, following `mix` (percent per kind)."""
    cases, upper = [], 0
    for kind, share in mix.items():
        upper += share
        cases.append(f"when bucket < {upper} then '{kind}'")
    return "case " + " ".join(cases) + " end"


# The status of item `p` (1-based) of `size` in a batch of kind `kind`: consistent with
# private.derive_batch_status, so a batch's status follows from its items as the trigger
# would have made it.
_ITEM_STATUS = """
  (case {kind}
     when 'completed' then 'completed'
     when 'partial' then case when p <= {size} - greatest({size} / 5, 1) then 'completed'
                              else 'failed' end
     when 'failed' then 'failed'
     when 'cancelled' then 'cancelled'
     when 'processing' then case when p <= {size} * 4 / 10 then 'completed'
                                 when p <= greatest({size} * 6 / 10, {size} * 4 / 10 + 1)
                                   then 'processing'
                                 else 'pending' end
     else 'pending'
   end)::public.generation_status
"""


def load_batches(
    conn: Connection,
    batches_per_user: Mapping[uuid.UUID, int],
    size: int,
    mix: Mapping[str, int] = STATUS_MIX,
) -> None:
    """Bulk-load finished-looking batches of `size` items each, as the superuser, fast.

    Triggers and foreign-key checks are off for the load (session_replication_role =
    replica), so the counters, status, cover and timestamps the trigger would keep are
    written in the same SQL, consistent with the items by construction. Batches of all
    users are interleaved in time, one a minute back from now, kinds per `mix` (a queue
    to work through: ``{"pending": 100}``).

    Waiting and running items get their fair tags as the fair-queue migration gave the
    items already queued: round-robin per user, oldest first (each user's queued batches
    in order, `size` tags apiece; exactly 1, 2, 3, ... when every item is pending).
    """
    users = list(batches_per_user)
    counts = [batches_per_user[u] for u in users]
    item_status = _ITEM_STATUS.format(kind="s.kind", size="%(size)s")
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(
            f"""
            create temp table seed_batches on commit drop as
            select id, user_id, n, created_at, kind,
                   -- the batch's place among its user's queued batches, oldest first
                   row_number() over (partition by user_id, kind in ('pending', 'processing')
                                      order by n desc) - 1 as queued_before
              from (select id, user_id, n, now() - n * interval '1 minute' as created_at,
                           {_kind_sql(mix)} as kind
                      from (select gen_random_uuid() as id, o.user_id,
                                   row_number() over (order by md5(o.user_id::text || ':' || k))
                                     as n
                              from unnest(%(users)s::uuid[], %(counts)s::int[])
                                     as o(user_id, batches)
                             cross join generate_series(1, o.batches) as k) b
                     cross join lateral (select (n * 37) %% 100 as bucket) x) k
            """,
            {"users": users, "counts": counts},
        )
        # The catalogue as two arrays: item p of batch n gets style (n + p) mod 15.
        catalogue = conn.execute(
            "select array_agg(key order by key), array_agg(credit_cost order by key)"
            " from public.styles"
        ).fetchone()
        params = {"size": size, "keys": catalogue[0], "costs": catalogue[1]}
        items = f"""
            select p, {item_status} as st,
                   (%(keys)s::text[])[1 + (s.n + p) %% cardinality(%(keys)s::text[])] as key,
                   (%(costs)s::int[])[1 + (s.n + p) %% cardinality(%(keys)s::text[])] as cost
              from generate_series(1, %(size)s) as p
        """
        started = time.perf_counter()
        conn.execute(
            f"""
            insert into public.generation_batches
              (id, user_id, original_image_url, status, total_count, pending_count,
               processing_count, completed_count, failed_count, cancelled_count,
               credits_charged, cover_image_url, cover_style_key, created_at, updated_at,
               finished_at)
            select s.id, s.user_id, s.user_id || '/' || s.id || '/source.png',
                   private.derive_batch_status(c.pending, c.processing, c.completed, c.failed,
                                               c.cancelled),
                   %(size)s, c.pending, c.processing, c.completed, c.failed, c.cancelled,
                   c.credits,
                   case when c.completed > 0 then s.user_id || '/' || s.id || '/1.png' end,
                   case when c.completed > 0 then c.first_style end,
                   s.created_at,
                   s.created_at + interval '2 minutes',
                   case when c.pending + c.processing = 0
                        then s.created_at + interval '2 minutes' end
              from seed_batches s
             cross join lateral (
               select count(*) filter (where i.st = 'pending')::int as pending,
                      count(*) filter (where i.st = 'processing')::int as processing,
                      count(*) filter (where i.st = 'completed')::int as completed,
                      count(*) filter (where i.st = 'failed')::int as failed,
                      count(*) filter (where i.st = 'cancelled')::int as cancelled,
                      sum(i.cost)::int as credits,
                      min(i.key) filter (where i.p = 1) as first_style
                 from ({items}) i
             ) c
            """,
            params,
        )
        log.print(f"[dim]  batches inserted in {time.perf_counter() - started:.1f} s[/]")
        started = time.perf_counter()
        conn.execute(
            f"""
            insert into public.generations
              (user_id, batch_id, style_key, position, status, credit_cost,
               generated_image_url, attempts, max_attempts, queued_at, run_after, started_at,
               finished_at, lease_owner, lease_expires_at, created_at, updated_at, fair_tag)
            select s.user_id, s.id, i.key, i.p, i.st, i.cost,
                   case when i.st = 'completed'
                        then s.user_id || '/' || s.id || '/' || i.p || '.png' end,
                   case when i.st in ('pending', 'cancelled') then 0 else 1 end, 3,
                   s.created_at, s.created_at,
                   case when i.st not in ('pending', 'cancelled')
                        then s.created_at + interval '10 seconds' end,
                   case when i.st in ('completed', 'failed', 'cancelled')
                        then s.created_at + interval '2 minutes' end,
                   case when i.st = 'processing' then 'bench-loader' end,
                   case when i.st = 'processing' then now() + interval '1 day' end,
                   s.created_at,
                   s.created_at + interval '2 minutes',
                   case when i.st in ('pending', 'processing')
                        then s.queued_before * %(size)s + i.p else 0 end
              from seed_batches s
             cross join lateral ({items}) i
            """,
            params,
        )
        # The queue's rows, as the generations triggers would have put them in.
        conn.execute(
            """
            insert into private.generation_queue
              (id, status, user_id, batch_id, position, fair_tag, queued_at, run_after,
               lease_expires_at)
            select g.id, g.status, g.user_id, g.batch_id, g.position, g.fair_tag, g.queued_at,
                   g.run_after, g.lease_expires_at
              from public.generations g
              join seed_batches s on s.id = g.batch_id
             where g.status in ('pending', 'processing')
            """
        )
        log.print(f"[dim]  generations inserted in {time.perf_counter() - started:.1f} s[/]")


def check_counters_match(conn: Connection, sample: int = 2000) -> None:
    """A sample of batches must have exactly the counters their items imply."""
    wrong = conn.execute(
        """
        select count(*)
          from (select * from public.generation_batches tablesample system (10) limit %s) b
         cross join lateral (
           select count(*) filter (where g.status = 'pending') as pending,
                  count(*) filter (where g.status = 'processing') as processing,
                  count(*) filter (where g.status = 'completed') as completed,
                  count(*) filter (where g.status = 'failed') as failed,
                  count(*) filter (where g.status = 'cancelled') as cancelled
             from public.generations g where g.batch_id = b.id) g
         where (b.pending_count, b.processing_count, b.completed_count, b.failed_count,
                b.cancelled_count) <> (g.pending, g.processing, g.completed, g.failed,
                                       g.cancelled)
            or b.status <> private.derive_batch_status(g.pending::int, g.processing::int,
                 g.completed::int, g.failed::int, g.cancelled::int)
        """,
        (sample,),
    ).fetchone()[0]
    if wrong:
        raise RuntimeError(f"{wrong} loaded batches disagree with their items")


@contextmanager
def user_triggers_disabled(conn: Connection, table: str = "public.generations") -> Iterator[None]:
    """Turn the table's own triggers off (foreign keys stay checked), then on again."""
    conn.execute(f"alter table {table} disable trigger user")
    try:
        yield
    finally:
        conn.execute(f"alter table {table} enable trigger user")


def as_claims(conn: Connection, claims: Mapping[str, Any]) -> None:
    """Inside an open transaction: become the claims' role, as PostgREST does."""
    conn.execute(
        "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
        (str(claims.get("role", "anon")), json.dumps(dict(claims))),
    )


def scalar(result: Any, function: str) -> Any:
    """A scalar function's value from rpc.call, whether it hands back rows or the value."""
    if isinstance(result, list):
        return result[0][function] if result else None
    return result


class BackendCpu:
    """CPU time the server process behind a connection has used, when it runs on this host.

    Read from /proc/<pid>/schedstat (nanoseconds on a CPU). Wall time on a shared machine
    includes waiting for a core; CPU time does not, so it steadies per-call figures.
    """

    def __init__(self, conn: Connection) -> None:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        if not conn.autocommit:
            conn.rollback()
        self.path = f"/proc/{pid}/schedstat"
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                ours = f.read().strip() == "postgres"  # not some other host's pid
        except OSError:
            ours = False
        self.available = ours and self._read() is not None

    def _read(self) -> float | None:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def seconds(self) -> float:
        """Seconds of CPU so far (0.0 when the server is not on this host)."""
        return (self._read() or 0.0) if self.available else 0.0


class ServerCpu:
    """CPU time of every process of the server (backends, WAL writer, checkpointer,
    autovacuum) but the one serving `conn` (the benchmark's own), when the server runs on
    this host: what a run cost the database as a whole.

    Read from /proc/<pid>/schedstat for the postmaster's children. Take the second
    snapshot before the clients disconnect: a backend that has exited is not counted.
    """

    def __init__(self, conn: Connection) -> None:
        probe = BackendCpu(conn)
        self.available = probe.available
        self.own = int(probe.path.split("/")[2])
        self.postmaster: int | None = None
        if self.available:
            with open(f"/proc/{self.own}/stat", encoding="ascii") as f:
                self.postmaster = int(f.read().rsplit(")", 1)[1].split()[1])

    def snapshot(self) -> dict[int, float]:
        """Seconds on a CPU so far, per server process (empty when not on this host)."""
        if self.postmaster is None:
            return {}
        try:
            with open(f"/proc/{self.postmaster}/task/{self.postmaster}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return {}
        times: dict[int, float] = {}
        for pid in [self.postmaster, *pids]:
            if pid == self.own:
                continue
            try:
                with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
                    times[pid] = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
        return times

    @staticmethod
    def between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
        """Seconds used from one snapshot to the next (new processes from zero)."""
        return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


# -- measuring -------------------------------------------------------------------------


@dataclass
class Samples:
    """Durations of repeated calls, in seconds."""

    values: list[float] = field(default_factory=list)

    def time(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.values.append(time.perf_counter() - start)
        return result

    @property
    def n(self) -> int:
        return len(self.values)

    def median(self) -> float:
        return statistics.median(self.values)

    def p95(self) -> float:
        return percentile(self.values, 95)

    def mean(self) -> float:
        return statistics.fmean(self.values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the value at or below which `pct`% of the samples lie."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


# -- reporting -------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def emit(
    args: argparse.Namespace,
    tables: Sequence[Table],
    results: Mapping[str, Any],
) -> None:
    """The tables for people, or the results as JSON on stdout with `--json`."""
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=150)  # a pipe or a file: do not wrap at 80
    for table in tables:
        out.print(table)
