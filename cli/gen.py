"""`portraitkit gen ...`: files for other code bases, generated from the live database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from portraitkit.database.connection import connect
from portraitkit.session import database_url
from portraitkit.typescript import DEFAULT_SCHEMAS, generate

from .context import cli_context
from .output import Typer, console, emit_json

app = Typer(help="Generate code from the database's schema.", no_args_is_help=True)
types_app = Typer(help="Types for the app, read from the database.", no_args_is_help=True)
app.add_typer(types_app, name="types")


@types_app.command()
def typescript(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
    schemas: Annotated[
        list[str] | None,
        typer.Option(
            "--schema",
            "-s",
            help="A schema to include (repeat for more); default: public.",
        ),
    ] = None,
) -> None:
    """Write the database's TypeScript types, as `supabase gen types typescript` does (no Docker).

    The `Database` type and its helpers (`Tables<"generations">`, `Enums<...>`, `Constants`) come out as the Supabase CLI prints them; after them, the contract's error codes (`ErrorCode`, `ERROR_STATUS`) and row aliases (`GenerationBatch`, `Generation`, ...).

    Reads the embedded database (started and migrated first if need be) or --database-url. Everything is sorted, so the file can be committed and diffed.

    Examples:

      portraitkit gen types typescript > src/database.types.ts
      portraitkit gen types typescript --output src/database.types.ts
      portraitkit gen types typescript --database-url "$DB_URL" -s public -s graphql_public
    """
    options = cli_context(ctx)
    with connect(database_url(options.settings()), autocommit=True) as conn:
        text = generate(conn, schemas or DEFAULT_SCHEMAS)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    if options.json:
        emit_json({"output": str(output), "lines": text.count("\n")})
    else:
        console(stderr=True).print(f"wrote {output} ({text.count(chr(10))} lines)")
