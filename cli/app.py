"""The `portraitkit` command: global options, command groups, and error reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from portraitkit.database.lifecycle import bring_up, describe

from . import db
from .context import CliContext, cli_context
from .output import report_error


class _ReportingGroup(TyperGroup):
    """Turns any error from a command into one line on stderr and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.Abort:
            raise
        except Exception as exc:
            if hasattr(exc, "exit_code"):
                raise  # the framework's own: usage errors and Exit (click's or typer's)
            options = ctx.obj if isinstance(ctx.obj, CliContext) else CliContext.defaults()
            report_error(exc, as_json=options.json, verbose=options.verbose)
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_ReportingGroup,
    help="portraitkit: batch portrait generation on Supabase or a local PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")


@app.callback()
def global_options(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Where the embedded server keeps its data."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Use this database, not the embedded one.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Tracebacks on errors.")] = False,
) -> None:
    ctx.obj = CliContext(
        state_dir=state_dir, database_url=database_url, json=json_output, verbose=verbose
    )


# The demo entry point. For now `portraitkit demo` is `db up` followed by `db status`;
# it is to be replaced by the product demo.
@app.command()
def demo(ctx: typer.Context) -> None:
    """Demo: bring the database up and show its status."""
    options = cli_context(ctx)
    settings = options.settings()
    db.render_up(options, bring_up(settings))
    if not options.json:
        db.render_status(options, describe(settings))


def main() -> None:
    """Console-script entry point."""
    app()
