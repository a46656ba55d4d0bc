"""The user API tried as an attacker would, through the role and claims PostgREST uses.

Each test is one attack that the first release let through: another user's photo as the
source, garbage text that was charged for, errors outside the contract, a colliding
idempotency fingerprint. Every refusal must be the contract's own code and change nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from portraitkit import errors
from tests.sqlapi.conftest import ledger_balances


def _state(admin: Any, *users: Any) -> list[Any]:
    """Everything a refused call could have changed, for these users."""
    ids = [u.user_id for u in users]
    return [
        admin.execute(
            "select id, total_credits from public.profiles where id = any(%s) order by id", (ids,)
        ).fetchall(),
        admin.execute(
            "select count(*) as n from public.credit_ledger where user_id = any(%s)", (ids,)
        ).fetchone(),
        admin.execute(
            "select id, status, total_count from public.generation_batches"
            " where user_id = any(%s) order by id",
            (ids,),
        ).fetchall(),
    ]


def _create(user: Any, source: str, **more: Any) -> Any:
    return user.rpc(
        "create_generation_batch", style_keys=["noir"], source_image_path=source, **more
    )


def test_another_users_photo_is_not_a_source(admin: Any, make_user: Any) -> None:
    attacker, victim = make_user(credits=5), make_user(credits=5)
    victims_selfie = f"{victim.user_id}/sources/0123abcd.png"
    before = _state(admin, attacker, victim)
    with pytest.raises(errors.SourceNotFound) as caught:
        _create(attacker, victims_selfie)
    assert caught.value.http_status == 404
    assert caught.value.details == {"field": "source_image_path"}
    assert _state(admin, attacker, victim) == before


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("{own}/../{victim}/sources/a.png", "empty_or_dot_segment"),
        ("{own}/./a.png", "empty_or_dot_segment"),
        ("{own}//a.png", "empty_or_dot_segment"),
        ("/{own}/a.png", "empty_or_dot_segment"),
        ("{own}/", "empty_or_dot_segment"),
        ("{own}", "no_owner_folder"),
        ("{own}/a\\..\\b.png", "backslash"),
        ("{own}/a\tb.png", "control_character"),
        ("{own}/a\u00a0b.png", "white_space"),
        ("{own}/a\u200bb.png", "white_space"),
        ("{own}/ a.png", "space_at_segment_edge"),
        ("{own}/a\x01.png", "control_character"),
        ("{own}/" + "a" * 1024, "too_long"),
        (" \t\n ", "blank"),
        ("\u3000", "blank"),
        ("\u00a0", "blank"),
        ("", "missing"),
        ("sources/a.png", "no_owner_folder"),
    ],
)
def test_a_malformed_source_path_is_invalid_input(
    admin: Any, make_user: Any, path: str, reason: str
) -> None:
    user, victim = make_user(credits=5), make_user(credits=5)
    before = _state(admin, user, victim)
    with pytest.raises(errors.InvalidInput) as caught:
        _create(user, path.format(own=user.user_id, victim=victim.user_id))
    assert type(caught.value) is errors.InvalidInput
    assert caught.value.details == {"field": "source_image_path", "reason": reason}
    assert _state(admin, user, victim) == before


def test_a_plain_space_inside_a_file_name_is_fine(make_user: Any) -> None:
    user = make_user(credits=5)
    assert isinstance(_create(user, f"{user.user_id}/sources/my photo.png"), uuid.UUID)


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("a\x01b", "control_character"),
        ("line\nbreak", "control_character"),
        ("\x7f", "control_character"),
    ],
)
def test_control_characters_in_the_prompt_are_refused(
    admin: Any, make_user: Any, prompt: str, reason: str
) -> None:
    user = make_user(credits=5)
    before = _state(admin, user)
    with pytest.raises(errors.InvalidInput) as caught:
        _create(user, f"{user.user_id}/sources/a.png", custom_prompt=prompt)
    assert caught.value.details == {"field": "custom_prompt", "reason": reason}
    assert _state(admin, user) == before


@pytest.mark.parametrize("blank", [" ", "\u3000", "\u00a0 \u2003", "\ufeff"])
def test_a_blank_prompt_means_no_prompt(admin: Any, make_user: Any, blank: str) -> None:
    user = make_user(credits=5)
    batch_id = _create(user, f"{user.user_id}/sources/a.png", custom_prompt=blank)
    row = admin.execute(
        "select custom_prompt from public.generation_batches where id = %s", (batch_id,)
    ).fetchone()
    assert row == {"custom_prompt": None}


def test_the_prompt_is_trimmed_of_unicode_white_space(admin: Any, make_user: Any) -> None:
    user = make_user(credits=5)
    batch_id = _create(user, f"{user.user_id}/sources/a.png", custom_prompt="\u3000in red\u00a0")
    row = admin.execute(
        "select custom_prompt from public.generation_batches where id = %s", (batch_id,)
    ).fetchone()
    assert row == {"custom_prompt": "in red"}


@pytest.mark.parametrize("key", [" ", "\u3000", "k\x02", "k" * 201])
def test_a_garbage_idempotency_key_is_refused(admin: Any, make_user: Any, key: str) -> None:
    user = make_user(credits=5)
    before = _state(admin, user)
    with pytest.raises(errors.InvalidInput) as caught:
        _create(user, f"{user.user_id}/sources/a.png", idempotency_key=key)
    assert caught.value.details["field"] == "idempotency_key"
    assert _state(admin, user) == before


def test_a_multidimensional_style_array_is_invalid_input(admin: Any, make_user: Any) -> None:
    user = make_user(credits=5)
    before = _state(admin, user)
    with pytest.raises(errors.InvalidInput) as caught:
        user.rpc(
            "create_generation_batch",
            style_keys=[["noir"], ["poster"]],
            source_image_path=f"{user.user_id}/sources/a.png",
        )
    assert caught.value.details == {"field": "style_keys", "reason": "not_one_dimensional"}
    assert _state(admin, user) == before


@pytest.mark.parametrize(
    ("function", "args", "field"),
    [
        ("list_batches", {"status": "bogus"}, "status"),
        ("list_batches", {"after": "bogus"}, "after"),
        ("list_batches", {"after": "2026-12-01T00:00:00+00:00|not-a-uuid"}, "after"),
        ("list_batches", {"after": "now|00000000-0000-0000-0000-000000000000"}, "after"),
        ("get_batch", {"batch_id": "not-a-uuid"}, "batch_id"),
        ("get_batch", {"batch_id": "{00000000-0000-0000-0000-000000000000}"}, "batch_id"),
        ("cancel_batch", {"batch_id": ""}, "batch_id"),
        ("retry_failed", {"batch_id": "1"}, "batch_id"),
        ("delete_batch", {"batch_id": None}, "batch_id"),
    ],
)
def test_malformed_ids_and_cursors_are_invalid_input_from_the_function(
    make_user: Any, function: str, args: dict[str, Any], field: str
) -> None:
    user = make_user(credits=5)
    with pytest.raises(errors.InvalidInput) as caught:
        user.rpc(function, **args)
    assert type(caught.value) is errors.InvalidInput
    assert caught.value.http_status == 400
    assert caught.value.details["field"] == field


def test_an_integer_postgres_cannot_take_is_invalid_input(make_user: Any) -> None:
    user = make_user(credits=5)
    with pytest.raises(errors.InvalidInput) as caught:
        user.rpc("list_batches", page_size=2**40)
    assert caught.value.details["sqlstate"].startswith("22")


def test_fields_that_join_alike_are_different_requests(admin: Any, make_user: Any) -> None:
    user = make_user(credits=5)
    own = user.user_id
    first = _create(user, f"{own}/a|b", custom_prompt="c", idempotency_key="k")
    with pytest.raises(errors.IdempotencyConflict) as caught:
        _create(user, f"{own}/a", custom_prompt="b|c", idempotency_key="k")
    assert caught.value.details == {"batch_id": str(first)}
    assert _create(user, f"{own}/a|b", custom_prompt="c", idempotency_key="k") == first
    assert ledger_balances(admin) == []


def test_style_order_is_part_of_the_request(make_user: Any) -> None:
    user = make_user(credits=5)
    source = f"{user.user_id}/sources/a.png"
    user.rpc(
        "create_generation_batch",
        style_keys=["noir", "poster"],
        source_image_path=source,
        idempotency_key="k",
    )
    with pytest.raises(errors.IdempotencyConflict):
        user.rpc(
            "create_generation_batch",
            style_keys=["poster", "noir"],
            source_image_path=source,
            idempotency_key="k",
        )


def test_delete_returns_only_paths_in_the_callers_folder(
    admin: Any, make_user: Any, service: Any
) -> None:
    """A row written some other way (a first-release batch) must not make the client
    remove another user's objects."""
    user, victim = make_user(credits=5), make_user(credits=5)
    batch_id = _create(user, f"{user.user_id}/sources/a.png")
    admin.execute(
        "update public.generation_batches set original_image_url = %s where id = %s",
        (f"{victim.user_id}/sources/selfie.png", batch_id),
    )
    admin.execute(
        "update public.generations set status = 'processing', lease_owner = 'w',"
        " lease_expires_at = now() + interval '1 minute' where batch_id = %s",
        (batch_id,),
    )
    admin.execute(
        "update public.generations set status = 'completed', generated_image_url = %s"
        " where batch_id = %s",
        (f"{victim.user_id}/{batch_id}/x.png", batch_id),
    )
    result = user.rpc("delete_batch", batch_id=str(batch_id))
    assert result["original_image_url"] is None
    assert result["image_paths"] == []


def test_retry_of_a_batch_with_someone_elses_source_is_refused(admin: Any, make_user: Any) -> None:
    user, victim = make_user(credits=5), make_user(credits=5)
    batch_id = _create(user, f"{user.user_id}/sources/a.png")
    admin.execute(
        "update public.generation_batches set original_image_url = %s where id = %s",
        (f"{victim.user_id}/sources/selfie.png", batch_id),
    )
    admin.execute(
        "update public.generations set status = 'processing' where batch_id = %s", (batch_id,)
    )
    admin.execute(
        "update public.generations set status = 'failed' where batch_id = %s", (batch_id,)
    )
    before = _state(admin, user, victim)
    with pytest.raises(errors.SourceNotFound):
        user.rpc("retry_failed", batch_id=str(batch_id))
    assert _state(admin, user, victim) == before


def test_a_result_path_outside_the_owners_folder_is_refused(
    make_user: Any, service: Any, admin: Any
) -> None:
    user, victim = make_user(credits=5), make_user(credits=5)
    _create(user, f"{user.user_id}/sources/a.png")
    item = service.rpc("claim_generations", worker_id="w", max_items=1)[0]
    with pytest.raises(errors.InvalidInput) as caught:
        service.rpc(
            "complete_generation",
            worker_id="w",
            generation_id=item["id"],
            image_path=f"{victim.user_id}/x.png",
        )
    assert caught.value.details["generation_ids"] == [str(item["id"])]
    status = admin.execute(
        "select status from public.generations where id = %s", (item["id"],)
    ).fetchone()
    assert status == {"status": "processing"}


OWNER = uuid.UUID("0b6c4c1e-0000-4000-8000-000000000001")
STRANGER = uuid.UUID("0b6c4c1e-0000-4000-8000-000000000002")
# Pieces a hostile or careless path is made of: the usual, dots, blanks, control and
# non-ASCII characters, backslashes, slashes doubled and at the ends.
PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "-",
        "_",
        ".",
        "..",
        "/",
        "//",
        " ",
        "\t",
        "\\",
        "\x01",
        "\x7f",
        "é",
        "\u00a0",
        "x.png",
        str(OWNER),
        str(STRANGER),
    ]
)
PATHS = st.one_of(
    st.none(),
    st.builds(
        lambda folder, rest: folder + "".join(rest),
        st.sampled_from(["", f"{OWNER}/", f"{STRANGER}/", f"{OWNER.hex}/", str(OWNER)]),
        st.lists(PIECES, max_size=4),
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(
    paths=[
        f"{OWNER}/{rest}"
        for rest in (
            "b/i-1.png",
            "..",
            ".hidden",
            "a/../b",
            "a/./b",
            "a//b",
            "",
            "a/",
            " a",
            "a ",
            "a b",
            "a\\b",
            "é.png",
            "a\tb",
            "a\x01",
            "x" * 1100,
        )
    ]
    + [f"{STRANGER}/b/i-1.png", f"{OWNER.hex}/b.png", str(OWNER), None]
)
@given(paths=st.lists(PATHS, max_size=6))
def test_the_folder_check_of_a_list_is_the_rule_path_by_path(admin: Any, paths: list[Any]) -> None:
    """private.outside_folders (a completion's check, with its quick pattern for the usual
    shape) refuses exactly the paths that private.path_problem or the owner's folder
    refuses, one by one; private.in_folder agrees."""
    row = admin.execute(
        """
        select private.outside_folders(%(paths)s::text[], %(owners)s::uuid[]) as listed,
               array(select n::integer from unnest(%(paths)s::text[]) with ordinality as r(p, n)
                      where not coalesce(private.path_problem(r.p) is null
                                         and starts_with(r.p, %(owner)s || '/'), false)
                      order by n) as one_by_one,
               array(select n::integer from unnest(%(paths)s::text[]) with ordinality as r(p, n)
                      where not private.in_folder(r.p, %(owner)s::uuid)
                      order by n) as by_in_folder
        """,
        {"paths": paths, "owners": [OWNER] * len(paths), "owner": str(OWNER)},
    ).fetchone()
    assert row["listed"] == row["one_by_one"] == row["by_in_folder"], paths
