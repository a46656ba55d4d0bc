"""`portraitkit users ...` and `portraitkit credits ...`: operator commands (superuser URL
and service role), for the embedded database or a DATABASE_URL."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from portraitkit import admin

from .context import cli_context, run
from .output import console, emit_json

app = typer.Typer(
    help="Create and list local users (embedded or DATABASE_URL).", no_args_is_help=True
)
credits_app = typer.Typer(
    help="Grant credits (service role, written to the ledger).", no_args_is_help=True
)


@app.command()
def create(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The new user's email.")],
    credits: Annotated[
        int | None,
        typer.Option("--credits", min=0, help="Starting balance instead of the trial credits."),
    ] = None,
) -> None:
    """Create a user, as a sign-up would (the profile gets the trial credits, or --credits).

    Examples:

      portraitkit users create ada@example.com
      portraitkit users create ada@example.com --credits 100 --json
    """
    options = cli_context(ctx)
    account = admin.create_user(options.settings(), email, credits)
    if options.json:
        emit_json(account)
    else:
        console().print(
            f"created [bold]{account.email}[/bold] ({account.id}), {account.balance} credits"
        )


@app.command("list")
def list_users(ctx: typer.Context) -> None:
    """Every user with their balance and number of batches, oldest first.

    Examples:

      portraitkit users list
      portraitkit users list --json
    """
    options = cli_context(ctx)
    accounts = admin.list_users(options.settings())
    if options.json:
        emit_json(accounts)
        return
    table = Table("email", "id", "credits", "batches", "created")
    for a in accounts:
        table.add_row(
            a.email, str(a.id), str(a.balance), str(a.batches), f"{a.created_at:%Y-%m-%d %H:%M}"
        )
    console().print(table if accounts else "no users yet: portraitkit users create EMAIL")


@credits_app.command()
def grant(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Email or user id (on Supabase: the id).")],
    amount: Annotated[int, typer.Argument(help="Credits to add (1 to 1000000).")],
    note: Annotated[str | None, typer.Option(help="Why, kept in the ledger.")] = None,
) -> None:
    """Add credits to a user's balance, recorded in the ledger as a grant.

    Examples:

      portraitkit credits grant ada@example.com 50
      portraitkit credits grant ada@example.com 50 --note "support ticket 123" --json
    """
    options = cli_context(ctx)
    balance = run(admin.grant_credits(options.settings(), user, amount, note))
    if options.json:
        emit_json({"user": user, "granted": amount, "balance": balance})
    else:
        console().print(f"granted {amount} credits to [bold]{user}[/bold]: balance {balance}")


@app.command()
def token(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's email or id.")],
    ttl: Annotated[
        int, typer.Option("--ttl", min=60, max=7 * 24 * 3600, help="Seconds the token lasts.")
    ] = 3600,
) -> None:
    """Print an access token for a local user, for curl and scripts (Authorization: Bearer).

    Examples:

      TOKEN=$(portraitkit users token ada@example.com)
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/api/user/stats
    """
    options = cli_context(ctx)
    access = admin.user_token(options.settings(), user, ttl)
    if options.json:
        emit_json(access)
    else:
        typer.echo(access.access_token)
