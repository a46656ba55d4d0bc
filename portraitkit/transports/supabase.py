"""supabase-py: the hosted path, PostgREST, Supabase Auth and Storage over HTTPS.

The same calls as the direct transport, carried by supabase-py's async client. What this
module adds is the policy a phone-network-grade connection needs:

- **Retries we control.** postgrest-py's own retry is switched off
  (``postgrest_client_retry=False``): it would resend GETs only, with delays of seconds.
  We resend a call after a dropped connection, a timeout or a transient 5xx only when the
  caller marked it ``retry_safe`` (reads, and creates, which always carry an idempotency
  key); anything else surfaces :class:`DatabaseUnavailable` at once, because resending
  e.g. ``cancel_batch`` blind could act twice.
- **One refresh on an expired token.** PostgREST answers 401 ``PGRST303`` "JWT expired"
  (``PGRST301`` before v12); we refresh the session once and resend. No background timer
  (``auto_refresh_token=False``), so nothing races a call or outlives :meth:`aclose`.
- **The same typed errors.** Error bodies go through :func:`error_from_payload`, exactly
  as the direct transport's PGRST errors do.
- **Keys in ``apikey``, JWTs in ``Authorization``.** Supabase's publishable and secret keys
  (``sb_publishable_...``, ``sb_secret_...``) are not JWTs. The gateway wants them in
  ``apikey`` only and acts as their role (anon, service_role) when no ``Authorization``
  comes with them; a ``Bearer`` that is not a JWT reaches PostgREST, which refuses it
  (401 ``PGRST301`` "Expected 3 parts in JWT; got 1"), and Storage likewise. supabase-py
  (as of 2.34.1, its newest release) sends the key as ``Authorization: Bearer <key>``
  until someone signs in, and hands it to Realtime as the join's ``access_token``
  (supabase/supabase-py#1230): a request hook on our httpx client drops such a header, and
  Realtime only ever gets a JWT or nothing (then it uses the socket's token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import httpx
import jwt
from postgrest.exceptions import APIError
from realtime import AsyncRealtimeClient
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from supabase_auth.errors import AuthError, AuthRetryableError
from supabase_auth.types import AuthChangeEvent, Session

from portraitkit.errors import (
    DatabaseUnavailable,
    NotAuthenticated,
    PortraitkitError,
    TransportTimeout,
    error_from_payload,
)
from portraitkit.storage import DEFAULT_BUCKET, SupabaseStorage
from portraitkit.transports.base import RetryPolicy

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

# Gateway and PostgREST answers that mean "try again shortly": 502/503/504 from the API
# gateway, 520 from Cloudflare, PGRST000-003 (no database connection, schema cache not
# loaded, pool acquisition timeout; PostgREST docs, references/errors) and SQLSTATE 08*.
TRANSIENT_STATUSES = frozenset({502, 503, 504, 520})
TRANSIENT_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
# 401 with these: the JWT expired (PGRST303 since PostgREST 12, PGRST301 before).
TOKEN_REJECTED_CODES = frozenset({"PGRST301", "PGRST303"})

# postgrest-py's APIError carries the body but not the HTTP status, which we need (is it a
# 503? a 401?). A response hook on our httpx client records it for the current task.
_last_status: ContextVar[int | None] = ContextVar("portraitkit_last_status", default=None)


async def _record_status(response: httpx.Response) -> None:
    _last_status.set(response.status_code)


def is_jwt(token: str) -> bool:
    """A compact JWS (``header.payload.signature``), the only bearer PostgREST, Storage and
    Realtime take; Supabase's publishable and secret keys are not."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


class _BearerOnlyJwt:
    """Request hook: drops ``Authorization: Bearer <not a JWT>`` on the project's requests
    (only there: a shared client may carry other services' opaque tokens). Without it the
    gateway acts on ``apikey``: the publishable key as anon, the secret key as service_role.
    """

    def __init__(self, base_url: str) -> None:
        self.host = httpx.URL(base_url).host

    async def __call__(self, request: httpx.Request) -> None:
        if request.url.host != self.host:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and not is_jwt(token.strip()):
            del request.headers["authorization"]


def _install_hooks(http: httpx.AsyncClient, url: str) -> None:
    if _record_status not in http.event_hooks["response"]:
        http.event_hooks["response"].append(_record_status)
    host = httpx.URL(url).host
    request_hooks = http.event_hooks["request"]
    if not any(isinstance(h, _BearerOnlyJwt) and h.host == host for h in request_hooks):
        request_hooks.append(_BearerOnlyJwt(url))


def _realtime_jwt_only(realtime: AsyncRealtimeClient, access_token: str | None) -> None:
    """Realtime takes a join's ``access_token`` as the subscriber's JWT and refuses anything
    else ("InvalidJWTToken: Token claims must be a map"); a join without one acts with the
    socket's token, which the gateway derives from ``apikey``. supabase-py starts with the
    project key there and puts it back on sign-out, so only JWTs get through ``set_auth``.
    A token given at connect is the user's from the first join on (supabase-py would join
    with the key until an auth event, which a held token never causes)."""
    if access_token is not None:
        realtime.access_token = access_token
    elif not is_jwt(realtime.access_token or ""):
        realtime.access_token = None
    set_auth = realtime.set_auth

    async def set_auth_jwt_only(token: str | None) -> None:
        await set_auth(token if token is not None and is_jwt(token) else None)

    realtime.set_auth = set_auth_jwt_only  # type: ignore[method-assign]


def _token_subject(token: str | None) -> str | None:
    """The ``sub`` of a JWT, read without verifying (the server verifies it)."""
    if not token:
        return None
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return str(sub) if sub else None


class _CurrentStorage:
    """storage3 as SupabaseStorage expects it, always the client's current one: supabase-py
    rebuilds ``client.storage`` with the new Authorization header after a refresh."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def from_(self, bucket: str) -> Any:
        return self._client.storage.from_(bucket)


class SupabaseTransport:
    """Calls the SQL contract through a Supabase project's API for one identity."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        access_token: str,
        refresh_token: str | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        owns_http_client: bool = False,
    ) -> None:
        self.client = client
        self.retry = retry or RetryPolicy()
        self._access_token = access_token
        self._refresh_token = refresh_token
        self._http = http_client
        self._owns_http = owns_http_client
        client.auth.on_auth_state_change(self._on_auth_change)

    # -- constructors -------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        key: str,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> SupabaseTransport:
        """A transport with the project's ``key`` as its identity (publishable or legacy
        anon: anonymous; secret or legacy service role: the service role), or a user's
        ``access_token`` when given. ``http_client`` is shared by PostgREST, Auth and
        Storage (its own timeout applies); otherwise one is made with ``timeout``."""
        http = http_client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        _install_hooks(http, url)
        options = AsyncClientOptions(
            httpx_client=http,
            postgrest_client_retry=False,
            auto_refresh_token=False,
        )
        if access_token:
            options.headers["Authorization"] = f"Bearer {access_token}"
        try:
            client = await acreate_client(url, key, options)
        except Exception:
            if http_client is None:
                await http.aclose()
            raise
        _realtime_jwt_only(client.realtime, access_token)
        return cls(
            client,
            access_token=access_token or key,
            refresh_token=refresh_token,
            retry=retry,
            http_client=http,
            owns_http_client=http_client is None,
        )

    @classmethod
    async def sign_in(
        cls, url: str, anon_key: str, email: str, password: str, **options: Any
    ) -> SupabaseTransport:
        """Sign in with email and password (Supabase Auth's password grant)."""
        transport = await cls.connect(url, anon_key, **options)
        try:
            await transport.client.auth.sign_in_with_password(
                {"email": email, "password": password}
            )
        except AuthRetryableError as exc:
            await transport.aclose()
            raise DatabaseUnavailable(f"Supabase Auth cannot be reached: {exc.message}") from exc
        except AuthError as exc:
            await transport.aclose()
            raise NotAuthenticated(f"Sign-in failed: {exc.message}") from exc
        return transport

    @classmethod
    async def from_access_token(
        cls,
        url: str,
        anon_key: str,
        access_token: str,
        refresh_token: str | None = None,
        **options: Any,
    ) -> SupabaseTransport:
        """Act for a user whose session was obtained elsewhere (e.g. the app's tokens).
        Without a refresh token, an expired access token ends in NotAuthenticated."""
        return await cls.connect(
            url, anon_key, access_token=access_token, refresh_token=refresh_token, **options
        )

    @classmethod
    async def service(cls, url: str, service_role_key: str, **options: Any) -> SupabaseTransport:
        """The worker's and operator's identity: the secret (or legacy service-role) key,
        which bypasses RLS."""
        return await cls.connect(url, service_role_key, **options)

    # -- the Transport protocol ---------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        return _token_subject(self._access_token)

    async def rpc(
        self, function: str, args: Mapping[str, Any] | None = None, *, retry_safe: bool = False
    ) -> Any:
        params = dict(args or {})
        return await self._call(
            lambda: self.client.rpc(function, params).execute(), retry_safe=retry_safe
        )

    async def select(
        self, table: str, *, columns: Sequence[str] = ("*",), order: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        def build() -> Awaitable[Any]:
            query = self.client.table(table).select(*columns)
            for column in order:
                query = query.order(column)
            return query.execute()

        rows = await self._call(build, retry_safe=True)
        return list(rows)

    def storage(self, bucket: str = DEFAULT_BUCKET) -> SupabaseStorage:
        """The project's Storage bucket, as this identity (Storage RLS applies)."""
        return SupabaseStorage(_CurrentStorage(self.client), bucket)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    # -- policy -------------------------------------------------------------------------

    async def _call(self, send: Callable[[], Awaitable[Any]], *, retry_safe: bool) -> Any:
        """Send, and send again after a transient failure if the caller marked the call
        safe to repeat (the request is rebuilt each time, so a refreshed token is used)."""
        if not retry_safe:
            return await self._send(send)
        result: Any = None
        async for attempt in self.retry.retrying("Supabase API call"):
            with attempt:
                result = await self._send(send)
        return result

    async def _send(self, send: Callable[[], Awaitable[Any]]) -> Any:
        """One request, and once more after refreshing an expired token; its failure as a
        typed error."""
        refreshed = False
        while True:
            _last_status.set(None)
            try:
                return (await send()).data
            except APIError as exc:
                status = _last_status.get()
                if status == 401 and exc.code in TOKEN_REJECTED_CODES:
                    if refreshed:
                        raise NotAuthenticated(
                            f"The access token was refused after a refresh: {exc.message}"
                        ) from exc
                    await self._refresh(exc.message)
                    refreshed = True
                    continue
                if _is_transient(exc.code, status):
                    raise _unavailable(exc, status) from exc
                raise error_from_payload(
                    exc.code, exc.message, exc.details, exc.hint, status
                ) from exc
            except httpx.TimeoutException as exc:
                raise TransportTimeout(f"The Supabase API did not answer in time: {exc!r}") from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise DatabaseUnavailable(f"The connection to Supabase was lost: {exc!r}") from exc

    async def _refresh(self, refused_because: str | None = None) -> None:
        if not self._refresh_token:
            raise NotAuthenticated(
                f"The access token was refused ({refused_because or 'expired'}): sign in again."
            )
        try:
            # Pass the token: without it supabase_auth would first refresh an expired
            # session inside get_session(), then refresh again.
            await self.client.auth.refresh_session(self._refresh_token)
        except AuthRetryableError as exc:
            raise DatabaseUnavailable(f"Supabase Auth cannot be reached: {exc.message}") from exc
        except AuthError as exc:
            raise NotAuthenticated(
                f"The session could not be refreshed ({exc.message}): sign in again."
            ) from exc

    def _on_auth_change(self, event: AuthChangeEvent, session: Session | None) -> None:
        """Follow the session supabase-py holds (it updates its own headers likewise)."""
        if session is not None:
            self._access_token = session.access_token
            self._refresh_token = session.refresh_token
        elif event == "SIGNED_OUT":
            self._access_token = self.client.supabase_key
            self._refresh_token = None


def _is_transient(code: str | None, status: int | None) -> bool:
    return status in TRANSIENT_STATUSES or code in TRANSIENT_CODES or (code or "").startswith("08")


def _unavailable(exc: APIError, status: int | None) -> PortraitkitError:
    """A transient API failure as a typed error: a timeout, or the database unavailable."""
    details = {"code": exc.code, "http_status": status}
    message = exc.message or f"The Supabase API answered HTTP {status}."
    if status == 504 or exc.code == "PGRST003":
        return TransportTimeout(message, details=details, hint=exc.hint)
    return DatabaseUnavailable(message, details=details, hint=exc.hint)
