"""The served OpenAPI document is a true description of the server: schemathesis generates
requests for every operation in it (valid ones and invalid ones) and each response must be
no 5xx and must match the document (status code, content type, body schema).

The requests act as one signed-in user with a few credits, on the module's real database,
through the ASGI app in process (schemathesis runs its lifespan; no in-process worker).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import shutdown_lifespans

from portraitkit.auth import create_local_user, issue_user_token
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.settings import Settings
from portraitkit.web import create_app

from .conftest import SECRET

# The document is built here, at import, because schemathesis makes one test per operation
# when the module is collected (its fixture-based loader does not run under pytest 9.2);
# `test_the_served_document_is_the_one_tested` ties it to what `/openapi.json` serves.
DOCUMENT: dict[str, Any] = create_app(Settings(jwt_secret=SECRET), worker=False).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(modes=["positive", "negative"], deterministic=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def bearer_headers(db_url: str) -> dict[str, str]:
    """One user's access token, sent with every generated request."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@openapi.test", 30)
    return {"Authorization": f"Bearer {issue_user_token(SECRET, user.id, user.email)}"}


@pytest.fixture(scope="module")
def served_app(web_settings: Settings) -> Iterator[FastAPI]:
    """The app on the module's database; schemathesis starts its lifespan on first call."""
    yield create_app(web_settings, worker=False)
    shutdown_lifespans()  # the pool and change feed close before the database is dropped


def test_the_served_document_is_the_one_tested(api: TestClient) -> None:
    assert api.get("/openapi.json").json() == DOCUMENT


# Every operation, the event stream included: a generated batch id is never one of the
# user's batches, so it answers 404 (or 400) at once; streams that run are tested below.
@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, served_app: FastAPI, bearer_headers: dict[str, str]
) -> None:
    case.call_and_validate(app=served_app, headers=bearer_headers, checks=CHECKS)


def test_a_batch_through_its_life_answers_as_documented(
    served_app: FastAPI, make_user: MakeUser
) -> None:
    """The answers random input rarely reaches: a created batch, its card, its detail, its
    events, and the refusals of a finished batch."""
    _user, headers = make_user(credits=10)
    batch = {"path_parameters": {"batch_id": _create(served_app, headers)}}

    def status(method: str, path: str, **case: Any) -> int:
        return _call(served_app, headers, method, path, **case).status_code

    assert status("GET", "/api/user/batches", query={"limit": 1}) == 200
    assert status("GET", "/api/user/batches/{batch_id}", **batch) == 200
    assert status("POST", "/api/user/batches/{batch_id}/cancel", **batch) == 200
    assert status("GET", EVENTS, **batch) == 200  # one `end` event, and the stream closes
    assert status("POST", "/api/user/batches/{batch_id}/cancel", **batch) == 409
    assert status("POST", "/api/user/batches/{batch_id}/retry", **batch) == 409
    assert status("DELETE", "/api/user/batches/{batch_id}", **batch) == 200
    assert status("GET", "/api/user/batches/{batch_id}", **batch) == 404


def test_a_stream_whose_batch_is_deleted_answers_as_documented(
    served_app: FastAPI, make_user: MakeUser
) -> None:
    _user, headers = make_user(credits=10)
    batch = {"path_parameters": {"batch_id": _create(served_app, headers)}}
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(_call, served_app, headers, "GET", EVENTS, **batch)
        deadline = time.monotonic() + 30
        while served_app.state.events.watchers == 0:  # until the stream is open
            assert time.monotonic() < deadline and not stream.done()
            time.sleep(0.05)
        _call(served_app, headers, "DELETE", "/api/user/batches/{batch_id}", **batch)
        response = stream.result(timeout=30)
    assert response.status_code == 200
    assert response.text.count("event: deleted") == 1


EVENTS = "/api/user/batches/{batch_id}/events"
MakeUser = Callable[..., tuple[Any, dict[str, str]]]


def _call(app: FastAPI, headers: dict[str, str], method: str, path: str, **case: Any) -> Any:
    """One request as `headers`' user, its answer checked against the document."""
    return (
        schema[path][method].Case(**case).call_and_validate(app=app, headers=headers, checks=CHECKS)
    )


def _create(app: FastAPI, headers: dict[str, str]) -> str:
    body = {"photo": sample_portrait_png(), "styles": ["noir", "poster"]}
    response = _call(
        app, headers, "POST", "/api/generate/batch", body=body, media_type="multipart/form-data"
    )
    assert response.status_code == 201, response.text
    batch_id: str = response.json()["id"]
    return batch_id
