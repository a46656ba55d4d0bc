"""The global options, carried to every command through Click's context object, and the
ways a command gets at the database: as a user, as the service role, or anonymously."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from portraitkit.admin import open_anonymous_client, open_service_client
from portraitkit.client import PortraitClient
from portraitkit.session import open_client
from portraitkit.settings import Settings

T = TypeVar("T")

# On a Supabase project the CLI signs in as --user with this password (or uses a token).
PASSWORD_ENV = "PORTRAITKIT_PASSWORD"
ACCESS_TOKEN_ENV = "PORTRAITKIT_ACCESS_TOKEN"


@dataclass(frozen=True)
class CliContext:
    state_dir: Path | None
    database_url: str | None
    json: bool
    verbose: bool
    supabase_url: str | None = None

    @classmethod
    def defaults(cls) -> CliContext:
        return cls(state_dir=None, database_url=None, json=False, verbose=False)

    def settings(self) -> Settings:
        """Settings from env and .env, with the options given on the command line on top."""
        overrides: dict[str, object] = {}
        if self.state_dir is not None:
            overrides["state_dir"] = self.state_dir
        if self.database_url:
            overrides["database_url"] = self.database_url
        if self.supabase_url:
            overrides["supabase_url"] = self.supabase_url
        return Settings(**overrides)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def user_client(self, user: str) -> AsyncIterator[PortraitClient]:
        """A client acting as ``user`` (email or id): RLS applies, nothing is bypassed."""
        settings = self.settings()
        # A token held from elsewhere (a Supabase project's, ES256 or HS256) works in
        # every mode; a password only signs in on Supabase.
        client = await open_client(
            settings,
            user=user,
            password=os.environ.get(PASSWORD_ENV) if settings.mode == "supabase" else None,
            access_token=os.environ.get(ACCESS_TOKEN_ENV),
        )
        async with client:
            yield client

    @contextlib.asynccontextmanager
    async def service_client(self) -> AsyncIterator[PortraitClient]:
        async with await open_service_client(self.settings()) as client:
            yield client

    @contextlib.asynccontextmanager
    async def anonymous_client(self) -> AsyncIterator[PortraitClient]:
        async with await open_anonymous_client(self.settings()) as client:
            yield client


def cli_context(ctx: typer.Context) -> CliContext:
    """The options the top-level callback stored (defaults when a test calls a group alone)."""
    obj = ctx.find_object(CliContext)
    return obj if obj is not None else CliContext.defaults()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's async work to the end."""
    return asyncio.run(coro)
