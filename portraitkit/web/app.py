"""The ASGI app: the JSON API, live batch events, signed media, health, and the web pages.

``create_app(settings)`` opens what the process shares at startup (the connection pool,
the change feed) and, in embedded and direct-Postgres modes, runs a worker in the same
process unless told not to, so a batch started on a page fills in with nothing else
running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from portraitkit.errors import NotFound, PortraitkitError
from portraitkit.service import open_worker
from portraitkit.settings import Settings
from portraitkit.web.api import ERRORS, backend_of, bearer, invalid_input, router
from portraitkit.web.backend import Backend
from portraitkit.web.events import BatchEvents
from portraitkit.web.schemas import BatchDetail, Health
from portraitkit.worker import WorkerOptions

log = logging.getLogger("portraitkit.web")
KEEPALIVE_SECONDS = 15.0
# One event of the stream: `batch` and `end` carry the batch, `deleted` only its id.
BATCH_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["batch", "end", "deleted"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/BatchDetail"},
                    {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string", "format": "uuid"}},
                    },
                ]
            },
        },
        "id": {"type": "string", "description": "The batch's `updated_at`."},
    },
}
HTTP_CODES = {
    400: "invalid_input",
    401: "not_authenticated",
    404: "not_found",
    405: "method_not_allowed",
}


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "details": details or {}}, status_code=status
    )


def create_app(settings: Settings | None = None, *, worker: bool = True) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await Backend(settings).start()
        events = await BatchEvents(backend).start()
        app.state.backend, app.state.events = backend, events
        stopping = asyncio.Event()
        worker_task: asyncio.Task[None] | None = None
        if worker and backend.mode != "supabase":
            worker_task = asyncio.create_task(_run_worker(settings, stopping), name="worker")
        try:
            yield
        finally:
            if worker_task is not None:
                stopping.set()  # in-flight items get the worker's grace period
                await asyncio.gather(worker_task, return_exceptions=True)
            await events.aclose()
            await backend.aclose()

    app = FastAPI(
        title="portraitkit",
        version="1",
        summary="Batches of portrait styles: pay once, watch them fill in.",
        lifespan=lifespan,
    )

    @app.exception_handler(PortraitkitError)
    async def contract_error(_request: Request, exc: PortraitkitError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await contract_error(request, invalid_input(exc.errors(), where="request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail))

    app.include_router(router)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses=ERRORS, tags=["health"])
    async def readyz(request: Request) -> Health:
        """The database answers."""
        await backend_of(request).ready()
        return Health(status="ready")

    @app.get(
        "/api/user/batches/{batch_id}/events",
        responses={
            200: {
                # `itemSchema` describes each event, as FastAPI's own SSE routes do.
                "content": {"text/event-stream": {"itemSchema": BATCH_EVENT}},
                "description": "`batch` events carrying the batch (as GET /api/user/batches/"
                "{id} returns it) whenever it changes, then one `end` event with its final "
                "state, or a `deleted` event if it is deleted meanwhile.",
            },
            **ERRORS,
        },
        response_class=EventSourceResponse,
    )
    async def batch_events(
        request: Request,
        batch_id: UUID,
        auth: Annotated[tuple[str, dict[str, Any]], Depends(bearer)],
    ) -> EventSourceResponse:
        """Server-Sent Events of one batch's progress, ending with its final state."""
        events: BatchEvents = request.app.state.events
        token, claims = auth
        first = await events.read(str(batch_id), token, claims)  # 404 for another user's batch
        return EventSourceResponse(
            _stream(events, first, token, claims), ping=int(KEEPALIVE_SECONDS)
        )

    @app.get("/media/{path:path}", include_in_schema=False)
    async def media(
        request: Request, path: str, exp: Annotated[int, Query()], sig: Annotated[str, Query()]
    ) -> FileResponse:
        backend = backend_of(request)
        if backend.media is None:
            raise NotFound("Images are served by Supabase Storage here.")
        backend.media.check(path, exp, sig)
        file = backend.local_storage.file_for(path)
        if not file.is_file():
            raise NotFound("No such image.", details={"path": path})
        return FileResponse(file, headers={"Cache-Control": "private, max-age=3600"})

    from portraitkit.web.pages import install_pages

    install_pages(app)
    return app


def _openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """The document without FastAPI's default 422 answers: invalid input is answered with
    400 and the ErrorBody every error has (`invalid_request` above), which it lists."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            document.get("components", {}).get("schemas", {}).pop(unused, None)
    return app.openapi_schema or {}


async def _stream(
    events: BatchEvents, first: BatchDetail, token: str, claims: dict[str, Any]
) -> AsyncIterator[ServerSentEvent]:
    state = first
    async with events.watch(str(first.id), token, claims) as watcher:
        while True:
            final = state.status.is_final
            yield ServerSentEvent(
                data=state.model_dump_json(),
                event="end" if final else "batch",
                id=state.updated_at.isoformat(),
            )
            if final:
                return
            await watcher.changed.wait()
            watcher.changed.clear()
            if watcher.gone:  # deleted meanwhile: say so, and end the stream
                yield ServerSentEvent(data=f'{{"id": "{first.id}"}}', event="deleted")
                return
            if watcher.latest is not None:
                state = watcher.latest


async def _run_worker(settings: Settings, stopping: asyncio.Event) -> None:
    """The in-process worker of `portraitkit serve`, until the server stops. If it fails,
    the failure is logged and the API goes on serving (batches wait for a worker)."""
    try:
        async with open_worker(settings, WorkerOptions()) as worker:
            run = asyncio.create_task(worker.run())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            worker.stop()
            stop.cancel()
            await run
    except Exception as exc:
        log.error("in-process worker stopped", extra={"event": "worker_failed", "error": str(exc)})
