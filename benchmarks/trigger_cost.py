"""What the status trigger costs per status change, in a batch of 10 and of 1,000 items.

The counters trigger must be O(1) per change: a change in a batch of 1,000 should cost
the same as in a batch of 10 (target ratio <= 1.2). Every change is one single-row
UPDATE in its own transaction, pending -> processing -> completed, through two paths:

- plain UPDATE as the superuser: the trigger's cost with nothing else around it;
- the worker's functions as service_role (claim_generations with max_items 1, then
  complete_generation), each call its own transaction as PostgREST runs it.

Each path also runs with the table's triggers off for the session
(session_replication_role = replica) as the baseline, so the trigger's own cost is the
difference. Configurations are interleaved over several rounds so drift hits all alike.

Commits are not flushed (synchronous_commit = off for the session) unless --durable:
a ~0.2 ms fsync per commit would otherwise drown the microseconds measured here.

    .venv/bin/python benchmarks/trigger_cost.py [--quick] [--durable] [--json]
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from _common import (
    SERVICE_CLAIMS,
    BackendCpu,
    Connection,
    Samples,
    bench_database,
    emit,
    log,
    make_users,
    open_connection,
    parser,
    ratio,
    scalar,
    server_facts,
    verdict,
)
from rich.table import Table

from portraitkit.database import rpc

SIZES = (10, 1000)
PATHS = ("update", "function")
PATH_LABELS = {
    "update": "plain UPDATE, superuser",
    "function": "worker RPCs, service_role",
}
TARGET_RATIO = 1.2
# Items wait far in the future until their round of the function path brings them forward,
# so claim_generations only ever sees the items being measured.
PARKED = "2100-01-01"
DUE = "2000-01-01"
WORKER = "bench-worker"


@dataclass
class Config:
    """One measured combination, with the items it will change, round by round."""

    path: str
    triggers: bool
    size: int
    batches: list[uuid.UUID] = field(default_factory=list)
    rounds: list[list[uuid.UUID]] = field(default_factory=list)
    samples: Samples = field(default_factory=Samples)
    server_cpu: float = 0.0  # seconds the backend spent on a CPU for these changes

    @property
    def key(self) -> str:
        return f"{self.path}/{'on' if self.triggers else 'off'}/{self.size}"


def build_batches(admin: Connection, user: uuid.UUID, size: int, count: int) -> list[uuid.UUID]:
    """`count` batches of `size` pending items, in two statements; the trigger counts them."""
    batch_ids = [
        row[0]
        for row in admin.execute(
            "insert into public.generation_batches (user_id, original_image_url, credits_charged)"
            " select %s, 'bench/source.png', 0 from generate_series(1, %s)"
            " returning id",
            (user, count),
        ).fetchall()
    ]
    admin.execute(
        """
        with s as (select key, credit_cost, (row_number() over (order by key) - 1)::int as k
                     from public.styles)
        insert into public.generations
          (user_id, batch_id, style_key, position, credit_cost, max_attempts, queued_at, run_after)
        select %(user)s, b.id, s.key, p, s.credit_cost, 3, %(parked)s, %(parked)s
          from unnest(%(batches)s::uuid[]) as b(id)
         cross join generate_series(1, %(size)s) p
          join s on s.k = (p - 1) %% (select count(*) from public.styles)
        """,
        {"user": user, "batches": batch_ids, "size": size, "parked": PARKED},
    )
    return batch_ids


def prepare(admin: Connection, items_per_config: int, rounds: int) -> list[Config]:
    """Every configuration gets batches of its own, so none changes another's rows."""
    (user,) = make_users(admin, 1, label="trigger")
    configs = []
    for path in PATHS:
        for triggers in (False, True):
            for size in SIZES:
                config = Config(path, triggers, size)
                count = -(-items_per_config // size)  # enough batches for the items
                batches = config.batches = build_batches(admin, user, size, count)
                items = [
                    row[0]
                    for row in admin.execute(
                        "select id from public.generations where batch_id = any(%s)"
                        " order by batch_id, position limit %s",
                        (batches, items_per_config),
                    ).fetchall()
                ]
                step = len(items) // rounds
                config.rounds = [items[i * step : (i + 1) * step] for i in range(rounds)]
                configs.append(config)
    admin.execute("vacuum analyze public.generations, public.generation_batches")
    return configs


def run_plain_updates(conn: Connection, config: Config, items: list[uuid.UUID]) -> None:
    """Two single-row UPDATEs per item, each its own (autocommit) transaction."""
    for item in items:
        config.samples.time(
            lambda item=item: conn.execute(
                "update public.generations set status = 'processing', attempts = attempts + 1,"
                " started_at = now(), updated_at = now() where id = %s",
                (item,),
            )
        )
        config.samples.time(
            lambda item=item: conn.execute(
                "update public.generations set status = 'completed', finished_at = now(),"
                " generated_image_url = 'bench/' || id || '.png', updated_at = now()"
                " where id = %s",
                (item,),
            )
        )


def run_worker_calls(
    conn: Connection, admin: Connection, config: Config, items: list[uuid.UUID], cpu: BackendCpu
) -> None:
    """Claim one item, complete it: two RPCs per item, as a worker makes them."""
    admin.execute(
        "update public.generations set queued_at = %s, run_after = %s where id = any(%s)",
        (DUE, DUE, items),
    )
    # No dead queue entries from earlier rounds.
    admin.execute("vacuum public.generations, private.generation_queue")
    before = cpu.seconds()
    for _ in items:
        claimed = config.samples.time(
            lambda: rpc.call(
                conn,
                "claim_generations",
                {"worker_id": WORKER, "max_items": 1},
                claims=SERVICE_CLAIMS,
            )
        )
        if len(claimed) != 1:
            raise RuntimeError(f"claim_generations returned {len(claimed)} items, expected 1")
        item, path = claimed[0]["id"], f"{claimed[0]['user_id']}/bench/{claimed[0]['id']}.png"
        accepted = config.samples.time(
            lambda item=item, path=path: rpc.call(
                conn,
                "complete_generation",
                {"worker_id": WORKER, "generation_id": item, "image_path": path},
                claims=SERVICE_CLAIMS,
            )
        )
        if not scalar(accepted, "complete_generation"):
            raise RuntimeError(f"complete_generation refused {item}")
        if not config.triggers:
            # The queue table is kept by the triggers; with them off, by hand, untimed.
            admin.execute("delete from private.generation_queue where id = %s", (item,))
    config.server_cpu += cpu.seconds() - before


def measure(url: str, configs: list[Config], rounds: int, durable: bool) -> bool:
    """Run every configuration's rounds, interleaved; True when server CPU was measured."""
    admin = open_connection(url, autocommit=True)
    sessions = {}
    for triggers in (False, True):
        conn = open_connection(url, autocommit=True)
        if not triggers:
            conn.execute("set session_replication_role = replica")
        if not durable:
            conn.execute("set synchronous_commit = off")
        sessions[triggers] = (conn, BackendCpu(conn))
    # Warm caches and plans on throwaway batches before anything counts.
    warm = prepare(admin, 40, 1)
    for config in warm:
        run_one(sessions[config.triggers], admin, config, config.rounds[0])
    for round_no in range(rounds):
        log.print(f"[dim]round {round_no + 1}/{rounds}[/]")
        for config in configs:
            run_one(sessions[config.triggers], admin, config, config.rounds[round_no])
    cpu_measured = all(cpu.available for _conn, cpu in sessions.values())
    for conn, _cpu in sessions.values():
        conn.close()
    admin.close()
    return cpu_measured


def run_one(
    session: tuple[Connection, BackendCpu],
    admin: Connection,
    config: Config,
    items: list[uuid.UUID],
) -> None:
    conn, cpu = session
    if config.path == "update":
        before = cpu.seconds()
        run_plain_updates(conn, config, items)
        config.server_cpu += cpu.seconds() - before
    else:
        # Autocommit off: rpc.call opens one transaction per call, as PostgREST does.
        conn.autocommit = False
        try:
            run_worker_calls(conn, admin, config, items, cpu)
        finally:
            conn.autocommit = True


def check_counters(url: str, configs: list[Config]) -> None:
    """With triggers on, every measured batch's counters must still match its items."""
    batches = [b for c in configs if c.triggers for b in c.batches]
    with open_connection(url, autocommit=True) as conn:
        wrong = conn.execute(
            """
            select count(*)
              from public.generation_batches b
              join lateral (
                select count(*) filter (where g.status = 'pending') as pending,
                       count(*) filter (where g.status = 'processing') as processing,
                       count(*) filter (where g.status = 'completed') as completed
                  from public.generations g where g.batch_id = b.id) g on true
             where b.id = any(%s)
               and (b.pending_count, b.processing_count, b.completed_count)
                   <> (g.pending, g.processing, g.completed)
            """,
            (batches,),
        ).fetchone()[0]
    if wrong:
        raise RuntimeError(f"{wrong} batches have counters that disagree with their items")


def results_of(configs: list[Config], cpu_measured: bool) -> dict[str, Any]:
    by_key = {c.key: c for c in configs}
    out: dict[str, Any] = {"configs": {}, "paths": {}}
    for c in configs:
        out["configs"][c.key] = {
            "changes": c.samples.n,
            "median_us": c.samples.median() * 1e6,
            "mean_us": c.samples.mean() * 1e6,
            "p95_us": c.samples.p95() * 1e6,
            "server_cpu_us": c.server_cpu / c.samples.n * 1e6 if cpu_measured else None,
        }
    metrics = ["median_us", "server_cpu_us"] if cpu_measured else ["median_us"]
    for path in PATHS:
        summary: dict[str, Any] = {}
        for metric in metrics:
            on = {s: out["configs"][by_key[f"{path}/on/{s}"].key][metric] for s in SIZES}
            off = {s: out["configs"][by_key[f"{path}/off/{s}"].key][metric] for s in SIZES}
            own = {s: on[s] - off[s] for s in SIZES}
            summary[metric] = {
                "triggers_off": off,
                "triggers_on": on,
                "trigger_own": own,
                "size_ratio_off": ratio(off[1000], off[10]),
                "size_ratio_on": ratio(on[1000], on[10]),
                "size_ratio_trigger_own": ratio(own[1000], own[10]),
                "on_vs_off": {s: ratio(on[s], off[s]) for s in SIZES},
            }
        out["paths"][path] = summary
    return out


def render(results: dict[str, Any], facts: dict[str, Any], durable: bool) -> Table:
    changes = min(c["changes"] for c in results["configs"].values())
    cpu = results["cpu_measured"]
    commit = "durable commits" if durable else "synchronous_commit=off"
    table = Table(
        title="Status trigger: cost per status change (µs; one single-row change per transaction)",
        caption=f"{changes}+ changes per cell, pending→processing→completed, configurations "
        f"interleaved; PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs, {commit}. "
        "wall = median round trip seen by the client; server CPU = the backend's CPU time "
        "per change (steady on a busy machine). Baseline: the same path with triggers off. "
        f"Target: 1,000/10 ≤ {TARGET_RATIO}.",
    )
    table.add_column("path")
    table.add_column("triggers")
    metrics = [("median_us", "wall")] + ([("server_cpu_us", "server CPU")] if cpu else [])
    for size in SIZES:
        for _metric, label in metrics:
            table.add_column(f"{size:,}-item batch\n{label}", justify="right")
    for _metric, label in metrics:
        table.add_column(f"1,000 / 10\n{label}", justify="right")
    table.add_column("on / off\n(10 | 1,000)", justify="right")
    for path in PATHS:
        p = {metric: results["paths"][path][metric] for metric, _label in metrics}
        main = p["median_us"]

        def cells(kind: str, p: dict[str, Any] = p) -> list[str]:
            return [f"{p[m][kind][size]:.0f}" for size in SIZES for m, _l in metrics]

        def ratios(kind: str, target: bool = False, p: dict[str, Any] = p) -> list[str]:
            out = []
            for m, _l in metrics:
                value = p[m][f"size_ratio_{kind}"]
                mark = f" {verdict(value <= TARGET_RATIO)}" if target else ""
                out.append(f"{value:.2f}{mark}")
            return out

        table.add_row(
            PATH_LABELS[path], "off (baseline)", *cells("triggers_off"), *ratios("off"), ""
        )
        table.add_row(
            "",
            "on",
            *cells("triggers_on"),
            *ratios("on", target=True),
            f"{main['on_vs_off'][10]:.2f} | {main['on_vs_off'][1000]:.2f}",
        )
        table.add_row(
            "",
            "[bold]trigger's own cost[/]",
            *cells("trigger_own"),
            *ratios("trigger_own"),
            "",
            end_section=True,
        )
    return table


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--durable", action="store_true", help="flush every commit (fsync)")
    args = p.parse_args()
    items, rounds = (200, 2) if args.quick else (1000, 4)
    with bench_database(args.database_url, "trigger") as url:
        with open_connection(url, autocommit=True) as admin:
            facts = server_facts(admin)
            log.print(f"[dim]building batches: {items} items per configuration[/]")
            configs = prepare(admin, items, rounds)
        cpu_measured = measure(url, configs, rounds, args.durable)
        check_counters(url, configs)
    results = results_of(configs, cpu_measured)
    results["cpu_measured"] = cpu_measured
    results["server"] = facts
    results["durable"] = args.durable
    emit(args, [render(results, facts, args.durable)], results)


if __name__ == "__main__":
    main()
