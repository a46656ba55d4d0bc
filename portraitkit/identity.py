"""The one place that opens a client for an identity — a user, the service, or nobody — in
whichever mode the settings name (embedded, a DATABASE_URL, a Supabase project).

Everything that acts on the database asks here: the CLI and scripts for a user, operator
commands and the worker for the service role, the web server for each request's user.

- Direct modes: the direct-Postgres transport with a JWT the transport verifies as
  PostgREST would (a local user's token signed with the local secret, a token the caller
  holds, or the service role's), and the local storage directory. A held token may be
  signed with the local secret or, from a Supabase project, with its published key pair
  (``Settings.signing_keys_url``).
- Supabase: supabase-py with a real sign-in, a token the caller holds, the secret key
  (service role) or the publishable key (anonymous), and Supabase Storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from portraitkit.auth import issue_service_token, shared_verifier
from portraitkit.client import PortraitClient
from portraitkit.errors import ConfigurationError, NotAuthenticated
from portraitkit.session import LocalTokens, database_url, local_user
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import PostgresTransport, make_pool

Verify = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class User:
    """A user: by email (or id) locally, with a password on Supabase, or by a token the
    caller already holds (a request's bearer token)."""

    email_or_id: str | None = None
    password: str | None = None
    access_token: str | None = None


@dataclass(frozen=True)
class Service:
    """The service role (the worker, operator tasks): bypasses RLS, never a user's."""


@dataclass(frozen=True)
class Anonymous:
    """No one signed in: what ``anon`` may read (the styles catalogue)."""


Identity = User | Service | Anonymous
SERVICE = Service()
ANONYMOUS = Anonymous()


async def open_client(
    settings: Settings,
    identity: Identity,
    *,
    pool: AsyncConnectionPool | None = None,
    pool_size: int = 4,
    verify: Verify | None = None,
) -> PortraitClient:
    """A client acting as ``identity``; closing it closes what it opened.

    ``pool`` shares a connection pool the caller owns (a server's requests); ``verify``
    replaces the transport's check of a token (a server has verified it already).
    """
    if settings.mode == "supabase":
        return await _open_supabase(settings, identity)
    secret = settings.jwt_secret_value()
    verifier = shared_verifier(secret, settings.signing_keys_url())
    url: str | None = None
    tokens: Callable[[], str | None]
    if isinstance(identity, Service):
        service_token = issue_service_token(secret)
        tokens = lambda: service_token  # noqa: E731 - a constant token source
    elif isinstance(identity, Anonymous):
        tokens = lambda: None  # noqa: E731
    elif identity.access_token is not None:
        held = identity.access_token
        tokens = lambda: held  # noqa: E731
        if verify is None:  # so that checking it later (``user_id``) need not wait
            await verifier.fetch_key_for(held)
    elif identity.email_or_id is not None:
        url = await asyncio.to_thread(database_url, settings)
        user = await asyncio.to_thread(local_user, url, identity.email_or_id)
        tokens = LocalTokens(secret, user)
    else:
        raise NotAuthenticated("Name a user (email or id) or pass an access token.")
    owns_pool = pool is None
    if pool is None:
        if url is None:
            url = await asyncio.to_thread(database_url, settings)
        pool = make_pool(url, max_size=pool_size)
        await pool.open()
    transport = PostgresTransport(
        pool, tokens, secret, owns_pool=owns_pool, verify=verify, verifier=verifier
    )
    return PortraitClient(transport, LocalStorage(settings.state_dir / "storage"))


async def _open_supabase(settings: Settings, identity: Identity) -> PortraitClient:
    from portraitkit.transports.supabase import SupabaseTransport

    url = settings.supabase_url or ""
    if isinstance(identity, Service):
        if settings.supabase_service_role_key is None:
            raise ConfigurationError(
                "The service role on Supabase needs SUPABASE_SECRET_KEY "
                "(or the legacy SUPABASE_SERVICE_ROLE_KEY)."
            )
        transport: Any = await SupabaseTransport.service(
            url, settings.supabase_service_role_key.get_secret_value()
        )
        return PortraitClient(transport, transport.storage())
    if settings.supabase_anon_key is None:
        raise ConfigurationError(
            "Users on Supabase need SUPABASE_PUBLISHABLE_KEY (or the legacy SUPABASE_ANON_KEY)."
        )
    key = settings.supabase_anon_key.get_secret_value()
    if isinstance(identity, Anonymous):
        transport = await SupabaseTransport.connect(url, key)
    elif identity.access_token is not None:
        transport = await SupabaseTransport.from_access_token(url, key, identity.access_token)
    elif identity.email_or_id is not None and identity.password is not None:
        transport = await SupabaseTransport.sign_in(
            url, key, identity.email_or_id, identity.password
        )
    else:
        raise NotAuthenticated(
            "On Supabase, sign in with an email and password or an access token."
        )
    return PortraitClient(transport, transport.storage())
