"""Arbitrary arguments to every user function, sent as a signed-in user the way the app would.

For every call, whatever the arguments: it succeeds, or it raises the typed error of a
documented code (never a bare SQLSTATE such as 22P02, 0A000 or XX000); the code is the
one the arguments call for; a refused call changes nothing, for the caller or anyone else;
a successful one changes only what it names; the ledger explains every balance and every
batch's counters count its items; another user's batch is never readable or changeable.

Each example's caller holds one batch in every state, beside a second user whose batches
never change: a newly signed-up caller, or the previous example's when its call changed
nothing (which that example checked), so no example depends on what earlier ones did and a
failure replays. Hypothesis runs derandomized with no example database: CI sees the same
examples every run and nothing is written into the repository.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from portraitkit.errors import PortraitkitError
from tests.invariants import counter_mismatches, queue_mismatches

from .conftest import Actor, ledger_balances

OK = "ok"
ID_FUNCTIONS = ["get_batch", "cancel_batch", "retry_failed", "delete_batch"]
BATCH_STATUSES = ["pending", "processing", "completed", "partial", "failed", "cancelled"]
DOCUMENTED_CODES = {
    "not_authenticated", "invalid_input", "empty_style_list", "too_many_styles",
    "duplicate_style", "unknown_style", "inactive_style", "prompt_too_long",
    "insufficient_credits", "idempotency_conflict", "batch_not_found", "batch_finished",
    "nothing_to_retry", "profile_not_found", "source_not_found",
}  # fmt: skip
MAX_STYLES, MAX_PROMPT, MAX_PATH, MAX_KEY = 20, 500, 1024, 200
INACTIVE_STYLE = "retired_style"

# The batches each user holds, one per state: (label, the states of its two items).
POOL = [
    ("pending", ("pending", "pending")),
    ("processing", ("processing", "pending")),
    ("completed", ("completed", "completed")),
    ("partial", ("completed", "failed")),
    ("failed", ("failed", "failed")),
    ("cancelled", ("cancelled", "cancelled")),
    ("completed_and_cancelled", ("completed", "cancelled")),
]
POOL_STYLES = ["pencil_sketch", "charcoal"]  # one credit each
POOL_COST = 2 * len(POOL)
REPEATABLE_KEY = "tap-1"  # the idempotency key the "pending" batch was created with
# What each id function does to the caller's own batch, by the batch's state.
OWN_OUTCOME = {
    "get_batch": dict.fromkeys((label for label, _ in POOL), OK),
    "delete_batch": dict.fromkeys((label for label, _ in POOL), OK),
    "cancel_batch": {
        label: OK if label in ("pending", "processing") else "batch_finished" for label, _ in POOL
    },
    "retry_failed": {
        label: OK if label in ("partial", "failed") else "nothing_to_retry" for label, _ in POOL
    },
}


@dataclass
class Owner:
    """A user and the pool of batches they hold."""

    uid: uuid.UUID
    batches: dict[str, uuid.UUID]
    generations: list[uuid.UUID]
    cursors: list[str] = field(default_factory=list)

    @property
    def label_of(self) -> dict[uuid.UUID, str]:
        return {batch_id: label for label, batch_id in self.batches.items()}


@dataclass
class World:
    url: str
    admin: psycopg.Connection[dict[str, Any]]
    caller: Actor  # one connection; its claims are switched to each example's user
    other: Owner
    active_styles: dict[str, int]  # key -> cost
    # Users whose pool is still as built, by leftover: a refused call or a read leaves
    # them so (each example checks it), and the next example may use them again.
    untouched: dict[int, Owner] = field(default_factory=dict)

    def user_with_pool(self, leftover: int) -> Owner:
        me = self.untouched.get(leftover) or self.sign_up(leftover)
        self.untouched[leftover] = me
        self.act_as(me.uid)
        return me

    def act_as(self, uid: uuid.UUID) -> None:
        self.caller.claims = {"sub": str(uid), "role": "authenticated", "aud": "authenticated"}
        self.caller.user_id = uid

    def sign_up(self, leftover: int) -> Owner:
        """A new user whose balance after building the pool is 6 + leftover."""
        uid = uuid.uuid4()
        self.admin.execute(
            "insert into auth.users (id, email) values (%s, %s)", (uid, f"{uid.hex[:8]}@x.test")
        )
        self.admin.execute(
            "update public.profiles set starting_credits = %s, total_credits = %s where id = %s",
            (POOL_COST + leftover, POOL_COST + leftover, uid),
        )
        self.act_as(uid)
        batches = {
            label: self.caller.rpc(
                "create_generation_batch",
                style_keys=POOL_STYLES,
                source_image_path=f"{uid}/source.png",
                idempotency_key=REPEATABLE_KEY if label == "pending" else None,
            )
            for label, _ in POOL
        }
        generations = self._shape(uid, batches)
        return Owner(uid, batches, generations)

    def _shape(self, uid: uuid.UUID, batches: dict[str, uuid.UUID]) -> list[uuid.UUID]:
        """Move each pool batch's items to their states (the trigger keeps counters and
        refunds exact), and check every batch got the status it is named for."""
        rows = self.admin.execute(
            "select id, batch_id, position from public.generations where user_id = %s", (uid,)
        ).fetchall()
        states = dict(POOL)
        labels = {batch_id: label for label, batch_id in batches.items()}
        target = {r["id"]: states[labels[r["batch_id"]]][r["position"] - 1] for r in rows}

        def ids(*wanted: str) -> list[uuid.UUID]:
            return [g for g, state in target.items() if state in wanted]

        self.admin.execute(
            "update public.generations set status = 'processing', attempts = 1,"
            " started_at = now(), lease_owner = 'property-test',"
            " lease_expires_at = now() + interval '1 hour' where id = any(%s)",
            (ids("processing", "completed", "failed"),),
        )
        self.admin.execute(
            "update public.generations set status = 'completed', finished_at = now(),"
            " generated_image_url = user_id || '/results/' || id || '.png',"
            " lease_owner = null, lease_expires_at = null where id = any(%s)",
            (ids("completed"),),
        )
        self.admin.execute(
            "update public.generations set status = 'failed', finished_at = now(),"
            " last_error = 'boom', lease_owner = null, lease_expires_at = null"
            " where id = any(%s)",
            (ids("failed"),),
        )
        self.admin.execute(
            "update public.generations set status = 'cancelled', finished_at = now()"
            " where id = any(%s)",
            (ids("cancelled"),),
        )
        got = self.admin.execute(
            "select id, status::text from public.generation_batches where user_id = %s", (uid,)
        ).fetchall()
        assert {r["id"]: r["status"] for r in got} == {
            b: label.split("_")[0] for label, b in batches.items()
        }
        return sorted(target)


@pytest.fixture(scope="module")
def world(db_url: str) -> Iterator[World]:
    """Module-wide setup (hypothesis runs many examples per test, so no per-test fixtures)."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as admin:
        # Thousands of small commits: not waiting for each WAL flush saves most of the time
        # (this module's database is a throwaway clone; crash safety is not under test).
        admin.execute(
            sql.SQL("alter database {} set synchronous_commit = off").format(
                sql.Identifier(admin.info.dbname)
            )
        )
        admin.execute("set synchronous_commit = off")
        admin.execute(
            "insert into public.styles (key, name, category, credit_cost, prompt_template,"
            " is_active) values (%s, 'Retired', 'Old', 1, '{prompt}', false)",
            (INACTIVE_STYLE,),
        )
        costs = {
            r["key"]: r["credit_cost"]
            for r in admin.execute("select key, credit_cost from public.styles where is_active")
        }
        caller = Actor(db_url, None)
        w = World(db_url, admin, caller, Owner(uuid.uuid4(), {}, []), costs)
        w.other = w.sign_up(leftover=100)
        w.other.cursors = cursors(caller)
        try:
            yield w
        finally:
            caller.close()


def cursors(caller: Actor) -> list[str]:
    """Real next_cursor values of the caller's gallery."""
    found = []
    for status in (None, "completed"):
        page = caller.rpc("list_batches", status=status, page_size=1)
        if page["next_cursor"]:
            found.append(page["next_cursor"])
    assert found
    return found


# --- strategies -------------------------------------------------------------------------

SPECIAL = [
    "", " ", "  ", "\t", "\n", "\r\n", "\x01", "\x1b", "\x7f", "\x85", "\u00a0", "\u1680",
    "\u2000", "\u2007", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u200b",
    "\ufeff", ".", "..", "/", "//", "\\", "%2e%2e", "'", '"', ";", "|", ",", "{", "}", "{}",
    "NULL", "null", "infinity", "-infinity", "epoch", "NaN", "1e309", "-1", "\U0001f4a5",
    "é", "ß", "İ",
]  # fmt: skip
# NUL cannot travel as text at all (psycopg and PostgREST both refuse it before any call).
ANY_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")
JUNK = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(ANY_CHAR, max_size=8)), max_size=6).map(
    "".join
)
LONG = st.sampled_from([MAX_KEY, MAX_KEY + 1, MAX_PROMPT, MAX_PROMPT + 1, MAX_PATH + 1, 5000])
SAFE_WORD = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)


def id_strategy(me: Owner, other: Owner) -> st.SearchStrategy[str | None]:
    known = [
        *me.batches.values(), *other.batches.values(), me.uid, other.uid,
        *me.generations[:2], *other.generations[:2],
        uuid.UUID("00000000-0000-4000-8000-000000000000"),
    ]  # fmt: skip
    u = st.sampled_from(known)
    variants = st.tuples(u, st.sampled_from(ID_VARIANTS)).map(lambda t: t[1](t[0]))
    return st.one_of(u.map(str), u.map(str), variants, st.none(), JUNK, LONG.map("7".__mul__))


ID_VARIANTS: list[Callable[[uuid.UUID], str]] = [
    lambda u: str(u).upper(), lambda u: f"{{{u}}}", lambda u: u.hex, lambda u: f" {u}",
    lambda u: f"{u} ", lambda u: f"{u}\u3000", lambda u: f"{u}\n", lambda u: str(u)[:-1],
    lambda u: f"{u}0", lambda u: str(u).replace("-", "_"), lambda u: f"{u}/../{u}",
    lambda u: f"{u},{u}", lambda u: f"{{{u},{u}}}", lambda u: f"{u}' or '1'='1",
]  # fmt: skip


def path_strategy(me: Owner, other: Owner) -> st.SearchStrategy[str | None]:
    segment = st.one_of(
        SAFE_WORD.map(lambda w: w + ".png"),
        SAFE_WORD,
        st.sampled_from([".", "..", "", " ", " a", "a ", "a b.png", "a\u3000b", "a\\b", "é.png"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), max_size=10),
    )
    prefix = st.sampled_from(
        [str(me.uid)] * 4
        + [str(other.uid), str(me.uid).upper(), "", f"/{me.uid}", f"{me.uid} ", "..", "public"]
    )
    built = st.builds(lambda p, s: p + "/" + "/".join(s), prefix, st.lists(segment, max_size=4))
    edge = st.sampled_from([MAX_PATH - 1, MAX_PATH]).map(
        lambda n: f"{me.uid}/" + "a" * (n - len(str(me.uid)))
    )
    return st.one_of(built, built, edge, st.none(), JUNK)


def style_keys_strategy(active: list[str]) -> st.SearchStrategy[Any]:
    element = st.one_of(
        st.sampled_from(active),
        st.sampled_from(active),
        st.sampled_from(
            [INACTIVE_STYLE, "", " ", "Poster", "poster ", "poster\u3000", "nope", "x" * 41]
        ),
        st.none(),
        JUNK,
    )
    flat = st.lists(element, max_size=MAX_STYLES + 3)
    valid = st.lists(st.sampled_from(active), unique=True, min_size=1, max_size=5)

    def grid(shape: tuple[int, int]) -> st.SearchStrategy[list[list[Any]]]:
        rows, cols = shape
        row = st.lists(element, min_size=cols, max_size=cols)
        return st.lists(row, min_size=rows, max_size=rows)

    two_d = st.tuples(st.integers(1, 3), st.integers(0, 3)).flatmap(grid)
    three_d = st.lists(
        st.lists(st.lists(st.sampled_from(active), min_size=1, max_size=1), min_size=1, max_size=1),
        min_size=1,
        max_size=2,
    )
    return st.one_of(valid, valid, flat, two_d, three_d, st.none())


def create_strategy(me: Owner, world: World) -> st.SearchStrategy[dict[str, Any]]:
    text = st.one_of(SAFE_WORD, st.text(ANY_CHAR, max_size=30), JUNK, st.none())
    return st.fixed_dictionaries(
        {
            "style_keys": style_keys_strategy(sorted(world.active_styles)),
            "source_image_path": path_strategy(me, world.other),
        },
        optional={
            "custom_prompt": st.one_of(text, LONG.map("p".__mul__)),
            "idempotency_key": st.one_of(text, st.just(REPEATABLE_KEY), LONG.map("k".__mul__)),
        },
    )


CURSOR_MUTATIONS: list[Callable[[str], str]] = [
    lambda c: c[:-1], lambda c: c + "x", lambda c: c.upper(), lambda c: c.replace("|", ""),
    lambda c: " " + c, lambda c: c + "\n", lambda c: c[::-1], lambda c: c + "|" + c,
    lambda c: c.replace("-", "+"), lambda c: "2024-01-01T00:00:00+00:00|" + c[-36:],
    lambda c: "infinity|ffffffff-ffff-ffff-ffff-ffffffffffff",
]  # fmt: skip


def cursor_mutations(me: Owner, other: Owner) -> list[str]:
    """Cursors that resemble real ones: whether they are accepted is the function's call."""
    return sorted({m(c) for c in me.cursors + other.cursors for m in CURSOR_MUTATIONS})


def list_strategy(me: Owner, other: Owner) -> st.SearchStrategy[dict[str, Any]]:
    real = st.sampled_from(me.cursors + other.cursors)
    mutated = st.sampled_from(cursor_mutations(me, other))
    status = st.one_of(
        st.none(), st.sampled_from(BATCH_STATUSES),
        st.sampled_from(BATCH_STATUSES).map(str.upper),
        st.sampled_from(BATCH_STATUSES).map(lambda s: s + " "),
        st.sampled_from(["running", "pending,failed", "{pending}", "pending'--"]), JUNK,
    )  # fmt: skip
    page_size = st.one_of(
        st.none(), st.integers(1, 100), st.integers(-(2**31), 2**31 - 1),
        st.sampled_from([0, 1, 100, 101, -1, 2**31 - 1, -(2**31)]),
    )  # fmt: skip
    return st.fixed_dictionaries(
        {},
        optional={
            "status": status,
            "page_size": page_size,
            "after": st.one_of(st.none(), real, mutated, JUNK),
        },
    )


def arguments(function: str, me: Owner, world: World) -> st.SearchStrategy[dict[str, Any]]:
    if function in ID_FUNCTIONS:
        return st.fixed_dictionaries({"batch_id": id_strategy(me, world.other)})
    if function == "list_batches":
        return list_strategy(me, world.other)
    if function == "create_generation_batch":
        return create_strategy(me, world)
    return st.just({})


# --- what the contract calls for ---------------------------------------------------------
# Each verdict is the set of outcomes the contract allows: OK or error codes.

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
SAFE_TEXT = re.compile(r"[A-Za-z0-9_-]+")
STYLE_KEY = re.compile(r"[a-z][a-z0-9_]{1,39}")


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


def is_blank_or_control(text: str) -> bool:
    """Blank (Unicode whitespace only, or empty) or holding a control character."""
    return text.strip() == "" or any(is_control(ch) for ch in text)


def expect_for_id(function: str, value: str | None, me: Owner, other: Owner) -> set[str]:
    if value is None:
        return {"invalid_input", "batch_not_found"}
    if CANONICAL_UUID.fullmatch(value):
        lenient = False
    elif (
        re.fullmatch(r"\{?[0-9A-Fa-f-]*\}?", value) and len(re.sub("[^0-9A-Fa-f]", "", value)) == 32
    ):
        lenient = True  # a spelling PostgreSQL's uuid input accepts; refusing it is fine too
    else:
        return {"invalid_input"}
    target = uuid.UUID(re.sub("[^0-9A-Fa-f]", "", value))
    label = me.label_of.get(target)
    outcome = OWN_OUTCOME[function][label] if label else "batch_not_found"
    return {outcome, "invalid_input"} if lenient else {outcome}


def path_refusals(path: Any, me: Owner) -> tuple[str, set[str]]:
    """('valid'|'unsure'|'invalid', codes that may refuse it)."""
    codes = {"invalid_input", "source_not_found"}
    if not isinstance(path, str) or len(path) > MAX_PATH or not path.startswith(f"{me.uid}/"):
        return "invalid", codes
    segments = path[len(str(me.uid)) + 1 :].split("/")
    if (
        any(s in ("", ".", "..") for s in segments)
        or "\\" in path
        or any(is_control(ch) or (ch.isspace() and ch != " ") for ch in path)
    ):
        return "invalid", codes
    if all(SAFE_SEGMENT.fullmatch(s) for s in segments):
        return "valid", codes
    return "unsure", codes


def style_refusals(keys: Any, world: World) -> set[str]:
    """The codes a style list calls for (empty when it is a valid list)."""
    if keys is None:
        return {"invalid_input", "empty_style_list"}
    if any(isinstance(k, list) for k in keys):
        return {"invalid_input", "empty_style_list"}  # 2-D and 3-D arrays ({{}} is empty)
    codes = set()
    if not keys:
        codes.add("empty_style_list")
    if len(keys) > MAX_STYLES:
        codes.add("too_many_styles")
    if None in keys:
        codes.add("invalid_input")
    named = [k for k in keys if k is not None]
    if len(set(named)) < len(named):
        codes.add("duplicate_style")
    for k in named:
        if k == INACTIVE_STYLE:
            codes.add("inactive_style")
        elif k not in world.active_styles:
            codes.add("unknown_style")
            if not STYLE_KEY.fullmatch(k):  # not even shaped like a key: malformed is fine too
                codes.add("invalid_input")
    return codes


def text_refusals(value: Any, limit: int, too_long: str) -> tuple[str, set[str]]:
    if value is None or (SAFE_TEXT.fullmatch(value) and len(value) <= limit):
        return "valid", set()
    if len(value) > limit:
        return "invalid", {too_long} | ({"invalid_input"} if is_blank_or_control(value) else set())
    return "unsure", {"invalid_input"}


def expect_for_create(args: dict[str, Any], me: Owner, world: World, balance: int) -> set[str]:
    keys = args["style_keys"]
    verdicts = [("invalid", c) for c in [style_refusals(keys, world)] if c]
    verdicts.append(path_refusals(args["source_image_path"], me))
    verdicts.append(text_refusals(args.get("custom_prompt"), MAX_PROMPT, "prompt_too_long"))
    key = args.get("idempotency_key")
    verdict, codes = text_refusals(key, MAX_KEY, "invalid_input")
    if key is not None and is_blank_or_control(key):
        verdict = "invalid"
    verdicts.append((verdict, codes))
    refusals = set().union(*(c for v, c in verdicts if v != "valid"))
    if any(v == "invalid" for v, _ in verdicts):
        return refusals
    if key == REPEATABLE_KEY:
        repeat = keys == POOL_STYLES and args["source_image_path"] == f"{me.uid}/source.png"
        prompt = args.get("custom_prompt")
        outcome = OK if repeat and prompt is None else "idempotency_conflict"
        if repeat and prompt is not None and not SAFE_TEXT.fullmatch(prompt):
            refusals.add(OK)  # a blank prompt may count as none, and so as the same request
    else:
        cost = sum(world.active_styles[k] for k in keys)
        outcome = OK if cost <= balance else "insufficient_credits"
    return refusals | {outcome}


def expect_for_list(args: dict[str, Any], me: Owner, other: Owner) -> set[str]:
    verdicts = []
    status = args.get("status")
    if status is None or status in BATCH_STATUSES:
        verdicts.append("valid")
    else:
        verdicts.append("unsure" if status.strip().lower() in BATCH_STATUSES else "invalid")
    if "page_size" in args:
        size = args["page_size"]
        verdicts.append("unsure" if size is None else "valid" if 1 <= size <= 100 else "invalid")
    after = args.get("after")
    if after is not None and after not in me.cursors + other.cursors:
        verdicts.append("unsure" if after in cursor_mutations(me, other) else "invalid")
    if "invalid" in verdicts:
        return {"invalid_input"}
    return {OK} if all(v == "valid" for v in verdicts) else {OK, "invalid_input"}


# --- snapshots and checks -----------------------------------------------------------------


def snapshot(admin: psycopg.Connection[dict[str, Any]], users: list[uuid.UUID]) -> dict[str, Any]:
    """Everything the two users own, row by row."""
    tables = {
        "profiles": "select * from public.profiles where id = any(%s) order by id",
        "credit_ledger": "select * from public.credit_ledger where user_id = any(%s) order by id",
        "generation_batches": "select * from public.generation_batches"
        " where user_id = any(%s) order by id",
        "generations": "select * from public.generations where user_id = any(%s) order by id",
    }
    return {name: admin.execute(q, (users,)).fetchall() for name, q in tables.items()}


def owned_by(snap: dict[str, Any], uid: uuid.UUID) -> dict[str, Any]:
    return {
        name: [r for r in rows if r.get("user_id", r.get("id")) == uid]
        for name, rows in snap.items()
    }


def without_batch(snap: dict[str, Any], batch_id: uuid.UUID) -> dict[str, Any]:
    """The snapshot minus one batch, its items, its ledger rows and the balance."""
    return {
        "generation_batches": [r for r in snap["generation_batches"] if r["id"] != batch_id],
        "generations": [r for r in snap["generations"] if r["batch_id"] != batch_id],
        "credit_ledger": [r for r in snap["credit_ledger"] if r["batch_id"] != batch_id],
    }


def call(caller: Actor, function: str, args: dict[str, Any]) -> tuple[str, Any]:
    """(OK, result) or (code, error); an error outside the contract fails the test."""
    try:
        return OK, caller.rpc(function, **args)
    except PortraitkitError as exc:
        assert exc.code in DOCUMENTED_CODES, f"undocumented error {exc.code!r}: {exc.message}"
        return exc.code, exc


def check_success(
    function: str, args: dict[str, Any], result: Any, me: Owner, before: Any, after: Any
) -> None:
    """What a successful call may change, and that it shows only the caller's batches."""
    mine_before, mine_after = owned_by(before, me.uid), owned_by(after, me.uid)
    if function in ("list_batches", "get_batch", "batch_stats"):
        assert mine_after == mine_before
    if function == "list_batches":
        items = result["items"]
        assert {uuid.UUID(i["id"]) for i in items} <= set(me.batches.values())
        if args.get("status") in BATCH_STATUSES:
            assert {i["status"] for i in items} <= {args["status"]}
    elif function == "batch_stats":
        assert result["balance"] == mine_after["profiles"][0]["total_credits"]
        assert result["batches"] == len(POOL)
    elif function == "create_generation_batch":
        if args.get("idempotency_key") == REPEATABLE_KEY:
            assert result == me.batches["pending"] and mine_after == mine_before
            return
        assert result not in me.batches.values()
        new = [b for b in mine_after["generation_batches"] if b["id"] == result]
        assert len(new) == 1 and without_batch(mine_after, result) == without_batch(
            mine_before, result
        )
        items = [g["style_key"] for g in mine_after["generations"] if g["batch_id"] == result]
        assert sorted(items) == sorted(args["style_keys"])
    else:
        target = uuid.UUID(result.get("batch_id") or result["id"])
        assert target in me.batches.values()
        assert without_batch(mine_after, target) == without_batch(mine_before, target)


# --- the properties --------------------------------------------------------------------------

USER_FUNCTIONS = {
    "create_generation_batch": 300,
    "list_batches": 200,
    "get_batch": 150,
    "cancel_batch": 150,
    "retry_failed": 150,
    "delete_batch": 150,
    "batch_stats": 5,
}


@pytest.mark.parametrize("function", list(USER_FUNCTIONS))
def test_any_arguments_get_a_documented_answer_and_refusals_change_nothing(
    world: World, function: str
) -> None:
    @settings(
        max_examples=USER_FUNCTIONS[function],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data(), leftover=st.sampled_from([0, 100]))
    def one_call(data: st.DataObject, leftover: int) -> None:
        me = world.user_with_pool(leftover)
        if function == "list_batches" and not me.cursors:
            me.cursors = cursors(world.caller)
        args = data.draw(arguments(function, me, world), label="arguments")
        users = [me.uid, world.other.uid]
        before = snapshot(world.admin, users)
        balance = before["profiles"][users.index(me.uid)]["total_credits"]
        if function in ID_FUNCTIONS:
            expected = expect_for_id(function, args["batch_id"], me, world.other)
        elif function == "create_generation_batch":
            expected = expect_for_create(args, me, world, balance)
        elif function == "list_batches":
            expected = expect_for_list(args, me, world.other)
        else:
            expected = {OK}
        note(f"caller {me.uid}, batches {me.batches}, other {world.other.batches}")
        outcome, result = call(world.caller, function, args)
        note(f"outcome {outcome}: {result!r}")
        after = snapshot(world.admin, users)
        if owned_by(after, me.uid) != owned_by(before, me.uid):
            del world.untouched[leftover]  # before any assertion, so a failure leaves no trace
        assert outcome in expected, f"{function}({args!r}) gave {outcome}, expected {expected}"
        assert owned_by(after, world.other.uid) == owned_by(before, world.other.uid)
        if outcome == OK:
            check_success(function, args, result, me, before, after)
        else:
            assert after == before, "a refused call changed something"
        assert ledger_balances(world.admin) == []
        assert counter_mismatches(world.admin, users) == []
        assert queue_mismatches(world.admin) == []

    one_call()
