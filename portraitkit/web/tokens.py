"""Verify a user's Supabase access token: the legacy HS256 secret, or the project's
asymmetric signing keys published as JWKS.

Supabase Auth signs new projects' tokens with an asymmetric key (ES256 or RS256) and
publishes the public keys at ``<SUPABASE_URL>/auth/v1/.well-known/jwks.json``; older
projects (and portraitkit's local users) use one shared HS256 secret. A token names its
key by ``kid``; the key set is cached and fetched again, at most once a minute, when a
token names a key it does not hold (keys are rotated by adding a new one first).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt

from portraitkit.auth import USER_AUDIENCE
from portraitkit.errors import DatabaseUnavailable, NotAuthenticated

ASYMMETRIC = ("ES256", "RS256", "EdDSA")
LEEWAY_SECONDS = 30  # clock skew between the auth server and us, as PostgREST allows


class TokenVerifier:
    """Checks signature, expiry and audience; returns the claims of a valid user token."""

    def __init__(
        self,
        secret: str | None,
        jwks_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        cache_seconds: float = 600.0,
        refetch_after_seconds: float = 60.0,
    ) -> None:
        self.secret = secret
        self.jwks_url = jwks_url
        self._http = http
        self._cache_seconds = cache_seconds
        self._refetch_after = refetch_after_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(f"The access token is not a JWT: {exc}.") from exc
        algorithm = header.get("alg")
        if algorithm == "HS256":
            if self.secret is None:
                raise NotAuthenticated("HS256 tokens are not accepted here.")
            key: Any = self.secret
        elif algorithm in ASYMMETRIC:
            key = (await self._key(str(header.get("kid") or ""))).key
        else:
            raise NotAuthenticated(f"Tokens signed with {algorithm!r} are not accepted.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=USER_AUDIENCE,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise NotAuthenticated("The access token has expired: sign in again.") from exc
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(f"The access token is not valid: {exc}.") from exc
        return claims

    async def _key(self, kid: str) -> jwt.PyJWK:
        if self.jwks_url is None:
            raise NotAuthenticated("Tokens signed with a key pair are not accepted here.")
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = age > self._cache_seconds
            unknown = kid not in self._keys and age > self._refetch_after
            if not self._keys or stale or unknown:
                await self._fetch()
        key = self._keys.get(kid)
        if key is None:
            raise NotAuthenticated("The access token was signed with an unknown key.")
        return key

    async def _fetch(self) -> None:
        client = self._http or httpx.AsyncClient(timeout=10)
        try:
            response = await client.get(self.jwks_url or "")
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
            if self._keys:  # keep using what we have; the next request tries again
                self._fetched_at = time.monotonic()
                return
            raise DatabaseUnavailable(f"The signing keys could not be read: {exc}") from exc
        finally:
            if self._http is None:
                await client.aclose()
        self._keys = {k.key_id: k for k in keys.keys if k.key_id}
        self._fetched_at = time.monotonic()
