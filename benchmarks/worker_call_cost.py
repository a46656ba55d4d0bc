"""Where an item's database time goes: the worker's two calls, with parts of the triggers off.

The worker's throughput table (worker_throughput.py) says how much server CPU an item
costs; this says where. One connection claims `--per-call` items with `claim_generations`
and completes them with `complete_generations`, the way the worker does (service role,
one transaction per call), until the queue is empty, from a queue of `--items` pending
items of 100 users in 10-item batches. The figure is the server backend's CPU per item for
each call (/proc/<pid>/schedstat of the connection's backend: no waiting, no client).

The baseline is the schema as it is. Each other row runs the same on a fresh copy with
one part of what the triggers do switched off, so the difference is that part's cost:
the batch counters and refunds (`private.apply_generation_changes`), the doorbell for
batch watchers (`generation_batches_notify_updates`), the doorbell for idle workers
(`generations_notify_updates`). None of these may be switched off for real: the contract
needs each of them (docs/contract.md).

    .venv/bin/python benchmarks/worker_call_cost.py [--quick] [--json] [--database-url URL]
        [--items N] [--per-call N]
"""

from __future__ import annotations

import statistics
from typing import Any

from _common import (
    BackendCpu,
    Connection,
    bench_server,
    emit,
    load_batches,
    log,
    make_users,
    open_connection,
    parser,
    ratio,
    scratch_database,
    server_facts,
)
from rich.table import Table

USERS = 100
STYLES_PER_BATCH = 10
VARIANTS: dict[str, tuple[str, str]] = {
    "as_is": ("as migrated (baseline)", ""),
    "no_counters": (
        "without the batch counters and refunds",
        "create or replace function private.apply_generation_changes("
        "changes private.generation_change[]) returns void language plpgsql"
        " set search_path = '' as $$ begin end $$",
    ),
    "no_batch_notify": (
        "without the batch watchers' doorbell",
        "alter table public.generation_batches disable trigger generation_batches_notify_updates",
    ),
    "no_worker_notify": (
        "without the idle workers' doorbell",
        "alter table public.generations disable trigger generations_notify_updates",
    ),
}


def measure(server_url: str, setup: str, items: int, per_call: int) -> dict[str, float]:
    """Median backend CPU per item of a claim and of a completion, over the whole queue."""
    with scratch_database(server_url, "call_cost") as url, open_connection(url) as conn:
        conn.autocommit = True
        make_users(conn, USERS, credits=1_000_000_000, label="cost")
        users = [r[0] for r in conn.execute("select id from public.profiles order by id")]
        batches = items // STYLES_PER_BATCH
        per_user = {u: batches // USERS + (n < batches % USERS) for n, u in enumerate(users)}
        load_batches(conn, per_user, STYLES_PER_BATCH, mix={"pending": 100})
        if setup:
            conn.execute(setup)
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")
        conn.execute("set role service_role")
        cpu = BackendCpu(conn)
        claims: list[float] = []
        completions: list[float] = []
        while True:
            started = cpu.seconds()
            rows = claim(conn, per_call)
            claimed = cpu.seconds()
            if not rows:
                break
            complete(conn, rows)
            claims.append((claimed - started) / len(rows))
            completions.append((cpu.seconds() - claimed) / len(rows))
        return {
            "claim_us": statistics.median(claims) * 1e6,
            "complete_us": statistics.median(completions) * 1e6,
            "calls": len(claims),
        }


def claim(conn: Connection, per_call: int) -> list[Any]:
    return conn.execute(
        "select id, user_id, batch_id, attempts from public.claim_generations('bench', %s, 600)",
        (per_call,),
    ).fetchall()


def complete(conn: Connection, rows: list[Any]) -> None:
    conn.execute(
        "select public.complete_generations('bench', %s::uuid[], %s::text[], %s::int[])",
        (
            [r[0] for r in rows],
            [f"{r[1]}/{r[2]}/{r[0]}-{r[3]}.png" for r in rows],
            [r[3] for r in rows],
        ),
    )


def render(results: dict[str, Any], facts: dict[str, Any], items: int, per_call: int) -> Table:
    base = results["as_is"]
    base_total = base["claim_us"] + base["complete_us"]
    table = Table(
        title=f"Server CPU per item: claim and complete {per_call} at a time, {items:,} items",
        caption=(
            "Median over the calls of the backend's CPU per item (/proc schedstat). "
            "Each row a fresh database; a row's saving against the baseline is what that "
            f"part costs. PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs, synchronous_commit={facts['synchronous_commit']}."
        ),
    )
    for column in ("schema", "claim", "complete", "per item", "vs baseline", "that part"):
        table.add_column(column, justify="left" if column == "schema" else "right")
    for key, (label, _setup) in VARIANTS.items():
        r = results[key]
        total = r["claim_us"] + r["complete_us"]
        table.add_row(
            label,
            f"{r['claim_us']:.1f} µs",
            f"{r['complete_us']:.1f} µs",
            f"{total:.1f} µs",
            f"{ratio(total, base_total):.2f}",
            "-" if key == "as_is" else f"{base_total - total:.1f} µs",
        )
    return table


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, help="pending items (default 20,000; 4,000 with --quick)")
    p.add_argument("--per-call", type=int, default=400, help="items per claim (default 400)")
    args = p.parse_args()
    items = args.items or (4_000 if args.quick else 20_000)
    results: dict[str, Any] = {}
    with bench_server(args.database_url, "call-cost") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        for key, (label, setup) in VARIANTS.items():
            results[key] = measure(server_url, setup, items, args.per_call)
            log.print(
                f"{label}: claim {results[key]['claim_us']:.1f} µs,"
                f" complete {results[key]['complete_us']:.1f} µs per item"
            )
    emit(args, [render(results, facts, items, args.per_call)], {"facts": facts, **results})


if __name__ == "__main__":
    main()
