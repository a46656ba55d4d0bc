"""The global options, carried to every command through Click's context object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from portraitkit.settings import Settings


@dataclass(frozen=True)
class CliContext:
    state_dir: Path | None
    database_url: str | None
    json: bool
    verbose: bool

    @classmethod
    def defaults(cls) -> CliContext:
        return cls(state_dir=None, database_url=None, json=False, verbose=False)

    def settings(self, database_url: str | None = None) -> Settings:
        """Settings from env and .env, with the options given on the command line on top."""
        overrides: dict[str, object] = {}
        if self.state_dir is not None:
            overrides["state_dir"] = self.state_dir
        if database_url or self.database_url:
            overrides["database_url"] = database_url or self.database_url
        return Settings(**overrides)  # type: ignore[arg-type]


def cli_context(ctx: typer.Context) -> CliContext:
    """The options the top-level callback stored (defaults when a test calls a group alone)."""
    obj = ctx.find_object(CliContext)
    return obj if obj is not None else CliContext.defaults()
