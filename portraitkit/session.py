"""A user's session: local users' tokens, the database URL, and ``open_client`` for scripts.

``open_client(user=...)`` is the short way to :func:`portraitkit.identity.open_client`
for a user; local identities (a user in ``auth.users`` with a JWT signed by the local
secret) are made here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt

from portraitkit.auth import LocalUser, find_local_user, issue_user_token
from portraitkit.client import PortraitClient
from portraitkit.database.connection import connect, resolve_database_url
from portraitkit.database.lifecycle import bring_up
from portraitkit.errors import UserNotFound
from portraitkit.settings import Settings

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
        raise UserNotFound(
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
    """A client acting for one user (see :mod:`portraitkit.identity`).

    ``user`` is an email (or, locally, a user id); ``password`` signs in on Supabase;
    ``access_token`` uses a token the caller already holds.
    """
    from portraitkit.identity import User
    from portraitkit.identity import open_client as open_for

    return await open_for(settings or Settings(), User(user, password, access_token))
