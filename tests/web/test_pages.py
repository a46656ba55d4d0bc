"""The web pages against the real database: sign-in, the gallery, a batch, the picker and
the pages' live stream, each rendered for the signed-in user only."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from portraitkit.auth import LocalUser
from portraitkit.database import rpc
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.settings import Settings
from portraitkit.web import create_app
from portraitkit.web.backend import Backend
from portraitkit.web.pages import COOKIE

from .conftest import Jwks

MakeUser = Callable[..., tuple[LocalUser, dict[str, str]]]
PHOTO = sample_portrait_png()


@pytest.fixture
def pages(api: TestClient) -> Iterator[TestClient]:
    """The module's app as a browser sees it: a cookie jar, and redirects left to the test."""
    api.cookies.clear()
    yield api
    api.cookies.clear()


@pytest.fixture
def signed_in(pages: TestClient, make_user: MakeUser) -> Callable[..., tuple[LocalUser, Any]]:
    """A new user, signed in on ``pages``; returns the user and their API headers."""

    def sign_in(credits: int = 50) -> tuple[LocalUser, dict[str, str]]:
        user, headers = make_user(credits)
        pages.cookies.clear()
        response = pages.post("/signin", data={"email": user.email}, follow_redirects=False)
        assert response.status_code == 303, response.text
        return user, headers

    return sign_in


def create_batch(api: TestClient, headers: dict[str, str], styles: list[str]) -> str:
    response = api.post(
        "/api/generate/batch",
        headers=headers,
        files={"photo": ("me.png", PHOTO, "image/png")},
        data={"styles": styles},
    )
    assert response.status_code == 201, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def fail_items(db_url: str, batch_id: str, error: str) -> None:
    """Claim this batch's items as a worker would and fail each of them for good."""
    with psycopg.connect(db_url, autocommit=True) as conn:

        def worker(function: str, **args: Any) -> Any:
            return rpc.call(
                conn, function, {"worker_id": "t", **args}, claims={"role": "service_role"}
            )

        claimed = worker("claim_generations", max_items=1000)
        others = [c["id"] for c in claimed if str(c["batch_id"]) != batch_id]
        if others:
            worker("release_generations", generation_ids=others)
        for item in claimed:
            if str(item["batch_id"]) == batch_id:
                worker("fail_generation", generation_id=item["id"], error=error, retryable=False)


def events(response: Any) -> list[tuple[str, Any]]:
    """The (event, data) pairs of a finished Server-Sent Events body."""
    found = []
    for block in response.text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


# -- signing in -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/new", f"/batches/{uuid.uuid4()}"])
def test_pages_send_a_signed_out_visitor_to_signin(pages: TestClient, path: str) -> None:
    response = pages.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=" + path.replace("/", "%2F")


def test_signin_lists_the_local_users(pages: TestClient, make_user: MakeUser) -> None:
    user, _ = make_user(7)
    page = pages.get("/signin").text
    assert f'name="email" value="{user.email}"' in page
    assert "7 credits · 0 batches" in page


def test_signing_in_sets_an_httponly_session_cookie_and_returns(
    pages: TestClient, make_user: MakeUser
) -> None:
    user, _ = make_user()
    response = pages.post(
        "/signin", data={"email": user.email, "next": "/new"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/new"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=28800" in cookie


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_signin_never_sends_the_user_to_another_site(
    pages: TestClient, make_user: MakeUser, target: str
) -> None:
    user, _ = make_user()
    response = pages.post(
        "/signin", data={"email": user.email, "next": target}, follow_redirects=False
    )
    assert response.headers["location"] == "/"


def test_signin_with_an_unknown_email_says_so(pages: TestClient) -> None:
    response = pages.post("/signin", data={"email": "nobody@example.test"})
    assert response.status_code == 400
    assert "No user &#39;nobody@example.test&#39;" in response.text
    assert COOKIE not in pages.cookies


def test_signin_accepts_a_pasted_access_token(
    pages: TestClient, make_user: MakeUser, jwks: Jwks
) -> None:
    user, _ = make_user()
    response = pages.post(
        "/signin", data={"access_token": jwks.token(user)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert user.email in pages.get("/").text


def test_signout_ends_the_session(pages: TestClient, signed_in: Any) -> None:
    signed_in()
    response = pages.post("/signout", follow_redirects=False)
    assert response.headers["location"] == "/signin"
    assert pages.get("/", follow_redirects=False).status_code == 303


def test_signin_on_supabase_asks_for_an_access_token(tmp_path: Any) -> None:
    settings = Settings(
        supabase_url="http://127.0.0.1:9",
        supabase_anon_key="sb_publishable_test",
        state_dir=tmp_path,
    )
    app = create_app(settings, worker=False)
    # Without the lifespan, which would wait on Realtime at an address where none listens.
    app.state.backend = Backend(settings)
    page = TestClient(app).get("/signin").text
    assert 'name="access_token"' in page
    assert 'name="email"' not in page


# -- the pages --------------------------------------------------------------------------


def test_the_gallery_shows_each_batch_newest_first_with_counts_and_status(
    pages: TestClient, signed_in: Any
) -> None:
    _, headers = signed_in()
    older = create_batch(pages, headers, ["pencil_sketch", "pop_art"])
    newer = create_batch(pages, headers, ["noir"])
    page = pages.get("/").text
    assert re.findall(r'class="card[^"]*" data-batch-id="([^"]+)"', page) == [newer, older]
    assert "0/1 photos" in page and "0/2 photos" in page
    assert page.count('data-status="pending">Queued</span>') == 2
    assert '<span class="js-balance">46</span>' in page


def test_the_gallery_offers_a_retry_for_failed_photos(
    pages: TestClient, signed_in: Any, db_url: str
) -> None:
    _, headers = signed_in()
    batch_id = create_batch(pages, headers, ["noir", "poster"])
    fail_items(db_url, batch_id, "model error")
    page = pages.get("/").text
    assert '<span class="js-failed-count">2 failed</span>' in page
    assert f'class="button button--small js-retry" type="button" data-batch-id="{batch_id}"' in page


def test_the_batch_page_shows_each_photo_with_status_attempts_and_error(
    pages: TestClient, signed_in: Any, db_url: str
) -> None:
    _, headers = signed_in()
    batch_id = create_batch(pages, headers, ["charcoal", "cartoon"])
    fail_items(db_url, batch_id, "The model refused this photo.")
    page = pages.get(f"/batches/{batch_id}").text
    assert re.findall(r'class="photo__name">([^<]+)<', page) == ["Charcoal", "Cartoon"]
    assert page.count('data-status="failed">Failed</span>') == 3  # the batch and both photos
    assert page.count("Attempt 1 of 3") == 2
    assert page.count("The model refused this photo.") == 2
    assert re.search(r'<button class="button js-retry" type="button">', page)  # shown
    assert re.search(r'js-cancel" type="button" hidden>', page)  # nothing left to cancel
    credits = re.search(r'class="batch__credits">([^<]*)<', page)
    assert credits is not None and credits[1] == "3 credits paid, 3 refunded"  # both failed


def test_another_users_batch_page_is_404(pages: TestClient, signed_in: Any) -> None:
    _, owner = signed_in()
    batch_id = create_batch(pages, owner, ["noir"])
    signed_in()
    response = pages.get(f"/batches/{batch_id}")
    assert response.status_code == 404
    assert "No such batch" in response.text
    assert pages.get("/batches/not-a-uuid").status_code == 404


def test_the_new_batch_page_groups_styles_by_category_with_costs_and_balance(
    pages: TestClient, signed_in: Any
) -> None:
    signed_in(12)
    page = pages.get("/new").text
    catalogue = pages.get("/api/styles").json()
    legends = re.findall(r'<legend class="category__name">([^<]+)</legend>', page)
    assert legends == [group["category"] for group in catalogue]
    costs = dict(re.findall(r'name="styles" value="([^"]+)"\s+data-cost="(\d+)"', page))
    assert costs == {s["key"]: str(s["credit_cost"]) for g in catalogue for s in g["styles"]}
    assert 'data-balance="12"' in page


def test_pages_carry_the_token_and_are_never_cached(pages: TestClient, signed_in: Any) -> None:
    signed_in()
    response = pages.get("/")
    token = pages.cookies[COOKIE]
    assert f'<meta name="portraitkit-token" content="{token}">' in response.text
    assert response.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "same-origin"


def test_style_previews_are_pictures_of_the_sample_portrait(pages: TestClient) -> None:
    response = pages.get("/previews/pop_art.jpg")
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content.startswith(b"\xff\xd8\xff")
    assert pages.get("/previews/no_such_style.jpg").status_code == 404


# -- live progress ----------------------------------------------------------------------


def test_the_live_stream_sends_each_batch_then_ends_once_all_are_final(
    pages: TestClient, signed_in: Any
) -> None:
    _, headers = signed_in()
    first = create_batch(pages, headers, ["noir"])
    second = create_batch(pages, headers, ["poster"])
    for batch_id in (first, second):
        pages.post(f"/api/user/batches/{batch_id}/cancel", headers=headers)
    response = pages.get(f"/live?batch={first}&batch={second}")
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    assert [(e, d.get("id"), d.get("status")) for e, d in found] == [
        ("batch", first, "cancelled"),
        ("batch", second, "cancelled"),
        ("end", None, None),
    ]
    assert found[0][1]["items"][0]["style_name"] == "Film Noir"


def test_the_live_stream_says_gone_for_another_users_batch(
    pages: TestClient, signed_in: Any
) -> None:
    _, owner = signed_in()
    batch_id = create_batch(pages, owner, ["noir"])
    signed_in()
    assert events(pages.get(f"/live?batch={batch_id}")) == [("gone", {"id": batch_id}), ("end", {})]


def test_the_live_stream_needs_a_session(pages: TestClient) -> None:
    response = pages.get(f"/live?batch={uuid.uuid4()}")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_local_sign_in_is_only_for_this_machine(web_settings: Settings, make_user: Any) -> None:
    """Reached from elsewhere, the server must not let anyone act as any local user."""
    user, _headers = make_user()
    with TestClient(create_app(web_settings, worker=False), client=("203.0.113.7", 4000)) as remote:
        page = remote.get("/signin").text
        assert user.email not in page and 'name="access_token"' in page
        refused = remote.post("/signin", data={"email": user.email}, follow_redirects=False)
        assert refused.status_code == 400 and "portraitkit_session" not in refused.cookies
