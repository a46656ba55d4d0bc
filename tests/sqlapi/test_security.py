"""Who may do what: a matrix of roles against every table, the view and every function,
plus the Supabase linter's rules checked against the catalog."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from portraitkit import errors

TABLES = [
    "profiles",
    "credit_ledger",
    "styles",
    "generation_batches",
    "generations",
    "batch_generations_view",
]
USER_API = [
    "create_generation_batch",
    "list_batches",
    "get_batch",
    "cancel_batch",
    "retry_failed",
    "delete_batch",
    "batch_stats",
]
WORKER_API = [
    "claim_generations",
    "heartbeat_generations",
    "complete_generations",
    "complete_generation",
    "fail_generation",
    "release_generations",
    "recover_expired_leases",
    "grant_credits",
]


@pytest.fixture
def world(admin: Any, make_user: Any, service: Any) -> dict[str, Any]:
    """Alice and Bob each with one batch; one of Alice's items completed."""
    admin.execute(
        "update public.generations set status = 'cancelled' where status in ('pending', 'processing')"
    )
    alice, bob = make_user(credits=10), make_user(credits=10)
    a = alice.rpc(
        "create_generation_batch",
        style_keys=["poster", "noir"],
        source_image_path=f"{alice.user_id}/sources/a.png",
    )
    b = bob.rpc(
        "create_generation_batch",
        style_keys=["poster"],
        source_image_path=f"{bob.user_id}/sources/b.png",
    )
    item = service.rpc("claim_generations", worker_id="w", max_items=1)[0]
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=item["id"],
        image_path=f"{item['user_id']}/done.png",
    )
    return {"alice": alice, "bob": bob, "alice_batch": a, "bob_batch": b}


def _owner_column(table: str) -> str:
    return {"profiles": "id", "styles": "key"}.get(table, "user_id")


@pytest.mark.parametrize("table", TABLES)
def test_user_reads_only_own_rows(world: dict[str, Any], table: str) -> None:
    alice = world["alice"]
    rows = alice.query(f"select * from public.{table}")
    if table == "styles":
        assert rows and all(r["is_active"] for r in rows)
        return
    assert rows, f"alice should see her own {table}"
    assert {str(r[_owner_column(table)]) for r in rows} == {str(alice.user_id)}


@pytest.mark.parametrize("table", TABLES)
def test_anon_sees_nothing_but_active_styles(world: dict[str, Any], anon: Any, table: str) -> None:
    if table == "styles":
        assert len(anon.query("select * from public.styles")) >= 12
        return
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        anon.query(f"select * from public.{table}")


@pytest.mark.parametrize("table", TABLES)
def test_service_role_reads_everything(world: dict[str, Any], service: Any, table: str) -> None:
    owners = {str(r[_owner_column(table)]) for r in service.query(f"select * from public.{table}")}
    if table != "styles":
        assert {str(world["alice"].user_id), str(world["bob"].user_id)} <= owners


WRITES = {
    "profiles": [
        "update public.profiles set total_credits = 1000",
        "insert into public.profiles (id, starting_credits, total_credits) values (gen_random_uuid(), 1, 1)",
        "delete from public.profiles",
    ],
    "credit_ledger": [
        "insert into public.credit_ledger (user_id, kind, delta) select id, 'grant', 100 from public.profiles",
        "update public.credit_ledger set delta = 1000",
        "delete from public.credit_ledger",
    ],
    "styles": [
        "update public.styles set credit_cost = credit_cost + 1",
        "insert into public.styles (key, name, category, credit_cost, prompt_template) values ('x_x', 'x', 'x', 1, 'x')",
        "delete from public.styles",
    ],
    "generation_batches": [
        "update public.generation_batches set status = 'completed', completed_count = total_count",
        "insert into public.generation_batches (user_id, original_image_url) select id, 'x' from public.profiles",
        "delete from public.generation_batches",
    ],
    "generations": [
        "update public.generations set status = 'completed'",
        "insert into public.generations (user_id, batch_id, style_key, position, credit_cost, max_attempts)"
        " select user_id, id, 'poster', 99, 0, 1 from public.generation_batches",
        "delete from public.generations",
    ],
    "batch_generations_view": [
        "update public.batch_generations_view set total_count = 0",
        "delete from public.batch_generations_view",
    ],
}


# The service role curates the catalogue (new styles, costs, retiring one); deleting a
# style is refused even to it, since generations keep referring to their style.
CATALOGUE_CURATION = ("update public.styles", "insert into public.styles")


@pytest.mark.parametrize("who", ["anon", "alice", "service"])
@pytest.mark.parametrize("statement", [s for t in WRITES.values() for s in t])
def test_no_client_writes_tables_directly(
    world: dict[str, Any], anon: Any, service: Any, who: str, statement: str
) -> None:
    actor = {"anon": anon, "alice": world["alice"], "service": service}[who]
    if who == "service" and statement.startswith(CATALOGUE_CURATION):
        assert actor.query(statement)[0]["rowcount"] >= 1  # rolled back by query()
        return
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        actor.query(statement)


def test_user_may_rename_only_self(world: dict[str, Any]) -> None:
    alice = world["alice"]
    assert alice.query("update public.profiles set display_name = 'Al'")[0]["rowcount"] == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        alice.query("update public.profiles set total_credits = 99")


@pytest.mark.parametrize("function", USER_API)
def test_only_signed_in_users_call_the_user_api(admin: Any, function: str) -> None:
    can = admin.execute(
        "select has_function_privilege('anon', p.oid, 'execute') as anon,"
        "       has_function_privilege('authenticated', p.oid, 'execute') as authenticated"
        "  from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname = %s",
        (function,),
    ).fetchone()
    assert can == {"anon": False, "authenticated": True}


@pytest.mark.parametrize("function", WORKER_API)
@pytest.mark.parametrize("who", ["anon", "alice"])
def test_only_service_role_calls_the_worker_api(
    world: dict[str, Any], anon: Any, admin: Any, function: str, who: str
) -> None:
    role = "anon" if who == "anon" else "authenticated"
    rows = admin.execute(
        "select bool_or(has_function_privilege(%s, p.oid, 'execute')) as can"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'public' and p.proname = %s",
        (role, function),
    ).fetchone()
    assert rows["can"] is False
    assert (
        admin.execute(
            "select bool_and(has_function_privilege('service_role', p.oid, 'execute')) as can"
            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname = %s",
            (function,),
        ).fetchone()["can"]
        is True
    )


def test_user_calling_worker_function_is_not_allowed(world: dict[str, Any]) -> None:
    with pytest.raises(errors.NotAllowed) as caught:
        world["alice"].rpc("claim_generations", worker_id="me")
    assert caught.value.http_status == 403
    with pytest.raises(errors.NotAllowed):
        world["alice"].rpc("grant_credits", user_id=world["alice"].user_id, amount=100)


def test_users_never_see_each_others_batches_through_the_api(world: dict[str, Any]) -> None:
    alice, bob = world["alice"], world["bob"]
    assert [b["id"] for b in alice.rpc("list_batches")["items"]] == [str(world["alice_batch"])]
    assert [b["id"] for b in bob.rpc("list_batches")["items"]] == [str(world["bob_batch"])]
    assert bob.rpc("batch_stats")["batches"] == 1
    with pytest.raises(errors.BatchNotFound):
        bob.rpc("get_batch", batch_id=world["alice_batch"])


def test_private_schema_is_closed_to_clients(world: dict[str, Any], anon: Any) -> None:
    for actor in (anon, world["alice"]):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            actor.query("select * from private.settings")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            actor.query(
                "select private.apply_credit_change(%s, 'grant', 100)", (world["alice"].user_id,)
            )


def test_ledger_is_append_only_even_for_the_owner(world: dict[str, Any], admin: Any) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        admin.execute("update public.credit_ledger set delta = 5")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        admin.execute("delete from public.credit_ledger")


def count_rows(admin: Any, table: str, column: str, user: Any) -> int:
    query = f"select count(*) as n from public.{table} where {column} = %s"
    return int(admin.execute(query, (user,)).fetchone()["n"])


def test_deleting_a_user_removes_their_data_but_keeps_their_ledger(
    world: dict[str, Any], admin: Any
) -> None:
    bob = world["bob"].user_id
    ledger = count_rows(admin, "credit_ledger", "user_id", bob)
    assert ledger > 0
    admin.execute("delete from auth.users where id = %s", (bob,))
    for table, column in (
        ("profiles", "id"),
        ("generation_batches", "user_id"),
        ("generations", "user_id"),
    ):
        assert count_rows(admin, table, column, bob) == 0
    assert count_rows(admin, "credit_ledger", "user_id", bob) == ledger
    # Still append-only, for everyone: the account's deletion opened no way round it.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        admin.execute("delete from public.credit_ledger where user_id = %s", (bob,))


# --- the Supabase database linter's rules, checked against the catalog -----------------


def test_rls_is_enabled_on_every_public_table(admin: Any) -> None:
    assert (
        admin.execute(
            "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity"
        ).fetchall()
        == []
    )


def test_every_foreign_key_has_a_covering_index(admin: Any) -> None:
    missing = admin.execute(
        """
        select c.conrelid::regclass::text as tbl, c.conname
          from pg_constraint c
         where c.contype = 'f' and c.connamespace = 'public'::regnamespace
           and not exists (
             select from pg_index i
              where i.indrelid = c.conrelid
                and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)
        """
    ).fetchall()
    assert missing == []


def test_policies_wrap_auth_calls_in_a_select(admin: Any) -> None:
    rows = admin.execute(
        "select policyname, coalesce(qual, '') || coalesce(with_check, '') as expr from pg_policies"
        " where schemaname = 'public'"
    ).fetchall()
    assert rows
    for r in rows:
        if "auth.uid()" in r["expr"]:
            assert "SELECT auth.uid()" in r["expr"], r


def test_views_are_security_invoker(admin: Any) -> None:
    rows = admin.execute(
        "select relname, reloptions from pg_class where relkind = 'v'"
        " and relnamespace = 'public'::regnamespace"
    ).fetchall()
    assert rows and all("security_invoker=true" in (r["reloptions"] or []) for r in rows)


def test_functions_pin_search_path(admin: Any) -> None:
    rows = admin.execute(
        """
        select p.oid::regprocedure::text as fn, p.proconfig
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('public', 'private')
        """
    ).fetchall()
    assert rows
    assert [r["fn"] for r in rows if 'search_path=""' not in (r["proconfig"] or [])] == []


def test_definer_functions_are_not_executable_by_anon(admin: Any) -> None:
    rows = admin.execute(
        """
        select p.oid::regprocedure::text as fn
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('public', 'private') and p.prosecdef
           and has_function_privilege('anon', p.oid, 'execute')
        """
    ).fetchall()
    assert rows == []


def test_tables_are_in_the_realtime_publication(admin: Any) -> None:
    rows = admin.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
        " order by tablename"
    ).fetchall()
    assert [r["tablename"] for r in rows] == ["generation_batches", "generations"]


def test_sample_uuid_is_not_special(world: dict[str, Any]) -> None:
    """A random id is simply not found, never an internal error."""
    with pytest.raises(errors.BatchNotFound):
        world["alice"].rpc("cancel_batch", batch_id=uuid.uuid4())
