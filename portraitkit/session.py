"""Open a client for a user, whichever database the settings name.

Embedded or DATABASE_URL: the direct-Postgres transport with a local identity (a user in
``auth.users`` and a JWT signed with the local secret). SUPABASE_URL: supabase-py with a
real sign-in. Either way the caller gets the same :class:`PortraitClient`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import jwt

from portraitkit.auth import LocalUser, find_local_user, issue_user_token
from portraitkit.client import PortraitClient
from portraitkit.database.connection import connect, resolve_database_url
from portraitkit.database.lifecycle import bring_up
from portraitkit.errors import ConfigurationError, NotAuthenticated
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import PostgresTransport, make_pool

REFRESH_MARGIN_SECONDS = 60


@dataclass
class LocalTokens:
    """Plays the auth server for a local user: a fresh token whenever the last is expiring."""

    secret: str
    user: LocalUser
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0

    def __call__(self) -> str:
        if self._token is None or time.time() > self._expires - REFRESH_MARGIN_SECONDS:
            self._token = issue_user_token(self.secret, self.user.id, self.user.email)
            self._expires = float(
                jwt.decode(self._token, options={"verify_signature": False})["exp"]
            )
        return self._token


def database_url(settings: Settings) -> str:
    """The direct database URL; the embedded server is started and migrated on first use."""
    if settings.mode == "embedded":
        return bring_up(settings).url
    return resolve_database_url(settings)


def local_user(url: str, email_or_id: str) -> LocalUser:
    with connect(url, autocommit=True) as conn:
        user = find_local_user(conn, email_or_id)
    if user is None:
        raise NotAuthenticated(
            f"No user {email_or_id!r}: create one with `portraitkit users create EMAIL`.",
            details={"user": email_or_id},
        )
    return user


async def open_client(
    settings: Settings | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
    access_token: str | None = None,
) -> PortraitClient:
    """A client acting for one user.

    ``user`` is an email (or, locally, a user id); ``password`` signs in on Supabase;
    ``access_token`` uses a token the caller already holds.
    """
    settings = settings or Settings()
    if settings.mode == "supabase":
        return await _open_supabase(settings, user, password, access_token)
    url = await asyncio.to_thread(database_url, settings)
    secret = settings.jwt_secret_value()
    if access_token is not None:
        token = access_token
        tokens = lambda: token  # noqa: E731 - a constant token source
    elif user is not None:
        tokens = LocalTokens(secret, await asyncio.to_thread(local_user, url, user))
    else:
        raise NotAuthenticated("Name a user (email or id) or pass an access token.")
    pool = make_pool(url)
    await pool.open()
    transport = PostgresTransport(pool, tokens, secret, owns_pool=True)
    return PortraitClient(transport, LocalStorage(settings.state_dir / "storage"))


async def _open_supabase(
    settings: Settings, user: str | None, password: str | None, access_token: str | None
) -> PortraitClient:
    from portraitkit.transports.supabase import SupabaseTransport

    if settings.supabase_url is None or settings.supabase_anon_key is None:
        raise ConfigurationError(
            "A user session on Supabase needs SUPABASE_URL and SUPABASE_ANON_KEY."
        )
    url, key = settings.supabase_url, settings.supabase_anon_key.get_secret_value()
    if access_token is not None:
        transport = await SupabaseTransport.from_access_token(url, key, access_token)
    elif user is not None and password is not None:
        transport = await SupabaseTransport.sign_in(url, key, user, password)
    else:
        raise NotAuthenticated(
            "On Supabase, sign in with an email and password or an access token."
        )
    return PortraitClient(transport, transport.storage())
