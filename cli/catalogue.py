"""`portraitkit styles`: the catalogue anyone may read; and what a `--style` value means."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import typer

from portraitkit.errors import UnknownStyle
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


def style_key_for(value: str, offered: Sequence[Style]) -> str:
    """The key a `--style` value names: a style's key or its name, in any case, trimmed.

    Anything else goes to the database as given, so it answers as the contract says
    (`unknown_style`, or `inactive_style` for one no longer offered).
    """
    wanted = value.strip().casefold()
    for style in offered:
        if wanted in (style.key.casefold(), style.name.casefold()):
            return style.key
    return value.strip()


def closest_key(value: str, offered: Sequence[Style]) -> str | None:
    """The key of the offered style whose key or name is nearest ``value``, if any is near."""
    keys_by_spelling: dict[str, str] = {}
    for style in offered:
        keys_by_spelling.setdefault(style.key.casefold(), style.key)
        keys_by_spelling.setdefault(style.name.casefold(), style.key)
    near = difflib.get_close_matches(value.strip().casefold(), list(keys_by_spelling), n=1)
    return keys_by_spelling[near[0]] if near else None


def with_suggestions(exc: UnknownStyle, offered: Sequence[Style]) -> UnknownStyle:
    """The database's `unknown_style`, with the nearest offered key for each unknown one."""
    unknown = [str(key) for key in exc.details.get("style_keys") or []]
    suggestions = {key: near for key in unknown if (near := closest_key(key, offered))}
    if not suggestions:
        return exc
    if len(suggestions) == 1 and len(unknown) == 1:
        advice = f"Did you mean {next(iter(suggestions.values()))!r}?"
    else:
        advice = "Did you mean " + ", ".join(f"{k!r} for {g!r}" for g, k in suggestions.items())
        advice += "?"
    return UnknownStyle(
        f"{exc.message.rstrip()} {advice}",
        details={**exc.details, "suggestions": suggestions},
        hint=exc.hint,
    )
