"""Identities and their tokens: local users in ``auth.users``, the JWTs portraitkit signs
for them, and the one verifier of a user's token, wherever it arrives.

With the embedded database (or any plain PostgreSQL) there is no auth server, so
portraitkit plays its part: it creates users and signs their access tokens with a local
secret, with the claims Supabase puts in its own (``sub``, ``role``, ``aud``, ``exp``,
``email``, ``session_id``, ``is_anonymous``, ``app_metadata``, ``user_metadata``).

:class:`TokenVerifier` checks a token as PostgREST does, for the web API and the direct
transport alike: HS256 with the shared secret (local users, older Supabase projects), or
ES256/RS256 with the project's public keys, published as JWKS at
``<SUPABASE_URL>/auth/v1/.well-known/jwks.json`` (newer projects). A token names its key by
``kid``; the key set is fetched asynchronously and cached, and fetched again, at most once a
minute, when a token names a key it does not hold (keys are rotated by adding a new one
first). Checking a signature is CPU work only, so a synchronous caller can check against
the keys already held (:meth:`TokenVerifier.check`) without waiting on the network.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg

from portraitkit.errors import DatabaseUnavailable, NotAuthenticated

ALGORITHM = "HS256"
ASYMMETRIC = ("ES256", "RS256", "EdDSA")
USER_AUDIENCE = "authenticated"
DEFAULT_TTL_SECONDS = 3600
LEEWAY_SECONDS = 30  # clock skew between the auth server and us, as PostgREST allows
USER_CLAIMS = ("exp", "sub", "aud")  # what a signed-in user's token must carry


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


class TokenVerifier:
    """Checks a token's signature, expiry and audience; returns its claims.

    ``secret`` verifies HS256 tokens (None: none accepted); ``jwks_url`` publishes the keys
    for ES256/RS256 tokens (None: none accepted). The algorithm a key verifies comes from
    the key, never from the token, so a token cannot pick ``none`` or pass a public key off
    as an HMAC secret.
    """

    def __init__(
        self,
        secret: str | None,
        jwks_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        cache_seconds: float = 600.0,
        refetch_after_seconds: float = 60.0,
    ) -> None:
        self.secret = secret
        self.jwks_url = jwks_url
        self._http = http
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._refetch_after = refetch_after_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        # One fetch at a time per event loop (a verifier may outlive a loop: scripts, tests).
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    async def verify(self, token: str, *, require: Collection[str] = USER_CLAIMS) -> dict[str, Any]:
        """The claims of a valid token, fetching the key set first if the token needs it.

        ``require`` names the claims the token must carry; a user's token has all of
        ``exp``, ``sub`` and ``aud`` (the service role's key has no ``sub`` or ``aud``).
        """
        await self.fetch_key_for(token)
        return self.check(token, require=require)

    async def fetch_key_for(self, token: str) -> None:
        """Make sure the key a token names is held (or known to be missing), so that
        :meth:`check` can verify it without waiting. Nothing to do for HS256."""
        algorithm, kid = _header(token)
        if algorithm not in ASYMMETRIC or self.jwks_url is None:
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._needs_fetch(kid):
                await self._fetch()

    def check(self, token: str, *, require: Collection[str] = USER_CLAIMS) -> dict[str, Any]:
        """The claims of a valid token, against the keys held now (CPU only, no I/O)."""
        algorithm, kid = _header(token)
        if algorithm == ALGORITHM:
            if self.secret is None:
                raise NotAuthenticated("HS256 tokens are not accepted here.")
            key: Any = self.secret
            algorithms = [ALGORITHM]
        elif algorithm in ASYMMETRIC:
            if self.jwks_url is None:
                raise NotAuthenticated("Tokens signed with a key pair are not accepted here.")
            signing_key = self._keys.get(kid)
            if signing_key is None:
                raise NotAuthenticated("The access token was signed with an unknown key.")
            key, algorithms = signing_key.key, [signing_key.algorithm_name]
        else:
            raise NotAuthenticated(f"Tokens signed with {algorithm!r} are not accepted.")
        return _decode(token, key, algorithms, require)

    def _needs_fetch(self, kid: str) -> bool:
        if self._fetched_at is None:
            return True
        age = time.monotonic() - self._fetched_at
        return age > self._cache_seconds or (kid not in self._keys and age > self._refetch_after)

    async def _fetch(self) -> None:
        url = self.jwks_url or ""
        client = self._http or httpx.AsyncClient(timeout=self._timeout)
        try:
            response = await client.get(url)
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
            if self._keys:  # keep using what we have; the next fetch is a minute away
                self._fetched_at = time.monotonic()
                return
            raise DatabaseUnavailable(
                f"The project's signing keys could not be read from {url}: {exc!r}",
                details={"jwks_url": url},
            ) from exc
        finally:
            if self._http is None:
                await client.aclose()
        # Public keys only: a symmetric ("oct") key here would turn a kid into a secret.
        self._keys = {k.key_id: k for k in keys if k.key_id and k.key_type != "oct"}
        self._fetched_at = time.monotonic()


@functools.cache
def shared_verifier(secret: str | None, jwks_url: str | None) -> TokenVerifier:
    """One verifier, and so one cached key set, per secret and JWKS in this process."""
    return TokenVerifier(secret, jwks_url)


def _header(token: str) -> tuple[str, str]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise NotAuthenticated(f"The access token is not a JWT: {exc}.") from exc
    return str(header.get("alg")), str(header.get("kid") or "")


def _decode(
    token: str, key: Any, algorithms: list[str], require: Collection[str]
) -> dict[str, Any]:
    """Verify with ``key``; the audience must be ``authenticated`` whenever the token
    names one (PostgREST's rule), and always when ``require`` asks for it."""
    try:
        names_audience = "aud" in require or "aud" in jwt.decode(
            token, options={"verify_signature": False}
        )
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=USER_AUDIENCE if names_audience else None,
            leeway=LEEWAY_SECONDS,
            options={"require": list(require), "verify_aud": names_audience},
        )
    except jwt.ExpiredSignatureError as exc:
        raise NotAuthenticated("The access token has expired: sign in again.") from exc
    except jwt.PyJWTError as exc:
        raise NotAuthenticated(f"The access token is not valid: {exc}.") from exc
    return claims


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
