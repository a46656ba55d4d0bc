"""The gallery's page read: list_batches against the view and the seed app's aggregate.

100,000 batches of 10 items (1,000,000 generations) over 1,000 users, one of them heavy
with 20,000 batches, statuses mixed. For a typical and for the heavy user, the first page
and a deep page (reached with the cursor, three quarters down the gallery) are read as
that user, each read its own transaction with role and claims as PostgREST sets them:

- `list_batches(page_size => 20)`: the contract's keyset page over the counters;
- `batch_generations_view`, 20 rows newest first (RLS applies);
- the seed app's original shape of that view, `generation_batches left join generations
  group by b.id` with `json_agg`, run as the user: the naive baseline.

Readers take turns call by call, so drift on a shared machine hits all alike. Targets for
list_batches: p95 under 5 ms, and at least 20x faster than the view.

    .venv/bin/python benchmarks/gallery_page.py [--quick] [--json]
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from _common import (
    BackendCpu,
    Connection,
    Samples,
    as_claims,
    bench_database,
    check_counters_match,
    emit,
    load_batches,
    log,
    make_users,
    open_connection,
    parser,
    ratio,
    scalar,
    server_facts,
    user_claims,
    verdict,
)
from rich.table import Table

from portraitkit.database import rpc

PAGE = 20
TARGET_P95_MS = 5.0
TARGET_VS_VIEW = 20.0
# Supabase's default statement_timeout for the `authenticated` role: a read that takes
# longer fails there, so the baselines stop there too.
STATEMENT_TIMEOUT = "8s"

VIEW_PAGE = """
select * from public.batch_generations_view
 {where}
 order by created_at desc, batch_id desc
 limit 20
"""
VIEW_AFTER = "where (created_at, batch_id) < (%s::timestamptz, %s::uuid)"

# The seed app's view before this project: every item of every batch joined and grouped,
# then sorted, before the LIMIT can apply.
SEED_AGGREGATE_PAGE = """
select b.id as batch_id, b.user_id, b.original_image_url, b.status as batch_status,
       b.total_count, b.completed_count, b.created_at, b.updated_at,
       coalesce(json_agg(json_build_object(
                  'id', g.id,
                  'style_key', g.style_key,
                  'generated_image_url', g.generated_image_url,
                  'status', g.status,
                  'created_at', g.created_at) order by g.position)
                filter (where g.id is not null), '[]'::json) as generations
  from public.generation_batches b
  left join public.generations g on g.batch_id = b.id
 {where}
 group by b.id
 order by b.created_at desc, b.id desc
 limit 20
"""
SEED_AFTER = "where (b.created_at, b.id) < (%s::timestamptz, %s::uuid)"

READERS = ("list_batches", "view", "seed_aggregate")
READER_LABELS = {
    "list_batches": "list_batches (RPC)",
    "view": "batch_generations_view",
    "seed_aggregate": "seed app's aggregate (baseline)",
}


@dataclass
class Cell:
    """One reader on one page of one user's gallery."""

    reader: str
    max_calls: int
    budget_seconds: float
    wall: Samples = field(default_factory=Samples)
    cpu: Samples = field(default_factory=Samples)
    timed_out: int = 0

    def wants_more(self) -> bool:
        """Baselines stop at their call count, their time budget, or their first timeout."""
        return (
            self.wall.n < self.max_calls
            and sum(self.wall.values) < self.budget_seconds
            and not self.timed_out
        )


@dataclass
class Page:
    user: str
    name: str
    claims: dict[str, Any]
    cursor: str | None
    cells: dict[str, Cell] = field(default_factory=dict)
    ids: list[str] | None = None  # the page's batch ids, as list_batches returned them


def load(admin: Connection, users: int, batches: int, heavy: int) -> dict[str, Any]:
    """Sign users up and load their galleries; returns who is who and what was loaded."""
    ids = make_users(admin, users, label="gallery")
    heavy_user, others = ids[0], ids[1:]
    share, extra = divmod(batches - heavy, len(others))
    counts = {heavy_user: heavy} | {
        user: share + (1 if i < extra else 0) for i, user in enumerate(others)
    }
    started = time.perf_counter()
    load_batches(admin, counts, size=10)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    admin.execute("vacuum analyze public.generation_batches, public.generations")
    vacuumed = time.perf_counter() - started
    check_counters_match(admin)
    rows = admin.execute(
        "select (select count(*) from public.generation_batches),"
        " (select count(*) from public.generations)"
    ).fetchone()
    log.print(
        f"[dim]loaded {rows[0]:,} batches / {rows[1]:,} generations in {loaded:.1f} s,"
        f" vacuum analyze {vacuumed:.1f} s[/]"
    )
    return {
        "typical_user": others[0],
        "typical_batches": counts[others[0]],
        "heavy_user": heavy_user,
        "heavy_batches": heavy,
        "batches": rows[0],
        "generations": rows[1],
        "load_seconds": loaded,
        "vacuum_analyze_seconds": vacuumed,
    }


def list_batches(conn: Connection, claims: dict[str, Any], after: str | None) -> list[str]:
    args: dict[str, Any] = {"page_size": PAGE}
    if after is not None:
        args["after"] = after
    page = scalar(rpc.call(conn, "list_batches", args, claims=claims), "list_batches")
    return [item["id"] for item in page["items"]]


def read_as(
    conn: Connection, claims: dict[str, Any], query: str, after_clause: str, after: str | None
) -> list[str]:
    """One request: role and claims, the query, commit (what PostgREST does for a GET)."""
    params: tuple[Any, ...] = ()
    if after is not None:
        created_at, batch_id = after.split("|")
        params = (created_at, batch_id)
    with conn.transaction():
        as_claims(conn, claims)
        conn.execute("select set_config('statement_timeout', %s, true)", (STATEMENT_TIMEOUT,))
        rows = conn.execute(
            query.format(where=after_clause if after is not None else ""), params
        ).fetchall()
    return [str(row[0]) for row in rows]


def readers() -> dict[str, Callable[[Connection, dict[str, Any], str | None], list[str]]]:
    return {
        "list_batches": list_batches,
        "view": lambda c, claims, after: read_as(c, claims, VIEW_PAGE, VIEW_AFTER, after),
        "seed_aggregate": lambda c, claims, after: read_as(
            c, claims, SEED_AGGREGATE_PAGE, SEED_AFTER, after
        ),
    }


def deep_cursor(conn: Connection, claims: dict[str, Any], batches: int) -> tuple[str, int]:
    """Scroll with list_batches to three quarters down the gallery; the cursor there."""
    target = (batches * 3 // 4) // PAGE * PAGE
    after, seen = None, 0
    while seen < target:
        page = scalar(
            rpc.call(conn, "list_batches", {"page_size": PAGE, "after": after}, claims=claims),
            "list_batches",
        )
        after, seen = page["next_cursor"], seen + len(page["items"])
    assert after is not None
    return after, seen


def measure(url: str, data: dict[str, Any], plan: dict[str, Any]) -> list[Page]:
    """Every page from every reader, taking turns; baselines within their budgets."""
    conn = open_connection(url)
    cpu = BackendCpu(conn)
    pages = []
    for user in ("typical", "heavy"):
        claims = user_claims(data[f"{user}_user"])
        cursor, row = deep_cursor(conn, claims, data[f"{user}_batches"])
        pages.append(Page(user, "first page", claims, None))
        pages.append(Page(user, f"deep page (after row {row:,})", claims, cursor))
    read = readers()
    for page in pages:
        page.cells = {reader: Cell(reader, *plan[reader]) for reader in READERS}
        page.ids = read["list_batches"](conn, page.claims, page.cursor)  # and warms up
    calls = plan["list_batches"][0]
    for i in range(calls):
        if i % 50 == 0:
            log.print(f"[dim]round {i}/{calls}[/]")
        for page in pages:
            for reader in READERS:
                cell = page.cells[reader]
                if not cell.wants_more() or i % max(1, calls // cell.max_calls):
                    continue
                before = cpu.seconds()
                try:
                    ids = cell.wall.time(lambda r=reader, p=page: read[r](conn, p.claims, p.cursor))
                except psycopg.errors.QueryCanceled:
                    cell.timed_out += 1
                    log.print(
                        f"[yellow]{reader} timed out ({STATEMENT_TIMEOUT}) on the "
                        f"{page.user} user's {page.name}[/]"
                    )
                    continue
                cell.cpu.values.append(cpu.seconds() - before)
                if ids != page.ids:
                    raise RuntimeError(f"{reader} disagrees with list_batches on {page.name}")
    conn.close()
    return pages


def timeout_ms() -> float:
    return float(STATEMENT_TIMEOUT.removesuffix("s")) * 1e3


def results_of(pages: list[Page], cpu_measured: bool) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for page in pages:
        entry: dict[str, Any] = {"user": page.user, "page": page.name, "readers": {}}
        mine = page.cells["list_batches"].wall.median() * 1e3
        for reader, cell in page.cells.items():
            done = cell.wall.n > 0
            median = cell.wall.median() * 1e3 if done else None
            entry["readers"][reader] = {
                "calls": cell.wall.n,
                "timed_out": cell.timed_out,
                "median_ms": median,
                "p95_ms": cell.wall.p95() * 1e3 if done else None,
                "server_cpu_median_ms": cell.cpu.median() * 1e3 if done and cpu_measured else None,
                # How many times slower than list_batches; a lower bound after a timeout.
                "vs_list_batches": ratio(median if done else timeout_ms(), mine),
                "vs_list_batches_is_lower_bound": not done,
            }
        entry["p95_target_met"] = entry["readers"]["list_batches"]["p95_ms"] < TARGET_P95_MS
        entry["vs_view_target_met"] = entry["readers"]["view"]["vs_list_batches"] >= TARGET_VS_VIEW
        out.append(entry)
    return {"pages": out}


def render(results: dict[str, Any], data: dict[str, Any], facts: dict[str, Any]) -> Table:
    cpu = results["cpu_measured"]
    table = Table(
        title="Gallery page of 20 batches, read as the user (ms per request)",
        caption=f"{data['batches']:,} batches / {data['generations']:,} generations; typical "
        f"user {data['typical_batches']:,} batches, heavy user {data['heavy_batches']:,}. "
        "Each request: BEGIN, role + claims, the read, COMMIT; readers take turns. "
        "Baseline: the seed app's aggregate; baselines stop at their call count, a time "
        f"budget, or statement_timeout {STATEMENT_TIMEOUT} (Supabase's default for "
        f"authenticated). Targets: list_batches p95 < {TARGET_P95_MS:g} ms and ≥ "
        f"{TARGET_VS_VIEW:g}x faster than the view. PostgreSQL {facts['postgres']}, "
        f"{facts['cpus']} CPUs.",
    )
    for name in ("user", "page", "reader"):
        table.add_column(name)
    for name in ("calls", "median", "p95", *(["server CPU\nmedian"] if cpu else [])):
        table.add_column(name, justify="right")
    table.add_column("slower than\nlist_batches", justify="right")
    for entry in results["pages"]:
        for n, reader in enumerate(READERS):
            r = entry["readers"][reader]
            if r["median_ms"] is None:
                median, p95, server = f"> {timeout_ms():.0f}", "timed out", "-"
            else:
                median, p95 = f"{r['median_ms']:.2f}", f"{r['p95_ms']:.2f}"
                server = f"{r['server_cpu_median_ms']:.2f}" if cpu else ""
            slower = ("> " if r["vs_list_batches_is_lower_bound"] else "") + (
                f"{r['vs_list_batches']:.1f}x"
            )
            if reader == "list_batches":
                p95 += f" {verdict(entry['p95_target_met'])}"
            if reader == "view":
                slower += f" {verdict(entry['vs_view_target_met'])}"
            calls = str(r["calls"]) + (f" +{r['timed_out']} timed out" if r["timed_out"] else "")
            row = [
                entry["user"] if n == 0 else "",
                entry["page"] if n == 0 else "",
                READER_LABELS[reader],
                calls,
                median,
                p95,
                *([server] if cpu else []),
                slower,
            ]
            table.add_row(*row, end_section=n == len(READERS) - 1)
    return table


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    if args.quick:
        users, batches, heavy, budget = 100, 10_000, 2_000, 4.0
    else:
        users, batches, heavy, budget = 1_000, 100_000, 20_000, 10.0
    # Per reader: (calls at most, seconds of calls at most, per page).
    plan = {
        "list_batches": (200, float("inf")),
        "view": (200, budget),
        "seed_aggregate": (40, budget),
    }
    with bench_database(args.database_url, "gallery") as url:
        with open_connection(url, autocommit=True) as admin:
            facts = server_facts(admin)
            log.print(f"[dim]loading {batches:,} batches of 10 items for {users:,} users[/]")
            data = load(admin, users, batches, heavy)
            cpu_measured = BackendCpu(admin).available
        pages = measure(url, data, plan)
    results = results_of(pages, cpu_measured)
    results["cpu_measured"] = cpu_measured
    results["data"] = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in data.items()}
    results["server"] = facts
    emit(args, [render(results, data, facts)], results)


if __name__ == "__main__":
    main()
