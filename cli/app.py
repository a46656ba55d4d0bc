"""The `portraitkit` command: global options, command groups, and error reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from . import batches, catalogue, db, gen, run, serve, users, workers
from .context import CliContext
from .exit_codes import ExitCode
from .output import Group, Typer, report_error, report_usage_error

# Global options may also come after the command (`portraitkit batches list --json`):
# they are moved to the front before parsing. Values that look like one of these (a
# `--prompt --json`) would be moved too; put such values after `--` ... or avoid them.
GLOBAL_FLAGS = frozenset({"--json", "-v", "--verbose"})
GLOBAL_VALUED = frozenset({"--state-dir", "--database-url", "--supabase-url"})


def hoist_global_options(args: list[str]) -> list[str]:
    """The arguments with every global option (and its value) moved to the front."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        if arg in GLOBAL_FLAGS or ("=" in arg and arg.split("=", 1)[0] in GLOBAL_VALUED):
            front.append(arg)
        elif arg in GLOBAL_VALUED and index + 1 < len(args):
            front += [arg, args[index + 1]]
            index += 1
        else:
            rest.append(arg)
        index += 1
    return front + rest


class _PortraitkitGroup(Group):
    """Global options anywhere; every error one line on stderr with its own exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = hoist_global_options(args)
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            report_usage_error(exc.format_message(), _path(exc, ctx), as_json="--json" in args)
            raise typer.Exit(ExitCode.BAD_INPUT) from exc

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Abort, typer.Exit, NoArgsIsHelpError):
            raise
        except UsageError as exc:
            as_json = _options(ctx).json
            report_usage_error(exc.format_message(), _path(exc, ctx), as_json=as_json)
            raise typer.Exit(ExitCode.BAD_INPUT) from exc
        except Exception as exc:
            if hasattr(exc, "exit_code") and not hasattr(exc, "code"):
                raise  # the framework's own (e.g. a help request)
            options = _options(ctx)
            code = report_error(exc, as_json=options.json, verbose=options.verbose)
            raise typer.Exit(code) from exc


def _options(ctx: Any) -> CliContext:
    """The global options (set by the callback, so only once the group has been invoked)."""
    return ctx.obj if isinstance(ctx.obj, CliContext) else CliContext.defaults()


def _path(exc: UsageError, ctx: Any) -> str:
    return str((exc.ctx or ctx).command_path)


app = Typer(
    cls=_PortraitkitGroup,
    help="""portraitkit: batch portrait generation on Supabase or a local PostgreSQL.

With no DATABASE_URL or SUPABASE_URL, everything runs on an embedded PostgreSQL kept in the state directory, started on first use.

Start here:

  portraitkit demo
  portraitkit batches list --user demo@portraitkit.local
  portraitkit batches show BATCH_ID --user demo@portraitkit.local

Global options (--json, -v, --state-dir, --database-url, --supabase-url) may also come after the command. Exit codes: 0 ok, 1 error, 2 bad input, 3 configuration, 4 not found, 5 not allowed, 6 insufficient credits, 7 database unavailable, 8 conflict, 130 interrupted.""",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(run.demo)
app.command("styles")(catalogue.styles)
app.command("worker")(run.worker)
app.command("workers")(workers.workers)
app.command("serve")(serve.serve)
app.command("stats")(batches.stats)
app.add_typer(batches.app, name="batches")
app.add_typer(users.app, name="users")
app.add_typer(users.credits_app, name="credits")
app.add_typer(db.app, name="db")
app.add_typer(gen.app, name="gen")


@app.callback()
def global_options(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="PORTRAITKIT_STATE_DIR",
            help="Where the embedded server, JWT secret and local images live.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="DATABASE_URL",
            help="Use this PostgreSQL, not the embedded one.",
        ),
    ] = None,
    supabase_url: Annotated[
        str | None,
        typer.Option(
            "--supabase-url",
            envvar="SUPABASE_URL",
            help="Use this Supabase project (keys from SUPABASE_ANON_KEY / SERVICE_ROLE_KEY).",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (errors too, on stderr).")
    ] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Tracebacks on errors.")] = False,
) -> None:
    ctx.obj = CliContext(
        state_dir=state_dir,
        database_url=database_url,
        json=json_output,
        verbose=verbose,
        supabase_url=supabase_url,
    )


def main() -> None:
    """Console-script entry point."""
    app()
