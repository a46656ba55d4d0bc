"""`portraitkit users ...` and `portraitkit credits ...`: operator commands (superuser URL
and service role), for the embedded database or a DATABASE_URL."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from portraitkit import admin

from .context import cli_context, run
from .output import Typer, Yes, confirm_or_refuse, console, emit_json
from .render import plural

app = Typer(
    help="Create, list and delete local users (embedded or DATABASE_URL).", no_args_is_help=True
)
credits_app = Typer(
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
            f"created [bold]{account.email}[/bold] ({account.id}), "
            f"{plural(account.balance, 'credit')}"
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


# A negative amount (`credits grant ada@example.com -5`) is an argument, not an option: the
# database then answers it as the contract says.
@credits_app.command(context_settings={"ignore_unknown_options": True})
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
        console().print(
            f"granted {plural(amount, 'credit')} to [bold]{user}[/bold]: balance {balance}"
        )


@app.command()
def delete(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's email or id.")],
    yes: Yes = False,
) -> None:
    """Delete a user's account with everything of theirs: batches, credits, stored images.

    The profile, batches, generations and images go with the account; the credit ledger's
    entries are kept (the record of what was paid, naming only the user id). Asks first (unless --yes); without a terminal to ask on, --yes is
    required.

    Examples:

      portraitkit users delete ada@example.com
      portraitkit users delete ada@example.com --yes --json
    """
    options = cli_context(ctx)
    settings = options.settings()
    account = admin.find_user(settings, user)  # an unknown user is not found before asking
    if not yes:
        confirm_or_refuse(
            f"Delete {account.email or account.id} with every batch, credit and image of theirs?",
            declined="Nothing was deleted (pass --yes to skip the question).",
            code="delete_declined",
        )
    deleted = run(admin.delete_user(settings, str(account.id)))
    if options.json:
        emit_json(deleted)
    else:
        what_went = [
            plural(deleted.batches, "batch", "batches"),
            plural(deleted.images_removed, "image"),
        ]
        if deleted.ledger_entries:
            kept = plural(deleted.ledger_entries, "ledger entry", "ledger entries")
            what_went.append(f"{kept} kept")
        console().print(
            f"deleted [bold]{deleted.email}[/bold] ({deleted.id}): {', '.join(what_went)}"
        )


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
