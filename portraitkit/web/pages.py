"""The web pages (sign-in, gallery, batch, new batch): server-rendered HTML over the API.

How a page acts for its user:

- Signing in puts the user's access token in an HttpOnly, SameSite=Lax session cookie. In
  embedded and direct-Postgres modes the server issues that token for a local user picked
  on /signin; on Supabase the page takes a token the user pastes (from Supabase Auth).
- Pages read the cookie server-side and render with the user's own client (RLS applies).
  Each page also carries the token in a ``<meta>`` tag, and its JavaScript calls the JSON
  API with ``Authorization: Bearer``: the API never accepts the cookie, so no other site
  can make a signed-in browser change anything (no CSRF surface).
- Live progress comes from ``/live?batch=...``, a page-side Server-Sent Events stream that
  reads the cookie (EventSource cannot send headers). The token never goes into a URL, where
  access logs, history and Referer headers would keep it; one stream carries every watched
  batch, so a gallery with many running batches holds one connection, not one per card.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit
from uuid import UUID

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent

from portraitkit import admin
from portraitkit.errors import (
    InvalidInput,
    NotAllowed,
    NotAuthenticated,
    NotFound,
    PortraitkitError,
)
from portraitkit.models import BatchStatus
from portraitkit.storage import MAX_SOURCE_BYTES
from portraitkit.web.api import styles as style_catalogue
from portraitkit.web.backend import Backend
from portraitkit.web.events import BatchEvents

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "portraitkit_session"
SESSION_SECONDS = 8 * 3600  # a local sign-in lasts a working day
GALLERY_PAGE = 24
MAX_WATCHED = 50
KEEPALIVE_SECONDS = 15
STATUS_LABELS = {
    BatchStatus.PENDING: "Queued",
    BatchStatus.PROCESSING: "In progress",
    BatchStatus.COMPLETED: "Completed",
    BatchStatus.PARTIAL: "Partly done",
    BatchStatus.FAILED: "Failed",
    BatchStatus.CANCELLED: "Cancelled",
}

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


@cache
def static_url(name: str) -> str:
    """The file's URL with a hash of its content, so a new release is never served stale."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={digest}"


def _local_time(moment: datetime) -> str:
    """UTC on the server; the page's script rewrites it in the reader's own time zone."""
    return moment.strftime("%-d %b %Y, %H:%M UTC")


templates.env.globals.update(
    static=static_url, labels={str(k): v for k, v in STATUS_LABELS.items()}
)
templates.env.filters["when"] = _local_time


def install_pages(app: FastAPI) -> None:
    """Add the pages' routes and static files to ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.state.previews = Previews()


@dataclass(frozen=True)
class Session:
    """The signed-in user of a page request: their verified token and its claims."""

    token: str
    claims: dict[str, Any]

    @property
    def email(self) -> str:
        return str(self.claims.get("email") or self.claims.get("sub") or "")


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def _session(request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        return Session(token, await _backend(request).user_claims(token))
    except (NotAuthenticated, NotAllowed):
        return None


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _to_signin(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(here, safe='')}", status_code=303)


def _headers(request: Request) -> dict[str, str]:
    """Pages hold a token: never cached; scripts, styles and everything else from here only."""
    images = "'self' data: blob:"
    supabase = _backend(request).settings.supabase_url
    if supabase:
        parts = urlsplit(supabase)
        images += f" {parts.scheme}://{parts.netloc}"
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            f"default-src 'self'; img-src {images}; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'"
        ),
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
    }


async def _render(
    request: Request,
    template: str,
    session: Session | None,
    *,
    status: int = 200,
    balance: int | None = None,
    **context: Any,
) -> Response:
    """The page, with the header's balance (read here unless the caller has it)."""
    if session is not None and balance is None:
        async with _backend(request).client(session.token, session.claims) as client:
            balance = await client.balance()
    return templates.TemplateResponse(
        request,
        template,
        {"session": session, "balance": balance, "mode": _backend(request).mode, **context},
        status_code=status,
        headers=_headers(request),
    )


# -- sign-in ----------------------------------------------------------------------------


@router.get("/signin")
async def signin_page(request: Request, next: str | None = None) -> Response:
    return await _signin_form(request, _safe_next(next))


def _local_signin(request: Request) -> bool:
    """Signing in as any local user by name is for a developer's own machine: only in
    embedded and direct-Postgres modes, and only from this machine (a server reachable from
    elsewhere must not let anyone act as any user). Everyone else pastes a real token."""
    if _backend(request).mode == "supabase" or request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


async def _signin_form(
    request: Request, next_path: str, *, error: str | None = None, email: str = ""
) -> Response:
    local = _local_signin(request)
    users: list[admin.UserAccount] = []
    if local:
        users = await asyncio.to_thread(admin.list_users, _backend(request).settings)
    return await _render(
        request,
        "signin.html",
        None,
        status=400 if error else 200,
        local=local,
        users=users[-20:][::-1],  # the newest twenty
        next=next_path,
        error=error,
        email=email,
    )


@router.post("/signin")
async def signin(request: Request) -> Response:
    backend = _backend(request)
    async with request.form(max_files=0, max_fields=5) as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    next_path = _safe_next(fields.get("next"))
    email, pasted = fields.get("email", "").strip(), fields.get("access_token", "").strip()
    try:
        if pasted:
            token = pasted
            claims = await backend.user_claims(token)
            ttl = max(60, int(claims["exp"]) - int(time.time()))
        elif _local_signin(request) and email:
            issued = await asyncio.to_thread(
                admin.user_token, backend.settings, email, SESSION_SECONDS
            )
            token, ttl = issued.access_token, issued.expires_in
        else:
            raise InvalidInput("Pick a user, or enter an email or an access token.")
    except PortraitkitError as exc:
        return await _signin_form(request, next_path, error=exc.message, email=email)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=ttl,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.api_route("/signout", methods=["GET", "POST"])
async def signout() -> Response:
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="lax")
    return response


# -- the pages --------------------------------------------------------------------------


@router.get("/")
async def gallery(
    request: Request,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    created: UUID | None = None,
) -> Response:
    session = await _session(request)
    if session is None:
        return _to_signin(request)
    backend = _backend(request)
    async with backend.client(session.token, session.claims) as client:
        try:
            page = await client.list_batches(None, GALLERY_PAGE, cursor)
        except InvalidInput:  # a stale or hand-made cursor: start from the newest
            page = await client.list_batches(None, GALLERY_PAGE, None)
            cursor = None
        cards = [await backend.card(client, b) for b in page.items]
        balance = await client.balance()
    return await _render(
        request,
        "gallery.html",
        session,
        balance=balance,
        cards=cards,
        next_cursor=page.next_cursor,
        first_page=cursor is None,
        created=str(created) if created else None,
    )


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str) -> Response:
    session = await _session(request)
    if session is None:
        return _to_signin(request)
    backend = _backend(request)
    async with backend.client(session.token, session.claims) as client:
        balance = await client.balance()
        try:
            batch = await backend.detail(client, batch_id)
        except (NotFound, InvalidInput):  # another user's batch looks like none at all
            return await _render(request, "missing.html", session, status=404, balance=balance)
    return await _render(request, "batch.html", session, batch=batch, balance=balance)


@router.get("/new")
async def new_batch(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _to_signin(request)
    return await _render(
        request,
        "new.html",
        session,
        categories=await style_catalogue(request),
        previews=previewed_styles(),
        max_bytes=MAX_SOURCE_BYTES,
    )


# -- live progress ----------------------------------------------------------------------


@router.get("/live")
async def live(
    request: Request, batch: Annotated[list[UUID], Query(min_length=1, max_length=MAX_WATCHED)]
) -> EventSourceResponse:
    """``batch`` events (the batch as the API returns it) for each named batch whenever it
    changes, ``gone`` for one that does not exist (for this user), then one ``end`` event
    once every batch has reached a final state."""
    session = await _session(request)
    if session is None:
        raise NotAuthenticated("Sign in first.")
    events: BatchEvents = request.app.state.events
    ids = list(dict.fromkeys(str(b) for b in batch))
    return EventSourceResponse(_stream(events, ids, session), ping=KEEPALIVE_SECONDS)


async def _stream(
    events: BatchEvents, ids: list[str], session: Session
) -> AsyncIterator[ServerSentEvent]:
    token, claims = session.token, session.claims
    async with contextlib.AsyncExitStack() as stack:
        # Watch first, then read: a change between the two is seen, not lost.
        watchers = {i: await stack.enter_async_context(events.watch(i, token, claims)) for i in ids}
        running: set[str] = set()
        for batch_id in ids:
            try:
                state = await events.read(batch_id, token, claims)
            except NotFound:
                yield ServerSentEvent(data=json.dumps({"id": batch_id}), event="gone")
                continue
            yield ServerSentEvent(data=state.model_dump_json(), event="batch")
            if not state.status.is_final:
                running.add(batch_id)
        while running:
            bells = [asyncio.create_task(watchers[i].changed.wait()) for i in running]
            try:
                await asyncio.wait(bells, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for bell in bells:
                    bell.cancel()
            for batch_id in sorted(running):
                watcher = watchers[batch_id]
                if watcher.gone:
                    yield ServerSentEvent(data=json.dumps({"id": batch_id}), event="gone")
                    running.discard(batch_id)
                    continue
                if not watcher.changed.is_set() or watcher.latest is None:
                    continue
                watcher.changed.clear()
                yield ServerSentEvent(data=watcher.latest.model_dump_json(), event="batch")
                if watcher.latest.status.is_final:
                    running.discard(batch_id)
    yield ServerSentEvent(data="{}", event="end")


# -- style previews ---------------------------------------------------------------------


def previewed_styles() -> frozenset[str]:
    """The styles the local generator can show on the sample portrait."""
    from portraitkit.generators.styles import EFFECTS

    return frozenset(EFFECTS)


class Previews:
    """Each style shown on the sample portrait, drawn by the local generator on first
    request and kept in memory: the picker shows what a style does without shipping
    pictures that could drift from the effects."""

    def __init__(self, side: int = 320) -> None:
        self.side = side
        self._images: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def get(self, style_key: str) -> bytes | None:
        if style_key not in previewed_styles():
            return None
        async with self._lock:  # one render at a time: the sample is drawn once, then reused
            if style_key not in self._images:
                self._images[style_key] = await asyncio.to_thread(self._render, style_key)
        return self._images[style_key]

    def _render(self, style_key: str) -> bytes:
        from PIL import Image

        from portraitkit.generators.base import GenerationRequest
        from portraitkit.generators.local import LocalGenerator
        from portraitkit.generators.sample import sample_portrait_png

        request = GenerationRequest(source=sample_portrait_png(), style_key=style_key, prompt="")
        png = LocalGenerator(max_side=self.side).render(request).data
        out = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG", quality=82)
        return out.getvalue()


@router.get("/previews/{style_key}.jpg")
async def preview(request: Request, style_key: str) -> Response:
    previews: Previews = request.app.state.previews
    image = await previews.get(style_key)
    if image is None:
        raise NotFound("No preview for this style.", details={"style_key": style_key})
    return Response(image, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
