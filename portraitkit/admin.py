"""Operator tasks: local user accounts, credit grants, and the identities they run as.

User accounts here are the local identities of :mod:`portraitkit.auth` (rows in
``auth.users`` on the embedded database or a DATABASE_URL), managed over the superuser
connection. Credit grants go through the SQL contract's ``grant_credits`` as the service
role, so each one is written to the ledger like any other credit change.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict

from portraitkit.auth import LocalUser, create_local_user, find_local_user, issue_user_token
from portraitkit.client import PortraitClient
from portraitkit.database.connection import connect
from portraitkit.errors import ConfigurationError, InvalidInput, UserExists, UserNotFound
from portraitkit.identity import ANONYMOUS, SERVICE, open_client
from portraitkit.session import database_url, local_user
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class UserAccount(BaseModel):
    """A user as `portraitkit users list` shows it."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    email: str
    balance: int
    starting_credits: int
    batches: int
    created_at: datetime


ACCOUNTS = """
select u.id, coalesce(u.email, '') as email, p.total_credits as balance, p.starting_credits,
       (select count(*) from public.generation_batches b where b.user_id = u.id)::int as batches,
       u.created_at
  from auth.users u
  join public.profiles p on p.id = u.id
"""


def _direct_url(settings: Settings, what: str) -> str:
    if settings.mode == "supabase":
        raise ConfigurationError(
            f"{what} works on the embedded database or a DATABASE_URL; on a Supabase project "
            "users sign up through Supabase Auth (or set DATABASE_URL to its database)."
        )
    return database_url(settings)


def _account(conn: psycopg.Connection[Any], user_id: UUID) -> UserAccount:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(ACCOUNTS + " where u.id = %s", (user_id,)).fetchone()
    if row is None:
        raise UserNotFound(f"No user {user_id}.", details={"user": str(user_id)})
    return UserAccount.model_validate(row)


def create_user(settings: Settings, email: str, credits: int | None = None) -> UserAccount:
    """Create a local user (with ``credits`` as its starting balance instead of the trial)."""
    if not EMAIL.match(email):
        raise InvalidInput(f"{email!r} is not an email address.", details={"field": "email"})
    if credits is not None and credits < 0:
        raise InvalidInput("credits must be 0 or more.", details={"field": "credits"})
    with connect(_direct_url(settings, "users create"), autocommit=True) as conn:
        if find_local_user(conn, email) is not None:
            raise UserExists(f"A user {email!r} already exists.", details={"email": email})
        try:
            user = create_local_user(conn, email, credits)
        except psycopg.errors.UniqueViolation as exc:  # created meanwhile by someone else
            raise UserExists(f"A user {email!r} already exists.", details={"email": email}) from exc
        return _account(conn, user.id)


def list_users(settings: Settings) -> list[UserAccount]:
    """Every local user with a profile, oldest first."""
    with (
        connect(_direct_url(settings, "users list"), autocommit=True) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        rows = cur.execute(ACCOUNTS + " order by u.created_at, u.email").fetchall()
    return [UserAccount.model_validate(r) for r in rows]


def find_user(settings: Settings, email_or_id: str) -> LocalUser:
    """A local user by email or id."""
    return local_user(_direct_url(settings, "Looking up a user"), email_or_id)


def get_account(settings: Settings, user_id: UUID) -> UserAccount:
    with connect(_direct_url(settings, "Reading a user"), autocommit=True) as conn:
        return _account(conn, user_id)


class DeletedUser(BaseModel):
    """What `portraitkit users delete` removed."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    email: str
    batches: int
    generations: int
    ledger_entries: int  # kept: the ledger outlives the account
    images_removed: int


# Everything of the user's goes with the auth.users row: the profile cascades to batches
# and generations. The credit ledger stays (docs/contract.md, "Credits"). The
# items, then the batches, are locked first in id order, as every writer of the contract
# locks them (docs/contract.md, "Lock order"), so a worker finishing one of them meanwhile
# cannot deadlock with the cascade, which would otherwise lock the profile first.
LOCK_USER_ITEMS = """
select count(*) from (select g.id from public.generations g where g.user_id = %(id)s
                       order by g.id for update) items;
"""
LOCK_USER_BATCHES = """
select count(*) from (select b.id from public.generation_batches b where b.user_id = %(id)s
                       order by b.id for update) batches;
"""
COUNT_LEDGER = "select count(*) from public.credit_ledger l where l.user_id = %(id)s"
DELETE_AUTH_USER = "delete from auth.users u where u.id = %(id)s"


async def delete_user(settings: Settings, email_or_id: str) -> DeletedUser:
    """Delete a local user's account and everything of theirs: rows and stored images."""
    url = _direct_url(settings, "users delete")
    user = await asyncio.to_thread(local_user, url, email_or_id)
    counts = await asyncio.to_thread(_delete_rows, url, user.id)
    # The rows went first: a crash now leaves files no one can see, never a batch whose
    # images are missing.
    images = await LocalStorage(settings.state_dir / "storage").remove_folder(str(user.id))
    return DeletedUser(id=user.id, email=user.email, **counts, images_removed=images)


def _delete_rows(url: str, user_id: UUID) -> dict[str, int]:
    params = {"id": user_id}
    with connect(url) as conn, conn.transaction():
        counts = {
            "generations": _count(conn, LOCK_USER_ITEMS, params),
            "batches": _count(conn, LOCK_USER_BATCHES, params),
            "ledger_entries": _count(conn, COUNT_LEDGER, params),
        }
        if conn.execute(DELETE_AUTH_USER, params).rowcount == 0:  # deleted meanwhile
            raise UserNotFound(f"No user {user_id}.", details={"user": str(user_id)})
    return counts


def _count(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


class AccessToken(BaseModel):
    """What `portraitkit users token` prints with --json."""

    model_config = ConfigDict(frozen=True)

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    user_id: UUID
    email: str


def user_token(settings: Settings, email_or_id: str, ttl: int = 3600) -> AccessToken:
    """An access token for a local user, signed as the API and the database expect."""
    user = find_user(settings, email_or_id)
    token = issue_user_token(settings.jwt_secret_value(), user.id, user.email, ttl=ttl)
    return AccessToken(access_token=token, expires_in=ttl, user_id=user.id, email=user.email)


async def open_service_client(settings: Settings) -> PortraitClient:
    """A client holding the service role (what SUPABASE_SECRET_KEY is on Supabase)."""
    return await open_client(settings, SERVICE, pool_size=2)


async def open_anonymous_client(settings: Settings) -> PortraitClient:
    """A client with no user: enough for what ``anon`` may read (the styles catalogue)."""
    return await open_client(settings, ANONYMOUS, pool_size=2)


async def grant_credits(settings: Settings, user: str, amount: int, note: str | None = None) -> int:
    """Add credits to a user's balance as the service role; returns the new balance.

    ``user`` is an email or id locally; on Supabase, the user's id.
    """
    if settings.mode == "supabase":
        try:
            user_id = str(UUID(user))
        except ValueError as exc:
            raise InvalidInput(
                "On a Supabase project, name the user by id.", details={"field": "user"}
            ) from exc
    else:
        user_id = str((await asyncio.to_thread(find_user, settings, user)).id)
    async with await open_service_client(settings) as client:
        balance = await client.transport.rpc(
            "grant_credits", {"user_id": user_id, "amount": amount, "note": note}
        )
    return int(balance)
