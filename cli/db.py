"""`portraitkit db ...`: start, stop, inspect and migrate the database."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.table import Table

from portraitkit.database.connection import embedded_server, resolve_database_url
from portraitkit.database.embedded import EmbeddedStatus
from portraitkit.database.lifecycle import DatabaseReady, DatabaseReport, bring_up, describe
from portraitkit.database.reset import new_migration, reset_database, reset_target
from portraitkit.errors import ConfigurationError

from .context import CliContext, cli_context
from .output import Typer, Yes, confirm_or_refuse, console, emit_json

app = Typer(help="Run and migrate the database.", no_args_is_help=True)


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the embedded server (unless DATABASE_URL is set) and apply pending migrations.

    Examples:

      portraitkit db up
      portraitkit --state-dir /tmp/pk db up --json
    """
    options = cli_context(ctx)
    render_up(options, bring_up(options.settings()))


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the embedded server of the state directory (its data stays).

    Example:

      portraitkit db stop
    """
    options = cli_context(ctx)
    server = embedded_server(options.settings())
    stopped = server.stop()
    if options.json:
        emit_json({"stopped": stopped, "state_dir": str(server.state_dir)})
    else:
        console().print("stopped" if stopped else "not running", f"({server.state_dir})")


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the server, the state directory and applied/pending migrations.

    Examples:

      portraitkit db status
      portraitkit db status --database-url postgresql://user:pass@host/db --json
    """
    options = cli_context(ctx)
    render_status(options, describe(options.settings()))


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply pending migrations to the configured database, or to --database-url.

    Examples:

      portraitkit db migrate
      portraitkit db migrate --database-url postgresql://user:pass@host:5432/db
    """
    options = cli_context(ctx)
    ready = bring_up(options.settings())
    if options.json:
        emit_json({"mode": ready.mode, "applied": ready.applied})
    else:
        _print_applied(ready.applied)


@app.command()
def reset(
    ctx: typer.Context,
    yes: Yes = False,
    seed: Annotated[bool, typer.Option(help="Apply supabase/seed.sql afterwards.")] = True,
) -> None:
    """Drop the database with everything in it, then apply every migration and the seed.

    Asks first (unless --yes); without a terminal to ask on, --yes is required. On the
    embedded database the stored images go too. Refuses a Supabase database: use
    `supabase db reset` there.

    Examples:

      portraitkit db reset
      portraitkit db reset --yes --no-seed --database-url postgresql://localhost/scratch
    """
    options = cli_context(ctx)
    settings = options.settings()
    if settings.mode == "supabase":
        raise ConfigurationError(
            "db reset works on the embedded database or DATABASE_URL; "
            "for a Supabase project use `supabase db reset`."
        )
    url = resolve_database_url(settings)
    target = reset_target(url)
    if not yes:
        confirm_or_refuse(
            f"Drop {target} with every user, batch and credit in it?",
            declined="Nothing was dropped (pass --yes to skip the question).",
            code="reset_declined",
        )
    storage = settings.state_dir / "storage" if settings.mode == "embedded" else None
    outcome = reset_database(url, seed=seed, storage_dir=storage)
    if options.json:
        emit_json(
            {"database": target.database, "applied": outcome.applied, "seeded": outcome.seeded}
        )
    else:
        console().print(f"[bold]reset[/bold]     {target}")
        _print_applied(outcome.applied)
        if outcome.seeded:
            console().print("[bold]seeded[/bold]    supabase/seed.sql")


@app.command()
def new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What the migration does, e.g. add_user_avatars.")],
) -> None:
    """Create an empty migration, supabase/migrations/<YYYYMMDDHHMMSS>_<name>.sql.

    Named as `supabase migration new` names them (UTC time), in the project around the
    current folder.

    Example:

      portraitkit db new add_user_avatars
    """
    options = cli_context(ctx)
    path = new_migration(name)
    if options.json:
        emit_json({"path": str(path), "version": path.name.split("_", 1)[0]})
    else:
        console().print(f"[bold]created[/bold]   {path}")


def render_up(options: CliContext, ready: DatabaseReady) -> None:
    """Print what `db up` did; shared with `demo`."""
    embedded = ready.embedded
    data = {
        "mode": ready.mode,
        "url": ready.url,
        "port": _port(ready.url),
        "state_dir": str(embedded.state_dir) if embedded else None,
        "pgdata": str(embedded.pgdata) if embedded else None,
        "applied": ready.applied,
    }
    if options.json:
        emit_json(data)
        return
    shown_url = ready.url if embedded else _redact(ready.url)
    out = console()
    out.print(f"[bold]database[/bold]  {ready.mode}, port {data['port']}")
    out.print(f"[bold]url[/bold]       {shown_url}")
    if embedded:
        out.print(f"[bold]state[/bold]     {embedded.state_dir}")
    _print_applied(ready.applied)


def render_status(options: CliContext, report: DatabaseReport) -> None:
    """Print `db status`; shared with `demo`."""
    applied = (
        {m.version: m.applied for m in report.migrations.migrations} if report.migrations else {}
    )
    rows = [
        {
            "version": m.version,
            "name": m.name,
            "applied": applied.get(m.version) if report.migrations else None,
        }
        for m in report.local_migrations
    ]
    data: dict[str, Any] = {
        "mode": report.mode,
        "state_dir": str(report.state_dir),
        "server": _server_json(report.embedded),
        "database": None,
        "migrations": rows,
        "pending": [r["version"] for r in rows if r["applied"] is False],
        "missing_locally": report.migrations.missing_locally if report.migrations else [],
    }
    if report.migrations:
        m = report.migrations
        data["database"] = {
            "server_version": m.server_version,
            "name": m.database,
            "user": m.user,
            "is_supabase": m.is_supabase,
        }
    if options.json:
        emit_json(data)
    else:
        _print_status(data)


def _server_json(embedded: EmbeddedStatus | None) -> dict[str, Any] | None:
    if embedded is None:
        return None
    return {
        "running": embedded.running,
        "initialized": embedded.initialized,
        "pid": embedded.pid,
        "port": embedded.port,
        "pgdata": str(embedded.pgdata),
        "log_file": str(embedded.log_file),
    }


def _print_status(data: dict[str, Any]) -> None:
    out = console()
    server = data["server"]
    if server is None:
        database = data["database"]
        out.print(
            f"[bold]database[/bold]  {data['mode']}: {database['name']} as {database['user']}"
        )
    elif server["running"]:
        out.print(f"[bold]server[/bold]    running, pid {server['pid']}, port {server['port']}")
    else:
        state = "stopped" if server["initialized"] else "not initialised"
        out.print(f"[bold]server[/bold]    {state} (portraitkit db up starts it)")
    out.print(f"[bold]state[/bold]     {data['state_dir']}")
    table = Table("version", "name", "status")
    labels = {True: "[green]applied[/green]", False: "[yellow]pending[/yellow]", None: "?"}
    for row in data["migrations"]:
        table.add_row(row["version"], row["name"], labels[row["applied"]])
    for version in data["missing_locally"]:
        table.add_row(version, "", "[red]applied, missing locally[/red]")
    out.print(table)


def _print_applied(applied: list[str]) -> None:
    if applied:
        console().print(f"[bold]applied[/bold]   {', '.join(applied)}")
    else:
        console().print("[bold]applied[/bold]   nothing: the database is up to date")


def _port(url: str) -> int | None:
    port = conninfo_to_dict(url).get("port")
    return int(port) if port else None


def _redact(url: str) -> str:
    """Hide a password someone else gave us; ours (embedded, local) is shown."""
    if not conninfo_to_dict(url).get("password"):
        return url
    return make_conninfo(url, password="****")
