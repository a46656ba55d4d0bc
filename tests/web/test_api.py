"""The app's HTTP API against the real database: every endpoint, its errors and its auth."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from portraitkit.auth import issue_service_token, issue_user_token
from portraitkit.generators import get_generator
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.service import open_worker
from portraitkit.settings import Settings
from portraitkit.storage import MAX_SOURCE_BYTES
from portraitkit.worker import WorkerOptions

from .conftest import SECRET, Jwks

MakeUser = Callable[..., Any]
PHOTO = sample_portrait_png()


def _create(api: TestClient, headers: dict[str, str], styles: list[str], **more: Any) -> Any:
    return api.post(
        "/api/generate/batch",
        headers=headers,
        files={"photo": ("me.png", PHOTO, "image/png")},
        data={"styles": styles, **more},
    )


def _run_worker(settings: Settings) -> None:
    async def run() -> None:
        options = WorkerOptions(poll_seconds=0.2, worker_id="web-test")
        async with open_worker(settings, options, lambda _n: get_generator("noop")) as worker:
            await worker.run(once=True)

    asyncio.run(run())


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code, body
    return body


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_styles_are_grouped_by_category_with_costs(api: TestClient) -> None:
    groups = api.get("/api/styles").json()
    categories = [g["category"] for g in groups]
    assert len(categories) == len(set(categories)) >= 5
    drawing = next(g for g in groups if g["category"] == "Drawing")
    assert {"key": "pencil_sketch", "credit_cost": 1}.items() <= drawing["styles"][0].items()
    assert "prompt_template" not in drawing["styles"][0]


def test_a_batch_from_an_upload_is_paid_once(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=10)
    response = _create(api, headers, ["pencil_sketch", "pop_art"], custom_prompt="in red")
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["status"], batch["total_count"], batch["credits_charged"]) == ("pending", 2, 3)
    assert [i["style_key"] for i in batch["items"]] == ["pencil_sketch", "pop_art"]
    assert batch["custom_prompt"] == "in red"
    assert batch["source_url"].startswith("/media/")
    assert api.get(batch["source_url"]).content == PHOTO
    assert api.get("/api/user/stats", headers=headers).json()["balance"] == 7


def test_a_batch_from_a_stored_photo(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=10)
    first = _create(api, headers, ["noir"]).json()
    response = api.post(
        "/api/generate/batch",
        headers=headers,
        json={"styles": ["poster"], "source_path": first["original_image_url"]},
    )
    assert response.status_code == 201, response.text
    assert response.json()["original_image_url"] == first["original_image_url"]


def test_the_same_idempotency_key_returns_the_first_batch(
    api: TestClient, make_user: MakeUser
) -> None:
    _user, headers = make_user(credits=10)
    keyed = {**headers, "Idempotency-Key": "tap-1"}
    first, again = _create(api, keyed, ["noir"]).json(), _create(api, keyed, ["noir"]).json()
    assert first["id"] == again["id"]
    assert api.get("/api/user/stats", headers=headers).json()["balance"] == 9
    _error(_create(api, keyed, ["poster"]), 409, "idempotency_conflict")


def test_the_gallery_pages_newest_first(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=10)
    ids = [_create(api, headers, ["noir"]).json()["id"] for _ in range(3)]
    first = api.get("/api/user/batches", headers=headers, params={"limit": 2}).json()
    assert [b["id"] for b in first["items"]] == ids[::-1][:2]
    rest = api.get(
        "/api/user/batches", headers=headers, params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [b["id"] for b in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    pending = api.get("/api/user/batches", headers=headers, params={"status": "completed"})
    assert pending.json()["items"] == []


def test_a_finished_batch_shows_its_images(
    api: TestClient, make_user: MakeUser, web_settings: Settings
) -> None:
    _user, headers = make_user(credits=10)
    batch_id = _create(api, headers, ["noir", "poster"]).json()["id"]
    _run_worker(web_settings)
    batch = api.get(f"/api/user/batches/{batch_id}", headers=headers).json()
    assert batch["status"] == "completed" and batch["progress"] == 100
    for item in batch["items"]:
        image = api.get(item["image_url"])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert api.get(batch["cover_url"]).status_code == 200


def test_a_media_link_cannot_be_forged_or_reused_for_another_path(
    api: TestClient, make_user: MakeUser
) -> None:
    _user, headers = make_user(credits=10)
    url = _create(api, headers, ["noir"]).json()["source_url"]
    path, query = url.split("?")
    _error(api.get(path + "?exp=9999999999&sig=" + "0" * 64), 403, "not_allowed")
    _error(api.get(path.replace("sources", "other") + "?" + query), 403, "not_allowed")


def test_cancel_retry_and_delete(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=10)
    batch_id = _create(api, headers, ["noir", "poster"]).json()["id"]
    cancelled = api.post(f"/api/user/batches/{batch_id}/cancel", headers=headers).json()
    assert (cancelled["cancelled"], cancelled["refunded"], cancelled["status"]) == (
        2,
        2,
        "cancelled",
    )
    detail = api.get(f"/api/user/batches/{batch_id}", headers=headers).json()
    assert (detail["credits_charged"], detail["refunded_credits"], detail["net_credits"]) == (
        2,
        2,
        0,
    )
    _error(api.post(f"/api/user/batches/{batch_id}/cancel", headers=headers), 409, "batch_finished")
    _error(
        api.post(f"/api/user/batches/{batch_id}/retry", headers=headers), 409, "nothing_to_retry"
    )
    deleted = api.delete(f"/api/user/batches/{batch_id}", headers=headers).json()
    assert deleted["deleted"] is True
    _error(api.get(f"/api/user/batches/{batch_id}", headers=headers), 404, "batch_not_found")


def test_another_users_batch_is_404(api: TestClient, make_user: MakeUser) -> None:
    _owner, owner_headers = make_user()
    _stranger, headers = make_user()
    batch_id = _create(api, owner_headers, ["noir"]).json()["id"]
    for method, path in [
        ("GET", f"/api/user/batches/{batch_id}"),
        ("POST", f"/api/user/batches/{batch_id}/cancel"),
        ("POST", f"/api/user/batches/{batch_id}/retry"),
        ("DELETE", f"/api/user/batches/{batch_id}"),
        ("GET", f"/api/user/batches/{batch_id}/events"),
    ]:
        _error(api.request(method, path, headers=headers), 404, "batch_not_found")


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"data": {"styles": ["noir"]}}, 400, "invalid_input"),  # no photo
        (
            {
                "files": {"photo": ("a.txt", b"not an image", "text/plain")},
                "data": {"styles": ["noir"]},
            },
            400,
            "invalid_image",
        ),
        (
            {"files": {"photo": ("me.png", PHOTO, "image/png")}, "data": {"styles": ["nope"]}},
            400,
            "unknown_style",
        ),
        ({"files": {"photo": ("me.png", PHOTO, "image/png")}, "data": {}}, 400, "empty_style_list"),
        (
            {
                "files": {"photo": ("me.png", PHOTO, "image/png")},
                "data": {"styles": ["oil_painting"] * 2},
            },
            400,
            "duplicate_style",
        ),
        ({"json": {"styles": [], "source_path": "x"}}, 400, "invalid_input"),
        ({"json": {"styles": ["noir"], "source_path": "someone/else.png"}}, 400, "invalid_input"),
        (
            {"content": b"styles=noir", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_a_bad_create_is_refused_and_charges_nothing(
    api: TestClient, make_user: MakeUser, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    _user, headers = make_user(credits=10)
    kwargs = {**request_kwargs, "headers": {**headers, **request_kwargs.get("headers", {})}}
    _error(api.post("/api/generate/batch", **kwargs), status, code)
    assert api.get("/api/user/stats", headers=headers).json()["balance"] == 10


def test_a_batch_over_the_balance_is_402(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=2)
    body = _error(_create(api, headers, ["oil_painting"]), 402, "insufficient_credits")
    assert body["details"] == {"required": 3, "available": 2}


def test_an_upload_over_the_limit_is_413(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user()
    big = b"\x89PNG\r\n\x1a\n" + b"0" * MAX_SOURCE_BYTES
    response = api.post(
        "/api/generate/batch",
        headers=headers,
        files={"photo": ("big.png", big, "image/png")},
        data={"styles": ["noir"]},
    )
    _error(response, 413, "payload_too_large")


def test_malformed_query_and_ids_are_400(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user()
    _error(api.get("/api/user/batches", headers=headers, params={"limit": 0}), 400, "invalid_input")
    _error(
        api.get("/api/user/batches", headers=headers, params={"status": "x"}), 400, "invalid_input"
    )
    _error(
        api.get("/api/user/batches", headers=headers, params={"cursor": "x"}), 400, "invalid_input"
    )
    _error(api.get("/api/user/batches/not-an-id", headers=headers), 400, "invalid_input")


def test_no_token_is_401(api: TestClient) -> None:
    body = _error(api.get("/api/user/batches"), 401, "not_authenticated")
    assert "Bearer" in body["message"]


def test_a_bad_signature_is_401(api: TestClient, make_user: MakeUser) -> None:
    user, _headers = make_user()
    forged = issue_user_token("another-secret-of-at-least-32-bytes!!", user.id, user.email)
    _error(
        api.get("/api/user/stats", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "not_authenticated",
    )


def test_an_expired_token_is_401(api: TestClient, make_user: MakeUser) -> None:
    user, _headers = make_user()
    expired = issue_user_token(SECRET, user.id, user.email, ttl=-120)
    body = _error(
        api.get("/api/user/stats", headers={"Authorization": f"Bearer {expired}"}),
        401,
        "not_authenticated",
    )
    assert "expired" in body["message"]


def test_a_token_of_another_audience_is_401(api: TestClient, make_user: MakeUser) -> None:
    user, _headers = make_user()
    claims = jwt.decode(
        issue_user_token(SECRET, user.id, user.email), options={"verify_signature": False}
    )
    token = jwt.encode({**claims, "aud": "somebody-else"}, SECRET, algorithm="HS256")
    _error(
        api.get("/api/user/stats", headers={"Authorization": f"Bearer {token}"}),
        401,
        "not_authenticated",
    )


def test_the_service_role_is_not_a_user(api: TestClient) -> None:
    token = issue_service_token(SECRET)
    _error(
        api.get("/api/user/stats", headers={"Authorization": f"Bearer {token}"}),
        401,
        "not_authenticated",
    )


def test_a_token_signed_with_the_projects_key_pair_is_accepted(
    api: TestClient, make_user: MakeUser, jwks: Jwks
) -> None:
    user, _headers = make_user(credits=7)
    headers = {"Authorization": f"Bearer {jwks.token(user)}"}
    assert api.get("/api/user/stats", headers=headers).json()["balance"] == 7
    seen = jwks.requests
    api.get("/api/user/stats", headers=headers)
    assert jwks.requests == seen  # the key set is cached


def test_a_key_pair_token_with_an_unknown_key_is_401(
    api: TestClient, make_user: MakeUser, jwks: Jwks
) -> None:
    user, _headers = make_user()
    headers = {"Authorization": f"Bearer {jwks.token(user, kid='rotated-away')}"}
    _error(api.get("/api/user/stats", headers=headers), 401, "not_authenticated")


def test_events_stream_the_batch_until_it_ends(
    api: TestClient, make_user: MakeUser, web_settings: Settings
) -> None:
    _user, headers = make_user(credits=10)
    batch_id = _create(api, headers, ["noir", "poster"]).json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    started = time.monotonic()
    with api.stream("GET", f"/api/user/batches/{batch_id}/events", headers=headers) as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line.split(":", 1)[1])))
                if len(events) == 1:
                    _run_worker(web_settings)
                if event == "end":
                    break
            assert time.monotonic() - started < 60
    assert events[0][0] == "batch" and events[0][1]["status"] == "pending"
    assert events[-1][0] == "end" and events[-1][1]["status"] == "completed"
    assert all(item["image_url"] for item in events[-1][1]["items"])


def test_events_end_when_the_batch_is_deleted(api: TestClient, make_user: MakeUser) -> None:
    _user, headers = make_user(credits=10)
    batch_id = _create(api, headers, ["noir"]).json()["id"]
    seen: list[str] = []
    with api.stream("GET", f"/api/user/batches/{batch_id}/events", headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
                if len(seen) == 1:
                    api.delete(f"/api/user/batches/{batch_id}", headers=headers)
    assert seen == ["batch", "deleted"]
