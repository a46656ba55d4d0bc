"""`portraitkit styles`: the catalogue anyone may read."""

from __future__ import annotations

import typer

from portraitkit.models import Style

from . import render
from .context import cli_context, run
from .output import console, emit_json


def styles(ctx: typer.Context) -> None:
    """The styles on offer, grouped by category, with what each costs in credits.

    Examples:

      portraitkit styles
      portraitkit styles --json
    """
    options = cli_context(ctx)

    async def catalogue() -> list[Style]:
        async with options.anonymous_client() as client:
            return await client.styles()

    found = run(catalogue())
    if options.json:
        emit_json(found)
    else:
        console().print(render.styles_table(found))
