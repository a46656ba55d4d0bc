"""create_generation_batch: pay once, one generation per style, every bad input refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from portraitkit import errors

from .conftest import ledger_balances


def _state(admin: Any, user_id: uuid.UUID) -> tuple[int, int, int, int]:
    row = admin.execute(
        """
        select p.total_credits,
               (select count(*) from public.generation_batches b where b.user_id = p.id) as batches,
               (select count(*) from public.generations g where g.user_id = p.id) as items,
               (select count(*) from public.credit_ledger l where l.user_id = p.id) as entries
          from public.profiles p where p.id = %s
        """,
        (user_id,),
    ).fetchone()
    return row["total_credits"], row["batches"], row["items"], row["entries"]


def test_new_user_gets_profile_with_trial_credits(admin: Any, make_user: Any) -> None:
    user = make_user()
    trial = admin.execute(
        "select (value #>> '{}')::int as v from private.settings where key = 'trial_credits'"
    ).fetchone()["v"]
    profile = admin.execute(
        "select starting_credits, total_credits from public.profiles where id = %s", (user.user_id,)
    ).fetchone()
    assert profile == {"starting_credits": trial, "total_credits": trial}


def test_create_charges_sum_of_style_costs_once(admin: Any, make_user: Any) -> None:
    user = make_user(credits=20)
    batch_id = user.rpc(
        "create_generation_batch",
        style_keys=["pencil_sketch", "pop_art", "oil_painting"],
        source_image_path=f"{user.user_id}/source.png",
    )
    # pencil_sketch 1 + pop_art 2 + oil_painting 3
    assert _state(admin, user.user_id) == (14, 1, 3, 1)
    batch = admin.execute(
        "select * from public.generation_batches where id = %s", (batch_id,)
    ).fetchone()
    assert batch["status"] == "pending"
    assert (batch["total_count"], batch["pending_count"], batch["credits_charged"]) == (3, 3, 6)
    items = admin.execute(
        "select style_key, position, status, credit_cost, attempts from public.generations"
        " where batch_id = %s order by position",
        (batch_id,),
    ).fetchall()
    assert [(i["style_key"], i["position"], i["credit_cost"]) for i in items] == [
        ("pencil_sketch", 1, 1),
        ("pop_art", 2, 2),
        ("oil_painting", 3, 3),
    ]
    assert {i["status"] for i in items} == {"pending"}
    ledger = admin.execute(
        "select kind, delta, batch_id from public.credit_ledger where user_id = %s", (user.user_id,)
    ).fetchall()
    assert ledger == [{"kind": "debit", "delta": -6, "batch_id": batch_id}]
    assert ledger_balances(admin) == []


def test_cost_comes_from_the_catalogue(admin: Any, make_user: Any) -> None:
    admin.execute("update public.styles set credit_cost = 7 where key = 'noir'")
    try:
        user = make_user(credits=10)
        user.rpc(
            "create_generation_batch",
            style_keys=["noir"],
            source_image_path=f"{user.user_id}/sources/s.png",
        )
        assert _state(admin, user.user_id)[0] == 3
    finally:
        admin.execute("update public.styles set credit_cost = 1 where key = 'noir'")


def test_custom_prompt_is_kept_on_batch_and_items(admin: Any, make_user: Any) -> None:
    user = make_user()
    batch_id = user.rpc(
        "create_generation_batch",
        style_keys=["charcoal"],
        source_image_path=f"{user.user_id}/sources/s.png",
        custom_prompt="  in a red scarf ",
    )
    row = admin.execute(
        "select b.custom_prompt as b, g.custom_prompt as g from public.generation_batches b"
        " join public.generations g on g.batch_id = b.id where b.id = %s",
        (batch_id,),
    ).fetchone()
    assert row == {"b": "in a red scarf", "g": "in a red scarf"}


def test_same_idempotency_key_returns_same_batch_charged_once(admin: Any, make_user: Any) -> None:
    user = make_user(credits=10)
    args = {
        "style_keys": ["pop_art", "poster"],
        "source_image_path": f"{user.user_id}/sources/s.png",
        "idempotency_key": "k-1",
    }
    first = user.rpc("create_generation_batch", **args)
    second = user.rpc("create_generation_batch", **args)
    assert first == second
    assert _state(admin, user.user_id) == (7, 1, 2, 1)


def test_idempotency_key_reused_for_other_request_is_a_conflict(admin: Any, make_user: Any) -> None:
    user = make_user(credits=10)
    user.rpc(
        "create_generation_batch",
        style_keys=["poster"],
        source_image_path=f"{user.user_id}/sources/s.png",
        idempotency_key="k-2",
    )
    before = _state(admin, user.user_id)
    with pytest.raises(errors.IdempotencyConflict) as caught:
        user.rpc(
            "create_generation_batch",
            style_keys=["noir"],
            source_image_path=f"{user.user_id}/sources/s.png",
            idempotency_key="k-2",
        )
    assert caught.value.http_status == 409
    assert _state(admin, user.user_id) == before


def test_idempotency_keys_are_per_user(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    a = alice.rpc(
        "create_generation_batch",
        style_keys=["poster"],
        source_image_path=f"{alice.user_id}/sources/s.png",
        idempotency_key="shared",
    )
    b = bob.rpc(
        "create_generation_batch",
        style_keys=["poster"],
        source_image_path=f"{bob.user_id}/sources/s.png",
        idempotency_key="shared",
    )
    assert a != b


BAD_INPUTS: list[tuple[str, dict[str, Any], type[errors.PortraitkitError], int]] = [
    ("empty list", {"style_keys": []}, errors.EmptyStyleList, 400),
    ("null list", {"style_keys": None}, errors.EmptyStyleList, 400),
    ("oversized list", {"style_keys": [f"s{i}" for i in range(21)]}, errors.TooManyStyles, 400),
    ("null key", {"style_keys": ["poster", None]}, errors.InvalidInput, 400),
    ("duplicate key", {"style_keys": ["poster", "noir", "poster"]}, errors.DuplicateStyle, 400),
    ("unknown key", {"style_keys": ["poster", "no_such_style"]}, errors.UnknownStyle, 400),
    ("inactive key", {"style_keys": ["retired_style"]}, errors.InactiveStyle, 400),
    ("prompt too long", {"custom_prompt": "x" * 501}, errors.PromptTooLong, 400),
    ("blank source", {"source_image_path": "  "}, errors.InvalidInput, 400),
    ("source too long", {"source_image_path": "x" * 1025}, errors.InvalidInput, 400),
    ("key too long", {"idempotency_key": "k" * 201}, errors.InvalidInput, 400),
    (
        "too expensive",
        {"style_keys": ["oil_painting", "impressionist"]},
        errors.InsufficientCredits,
        402,
    ),
]


@pytest.fixture
def retired_style(admin: Any) -> Any:
    admin.execute(
        "insert into public.styles (key, name, category, credit_cost, prompt_template, is_active)"
        " values ('retired_style', 'Retired', 'Old', 1, 'x', false) on conflict (key) do nothing"
    )
    return "retired_style"


@pytest.mark.parametrize(
    ("case", "override", "error", "status"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_and_changes_nothing(
    admin: Any,
    make_user: Any,
    retired_style: str,
    case: str,
    override: dict[str, Any],
    error: type[errors.PortraitkitError],
    status: int,
) -> None:
    user = make_user(credits=5)
    args: dict[str, Any] = {
        "style_keys": ["poster"],
        "source_image_path": f"{user.user_id}/sources/s.png",
    }
    args.update(override)
    before = _state(admin, user.user_id)
    with pytest.raises(error) as caught:
        user.rpc("create_generation_batch", **args)
    assert type(caught.value) is error
    assert caught.value.code == error.code
    assert caught.value.http_status == status
    assert caught.value.message
    assert _state(admin, user.user_id) == before


def test_error_details_are_machine_readable(make_user: Any) -> None:
    user = make_user(credits=2)
    with pytest.raises(errors.InsufficientCredits) as caught:
        user.rpc(
            "create_generation_batch",
            style_keys=["oil_painting"],
            source_image_path=f"{user.user_id}/sources/s.png",
        )
    assert caught.value.details == {"required": 3, "available": 2}
    with pytest.raises(errors.UnknownStyle) as unknown:
        user.rpc(
            "create_generation_batch",
            style_keys=["zzz", "aaa"],
            source_image_path=f"{user.user_id}/sources/s.png",
        )
    assert unknown.value.details == {"style_keys": ["aaa", "zzz"]}


def test_anonymous_caller_cannot_create(anon: Any) -> None:
    with pytest.raises(errors.NotAuthenticated):
        anon.rpc(
            "create_generation_batch",
            style_keys=["poster"],
            source_image_path=f"{uuid.uuid4()}/sources/s.png",
        )


def test_service_role_without_user_is_not_authenticated(service: Any) -> None:
    with pytest.raises(errors.NotAuthenticated):
        service.rpc(
            "create_generation_batch",
            style_keys=["poster"],
            source_image_path=f"{uuid.uuid4()}/sources/s.png",
        )


def test_signed_in_role_without_sub_is_not_authenticated(db_url: str) -> None:
    from .conftest import Actor

    actor = Actor(db_url, {"role": "authenticated"})
    try:
        with pytest.raises(errors.NotAuthenticated) as caught:
            actor.rpc(
                "create_generation_batch",
                style_keys=["poster"],
                source_image_path=f"{actor.user_id}/sources/s.png",
            )
        assert caught.value.http_status == 401
    finally:
        actor.close()
