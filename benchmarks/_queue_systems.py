"""Each queue the worker benchmarks compare, as the parent process sees it: how to install
its schema (with its own installer), fill its queue in bulk, read its progress from the
database, and check that every job ran exactly once. The worker processes themselves are
in `_queue_runners.py`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
from _common import Connection, load_batches, make_users, open_connection, scratch_database
from _queue_runners import (
    CEILING_SCHEMA,
    CEILING_TABLE,
    PGQUEUER_ENTRYPOINT,
    PROCRASTINATE_TASK,
    procrastinate_app,
)

STYLES_PER_BATCH = 10
USERS = 100


class System:
    """How to install a system, fill its queue, and read its progress."""

    name = ""
    done_sql = ""  # how many jobs have completed
    last_sql = ""  # the server time of the last completion
    tables: tuple[str, ...] = ()

    def install(self, url: str) -> None:
        raise NotImplementedError

    def load(self, url: str, items: int) -> None:
        raise NotImplementedError

    def check(self, conn: Connection, items: int) -> None:
        """Raise unless every job ran exactly once."""


class Portraitkit(System):
    name = "portraitkit"
    done_sql = "select sum(completed_count) from public.generation_batches"
    last_sql = "select max(finished_at) from public.generations"
    tables = ("public.generations", "public.generation_batches")

    def install(self, url: str) -> None:
        from portraitkit.database.migrations import Migrator

        Migrator(url).migrate()
        with open_connection(url, autocommit=True) as conn:
            make_users(conn, USERS, credits=1_000_000_000, label="queue")

    def load(self, url: str, items: int) -> None:
        """Batches of 10 pending items, spread over the users, as the superuser in bulk,
        with the fair tags the queue gives them (round-robin per user): a claim takes the
        next item of many users, so it touches many batches, as a busy queue's claims do."""
        batches = items // STYLES_PER_BATCH
        with open_connection(url) as conn:
            users = [r[0] for r in conn.execute("select id from public.profiles order by id")]
            per_user = {
                u: batches // len(users) + (n < batches % len(users)) for n, u in enumerate(users)
            }
            load_batches(conn, per_user, STYLES_PER_BATCH, mix={"pending": 100})
            conn.commit()

    def check(self, conn: Connection, items: int) -> None:
        done, twice, unfinished = conn.execute(
            "select count(*) filter (where status = 'completed'),"
            "       count(*) filter (where attempts <> 1),"
            "       (select count(*) from public.generation_batches"
            "         where status <> 'completed' or completed_count <> total_count)"
            "  from public.generations"
        ).fetchone()
        if done != items or twice or unfinished:
            raise RuntimeError(
                f"portraitkit: {done}/{items} completed, {twice} claimed twice, "
                f"{unfinished} batches not completed"
            )


class Procrastinate(System):
    name = "procrastinate"
    done_sql = "select count(*) from procrastinate_jobs where status = 'succeeded'"
    last_sql = "select max(at) from procrastinate_events where type = 'succeeded'"
    tables = ("procrastinate_jobs", "procrastinate_events")

    def install(self, url: str) -> None:
        async def apply() -> None:  # what `procrastinate schema --apply` runs
            app = procrastinate_app(url)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())

    def load(self, url: str, items: int) -> None:
        async def defer() -> None:
            app = procrastinate_app(url)
            async with app.open_async():
                task = app.tasks[PROCRASTINATE_TASK]
                for start in range(0, items, 5000):
                    await task.batch_defer_async(*({} for _ in range(min(5000, items - start))))

        asyncio.run(defer())

    def check(self, conn: Connection, items: int) -> None:
        done, twice = conn.execute(
            "select (select count(*) from procrastinate_jobs where status = 'succeeded'),"
            "       (select count(*) from (select job_id from procrastinate_events"
            "         where type = 'started' group by job_id having count(*) > 1) t)"
        ).fetchone()
        if done != items or twice:
            raise RuntimeError(f"procrastinate: {done}/{items} succeeded, {twice} started twice")


class Pgqueuer(System):
    name = "pgqueuer"
    done_sql = "select count(*) from pgqueuer_log where status = 'successful'"
    last_sql = "select max(created) from pgqueuer_log where status = 'successful'"
    tables = ("pgqueuer", "pgqueuer_log")

    def install(self, url: str) -> None:
        pgq = Path(sys.executable).with_name("pgq")
        subprocess.run(
            [str(pgq), "--pg-dsn", as_uri(url), "install"], check=True, capture_output=True
        )

    def load(self, url: str, items: int) -> None:
        async def enqueue() -> None:
            import asyncpg
            from pgqueuer import Queries
            from pgqueuer.db import AsyncpgDriver

            connection = await asyncpg.connect(dsn=as_uri(url))
            try:
                await Queries(AsyncpgDriver(connection)).enqueue(
                    [PGQUEUER_ENTRYPOINT] * items, [None] * items, [0] * items
                )
            finally:
                await connection.close()

        asyncio.run(enqueue())

    def check(self, conn: Connection, items: int) -> None:
        done, twice = conn.execute(
            "select count(*), count(*) - count(distinct job_id) from pgqueuer_log"
            " where status = 'successful'"
        ).fetchone()
        if done != items or twice:
            raise RuntimeError(f"pgqueuer: {done}/{items} successful, {twice} twice")


class Ceiling(System):
    name = "ceiling"
    done_sql = f"select count(*) from {CEILING_TABLE} where status = 'completed'"
    last_sql = f"select max(finished_at) from {CEILING_TABLE}"
    tables = (CEILING_TABLE,)

    def install(self, url: str) -> None:
        with open_connection(url, autocommit=True) as conn:
            conn.execute(CEILING_SCHEMA)

    def load(self, url: str, items: int) -> None:
        with open_connection(url, autocommit=True) as conn:
            conn.execute(
                f"insert into {CEILING_TABLE} (payload)"
                " select jsonb_build_object('n', i) from generate_series(1, %s) i",
                (items,),
            )

    def check(self, conn: Connection, items: int) -> None:
        (done,) = conn.execute(self.done_sql).fetchone()
        if done != items:
            raise RuntimeError(f"ceiling: {done}/{items} completed")


SYSTEMS: dict[str, System] = {
    s.name: s for s in (Portraitkit(), Procrastinate(), Pgqueuer(), Ceiling())
}


def as_uri(conninfo: str) -> str:
    """A postgresql:// URI, for clients that take no key=value strings (asyncpg, pgq)."""
    p = psycopg.conninfo.conninfo_to_dict(conninfo)
    user, password = quote(str(p["user"]), safe=""), quote(str(p.get("password", "")), safe="")
    return f"postgresql://{user}:{password}@{p['host']}:{p['port']}/{p['dbname']}"


@contextmanager
def templates(server_url: str, systems: set[str]) -> Iterator[dict[str, str]]:
    """A template database per system, its schema installed by its own installer."""
    with ExitStack() as stack:
        names = {}
        for name in sorted(systems):
            url = stack.enter_context(scratch_database(server_url, f"tpl_{name}", migrate=False))
            SYSTEMS[name].install(url)
            names[name] = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        yield names
