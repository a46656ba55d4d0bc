"""The app's HTTP API: the endpoints its screens call, each acting as the bearer's user.

Every route maps onto one call of :class:`~portraitkit.client.PortraitClient`, so rules
stay in the SQL contract; errors come back as ``{"code", "message", "details"}`` with
the HTTP status the contract's code maps to (docs/contract.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from itertools import groupby
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from portraitkit.client import PortraitClient
from portraitkit.errors import (
    InvalidInput,
    NotAuthenticated,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from portraitkit.models import BatchStatus, CancelResult, DeleteResult, RetryResult
from portraitkit.models import Stats as StatsOut
from portraitkit.storage import MAX_SOURCE_BYTES
from portraitkit.web.backend import Backend
from portraitkit.web.schemas import (
    NO_NUL,
    BatchDetail,
    BatchList,
    CreateFromStorage,
    ErrorBody,
    StyleCategory,
    StyleOut,
)

# A multipart body carries the photo plus a few short fields.
MAX_UPLOAD_BYTES = MAX_SOURCE_BYTES + 64 * 1024
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (400, "Invalid input (`details.field` names the argument)"),
        (401, "No valid access token"),
        (402, "Insufficient credits"),
        (403, "Not allowed"),
        (404, "No such batch (or, for a new one, no such stored photo) for this user"),
        (409, "The batch's state does not allow it"),
        (413, "Upload too large"),
        (415, "Unsupported body type"),
        (503, "The database is unavailable"),
    ]
}

router = APIRouter()
# Declares the bearer scheme in the OpenAPI document; `bearer` below answers its errors.
BEARER_SCHEME = HTTPBearer(auto_error=False, description="The user's access token.")


def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def bearer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)],
) -> tuple[str, dict[str, Any]]:
    """The request's verified access token and its claims (a signed-in user's only)."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise NotAuthenticated("Send the user's access token as `Authorization: Bearer <token>`.")
    return token, await backend_of(request).user_claims(token)


async def user_client(
    request: Request, auth: Annotated[tuple[str, dict[str, Any]], Depends(bearer)]
) -> AsyncIterator[PortraitClient]:
    async with backend_of(request).client(*auth) as client:
        yield client


Client = Annotated[PortraitClient, Depends(user_client)]


CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["photo", "styles"],
                    "properties": {
                        "photo": {"type": "string", "format": "binary"},
                        "styles": {
                            "type": "array",
                            "items": {"type": "string", "pattern": NO_NUL},
                            "minItems": 1,
                        },
                        "custom_prompt": {"type": "string", "pattern": NO_NUL},
                    },
                },
                "encoding": {"styles": {"style": "form", "explode": True}},
            },
            "application/json": {"schema": CreateFromStorage.model_json_schema()},
        },
    }
}


@router.post(
    "/api/generate/batch",
    status_code=201,
    response_model=BatchDetail,
    responses=ERRORS,
    openapi_extra=CREATE_BODY,
    summary="Pay once for several styles of one photo",
)
async def create_batch(
    request: Request,
    client: Client,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> BatchDetail:
    """Upload a photo (multipart: `photo`, repeated `styles`, optional `custom_prompt`) or
    name one already in storage (JSON: `styles`, `source_path`, `custom_prompt`). The same
    `Idempotency-Key` returns the first batch and charges nothing."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    source: str | bytes
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_UPLOAD_BYTES:
            raise _too_large(declared)
        async with request.form(max_files=1, max_fields=40) as form:
            photo = form.get("photo")
            if not isinstance(photo, UploadFile):
                raise InvalidInput(
                    "Attach the photo as the `photo` file field.", details={"field": "photo"}
                )
            source = await photo.read(MAX_SOURCE_BYTES + 1)
            if len(source) > MAX_SOURCE_BYTES:
                raise _too_large(len(source))
            styles = [s for s in form.getlist("styles") if isinstance(s, str)]
            prompt = form.get("custom_prompt")
            custom_prompt = prompt if isinstance(prompt, str) and prompt else None
        for field, texts in (("styles", styles), ("custom_prompt", [custom_prompt or ""])):
            if any("\x00" in text for text in texts):
                raise InvalidInput(f"{field} may not contain NUL.", details={"field": field})
    elif content_type == "application/json":
        try:
            body = CreateFromStorage.model_validate_json(await request.body())
        except ValidationError as exc:
            raise invalid_input(exc.errors(), where="body") from exc
        source, styles, custom_prompt = body.source_path, body.styles, body.custom_prompt
    else:
        raise UnsupportedMediaType(
            "Send multipart/form-data (a photo) or application/json (a stored photo).",
            details={"content_type": content_type},
        )
    batch_id = await client.create_batch(styles, source, custom_prompt, idempotency_key)
    return await backend_of(request).detail(client, batch_id)


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is {size} bytes; a photo may have at most {MAX_SOURCE_BYTES}.",
        details={"field": "photo", "max_bytes": MAX_SOURCE_BYTES, "given": size},
    )


def invalid_input(errors: Sequence[Any], *, where: str) -> InvalidInput:
    """pydantic's (or FastAPI's) validation errors as the contract's ``invalid_input``,
    naming the first offending field; ``where`` when the errors name none."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or where
    return InvalidInput(f"{field}: {first.get('msg', 'invalid')}.", details={"field": field})


@router.get("/api/user/batches", response_model=BatchList, responses=ERRORS)
async def list_batches(
    request: Request,
    client: Client,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=100, pattern=NO_NUL, description="The previous page's `next_cursor`."),
    ] = None,
    status: BatchStatus | None = None,
) -> BatchList:
    """The gallery, newest first; pass `next_cursor` back as `cursor` for the next page."""
    try:
        page = await client.list_batches(status, limit, cursor)
    except InvalidInput as exc:  # the SQL contract calls the cursor `after`; here it is `cursor`
        if exc.details.get("field") != "after":
            raise
        raise InvalidInput(
            "cursor is not a `next_cursor` from this list.", details={"field": "cursor"}
        ) from exc
    backend = backend_of(request)
    items = [await backend.card(client, b) for b in page.items]
    return BatchList(items=items, next_cursor=page.next_cursor)


@router.get("/api/user/batches/{batch_id}", response_model=BatchDetail, responses=ERRORS)
async def get_batch(request: Request, client: Client, batch_id: UUID) -> BatchDetail:
    """One batch with each of its photos, their states and signed image URLs."""
    return await backend_of(request).detail(client, batch_id)


@router.post("/api/user/batches/{batch_id}/cancel", response_model=CancelResult, responses=ERRORS)
async def cancel_batch(client: Client, batch_id: UUID) -> CancelResult:
    """Cancel (and refund) what has not started; running items finish."""
    return await client.cancel_batch(batch_id)


@router.post("/api/user/batches/{batch_id}/retry", response_model=RetryResult, responses=ERRORS)
async def retry_failed(client: Client, batch_id: UUID) -> RetryResult:
    """Run the failed items again; their cost is charged again."""
    return await client.retry_failed(batch_id)


@router.delete("/api/user/batches/{batch_id}", response_model=DeleteResult, responses=ERRORS)
async def delete_batch(client: Client, batch_id: UUID) -> DeleteResult:
    """Delete the batch and its images; what had not finished is refunded."""
    return await client.delete_batch(batch_id)


@router.get("/api/user/stats", response_model=StatsOut, responses=ERRORS)
async def stats(client: Client) -> StatsOut:
    return await client.stats()


@router.get("/api/styles", response_model=list[StyleCategory], responses=ERRORS)
async def styles(request: Request) -> list[StyleCategory]:
    """The catalogue by category (one section per category screen), with costs."""
    async with backend_of(request).client(None, None) as client:
        catalogue = await client.styles()
    return [
        StyleCategory(
            category=category,
            styles=[StyleOut.model_validate(s.model_dump()) for s in group],
        )
        for category, group in groupby(catalogue, key=lambda s: s.category)
    ]
