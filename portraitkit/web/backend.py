"""What one server process holds for all its requests: the token verifier, a shared
connection pool (direct modes), the storage, and how to open a client for a request.

Each request acts as its own user through the same transports as everything else (RLS
applies); only readiness checks and nothing user-facing use anything but the user's token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from portraitkit.auth import TokenVerifier
from portraitkit.client import PortraitClient
from portraitkit.errors import NotAllowed
from portraitkit.identity import ANONYMOUS, User, open_client
from portraitkit.models import BatchSummary
from portraitkit.session import database_url
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import make_pool
from portraitkit.web.media import MediaSigner
from portraitkit.web.schemas import BatchCard, BatchDetail, GenerationOut


class Backend:
    """Opened once per server process (``start``), closed at shutdown (``aclose``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.pool: AsyncConnectionPool | None = None
        self.database_url: str | None = None
        self.media: MediaSigner | None = None
        secret: str | None = None
        if self.mode != "supabase":
            secret = settings.jwt_secret_value()
        elif settings.supabase_jwt_secret is not None:
            secret = settings.supabase_jwt_secret.get_secret_value()
        self.verifier = TokenVerifier(secret, settings.signing_keys_url())

    async def start(self) -> Backend:
        if self.mode != "supabase":
            self.database_url = await asyncio.to_thread(database_url, self.settings)
            self.pool = make_pool(self.database_url, max_size=10)
            await self.pool.open()
            self.media = MediaSigner(self.settings.jwt_secret_value())
        return self

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def user_claims(self, token: str) -> dict[str, Any]:
        """The claims of a signed-in user's valid token; the service role is not a user."""
        claims = await self.verifier.verify(token)
        if claims.get("role") != "authenticated":
            raise NotAllowed("This acts for signed-in users only.")
        return claims

    @property
    def local_storage(self) -> LocalStorage:
        return LocalStorage(self.settings.state_dir / "storage")

    @contextlib.asynccontextmanager
    async def client(
        self, token: str | None, claims: Mapping[str, Any] | None
    ) -> AsyncIterator[PortraitClient]:
        """A client for one request: the bearer's user, or anonymous without a token.

        The token was verified already (HS256 or the project's key pair), so the direct
        transport takes its claims as they are instead of checking the local secret again.
        """
        identity = User(access_token=token) if token else ANONYMOUS
        verified = dict(claims or {})
        client = await open_client(
            self.settings, identity, pool=self.pool, verify=lambda _token: verified
        )
        try:
            yield client
        finally:
            await client.aclose()

    async def image_url(self, client: PortraitClient, path: str | None) -> str | None:
        """A URL the browser can load for a stored object, valid for an hour."""
        if path is None:
            return None
        if self.media is not None:
            return self.media.url(path)
        assert client.storage is not None
        return await client.storage.url(path, expires_in=3600)

    async def card(self, client: PortraitClient, batch: BatchSummary) -> BatchCard:
        """A gallery card: the batch with URLs for its cover and source photo."""
        return BatchCard(
            **batch.model_dump(),
            cover_url=await self.image_url(client, batch.cover_image_url),
            source_url=await self.image_url(client, batch.original_image_url),
        )

    async def detail(self, client: PortraitClient, batch_id: UUID | str) -> BatchDetail:
        """The batch page: the card and each photo with its URL."""
        batch = await client.get_batch(batch_id)
        card = await self.card(client, batch)
        items = [
            GenerationOut(
                **item.model_dump(),
                image_url=await self.image_url(client, item.generated_image_url),
            )
            for item in batch.items
        ]
        return BatchDetail(
            **card.model_dump(exclude={"items"}),
            items=items,
            refunded_credits=batch.refunded_credits,
            net_credits=batch.net_credits,
        )

    async def ready(self) -> None:
        """Raises unless the database answers."""
        async with self.client(None, None) as client:
            await client.styles()
