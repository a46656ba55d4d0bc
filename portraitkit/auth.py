"""Local identities: users in ``auth.users`` and JWTs shaped like Supabase Auth's.

With the embedded database (or any plain PostgreSQL) there is no auth server, so
portraitkit plays its part: it creates users and signs their access tokens with a local
secret, with the claims Supabase puts in its own (``sub``, ``role``, ``aud``, ``exp``,
``email``, ``session_id``, ``is_anonymous``, ``app_metadata``, ``user_metadata``). The
direct transport verifies them exactly as PostgREST would, so both paths run the same code.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import psycopg

from portraitkit.errors import NotAuthenticated

ALGORITHM = "HS256"
USER_AUDIENCE = "authenticated"
DEFAULT_TTL_SECONDS = 3600


@dataclass(frozen=True)
class LocalUser:
    id: uuid.UUID
    email: str


def issue_user_token(
    secret: str, user_id: uuid.UUID | str, email: str | None, ttl: int = DEFAULT_TTL_SECONDS
) -> str:
    """An access token for a signed-in user, as Supabase Auth issues them."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "portraitkit-local",
        "sub": str(user_id),
        "aud": USER_AUDIENCE,
        "role": "authenticated",
        "email": email or "",
        "iat": now,
        "exp": now + ttl,
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def issue_service_token(secret: str, ttl: int = 10 * 365 * 24 * 3600) -> str:
    """A service-role key: what SUPABASE_SERVICE_ROLE_KEY is on a hosted project."""
    now = int(time.time())
    claims = {"iss": "portraitkit-local", "role": "service_role", "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> dict[str, Any]:
    """The claims of a valid token, checked as PostgREST checks them (signature, expiry,
    and the audience when the token names one)."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        return jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=USER_AUDIENCE if "aud" in unverified else None,
            options={"verify_aud": "aud" in unverified},
        )
    except jwt.ExpiredSignatureError as exc:
        raise NotAuthenticated("The access token has expired: sign in again.") from exc
    except jwt.PyJWTError as exc:
        raise NotAuthenticated(f"The access token is not valid: {exc}.") from exc


def create_local_user(
    conn: psycopg.Connection[Any], email: str, credits: int | None = None
) -> LocalUser:
    """Create a user the way a sign-up does (the trigger makes the profile).

    ``credits`` sets the starting balance instead of the trial credits; it is written as
    the profile's starting credits, so the ledger invariant holds from the first moment.
    Needs a connection allowed to write ``auth.users`` (superuser or service role).
    """
    with conn.transaction():
        row = conn.execute(
            "insert into auth.users (email, aud, role, raw_app_meta_data)"
            " values (%s, 'authenticated', 'authenticated',"
            ' \'{"provider": "email", "providers": ["email"]}\') returning id',
            (email,),
        ).fetchone()
        assert row is not None
        user_id = row[0]
        if credits is not None:
            conn.execute(
                "update public.profiles set starting_credits = %s, total_credits = %s"
                " where id = %s",
                (credits, credits, user_id),
            )
    return LocalUser(id=user_id, email=email)


def find_local_user(conn: psycopg.Connection[Any], email_or_id: str) -> LocalUser | None:
    """Look a user up by email or id (the CLI accepts either)."""
    try:
        as_id: uuid.UUID | None = uuid.UUID(email_or_id)
    except ValueError:
        as_id = None
    row = conn.execute(
        "select id, email from auth.users where id = %s or lower(email) = lower(%s)",
        (as_id, email_or_id),
    ).fetchone()
    return LocalUser(id=row[0], email=row[1] or "") if row else None
