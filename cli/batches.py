"""`portraitkit batches ...` and `portraitkit stats`: what a user sees and does, acting as
that user (`--user`), with row-level security applied as for the app."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar
from uuid import UUID

import typer

from portraitkit.client import PortraitClient
from portraitkit.contact_sheet import write_contact_sheet
from portraitkit.errors import UnknownStyle
from portraitkit.models import Batch, BatchPage, BatchStatus
from portraitkit.storage import LocalStorage
from portraitkit.watch import BACKSTOP_SECONDS, batch_feed, watch_batch

from . import render
from .catalogue import style_key_for, with_suggestions
from .context import CliContext, cli_context, run
from .exit_codes import ExitCode
from .output import Typer, Yes, command_name, confirm_or_refuse, console, emit_json

T = TypeVar("T")

app = Typer(help="Create, list, inspect, watch and manage a user's batches.", no_args_is_help=True)

User = Annotated[
    str,
    typer.Option(
        "--user",
        "-u",
        envvar="PORTRAITKIT_USER",
        help="Act as this user: email or id (on Supabase, sign in with "
        "PORTRAITKIT_PASSWORD or PORTRAITKIT_ACCESS_TOKEN).",
    ),
]
BatchId = Annotated[UUID, typer.Argument(help="The batch id (from `batches list`).")]


@app.command()
def create(
    ctx: typer.Context,
    user: User,
    style: Annotated[
        list[str],
        typer.Option(
            "--style",
            "-s",
            help="A style's key or name, in any case; repeat it, or separate them by commas.",
        ),
    ],
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            "-i",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The photo: JPEG, PNG or WebP.",
        ),
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Use the bundled sample portrait instead of --image.")
    ] = False,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Extra words for every style.")
    ] = None,
) -> None:
    """Pay once for several styles of one photo; prints the batch id and what was charged.

    A worker (`portraitkit worker`) makes the images; `batches watch` follows them.

    Examples:

      portraitkit batches create -u ada@example.com --image me.jpg --style watercolor --style noir
      portraitkit batches create -u ada@example.com --sample -s pop_art,pixel_art --prompt "gold"
    """
    options = cli_context(ctx)
    if (image is None) == (not sample):
        raise typer.BadParameter("Give exactly one of --image PATH or --sample.")
    given = [key.strip() for value in style for key in value.split(",") if key.strip()]

    async def create_batch() -> tuple[Batch, list[str], int]:
        async with options.user_client(user) as client:
            offered = await client.styles()
            keys = [style_key_for(value, offered) for value in given]
            source = image if image is not None else _sample_photo()
            try:
                batch_id = await client.create_batch(keys, source, custom_prompt=prompt)
            except UnknownStyle as exc:
                raise with_suggestions(exc, offered) from exc
            return await client.get_batch(batch_id), keys, await client.balance()

    batch, keys, balance = run(create_batch())
    if options.json:
        emit_json(
            {
                "batch_id": str(batch.id),
                "styles": keys,
                "credits_charged": batch.credits_charged,
                "balance": balance,
            }
        )
        return
    out = console()
    out.print(
        f"created batch [bold]{batch.id}[/bold]: {render.plural(batch.total_count, 'style')}, "
        f"charged {render.plural(batch.credits_charged, 'credit')} (balance {balance})"
    )
    me = command_name()
    out.print(f"next: {me} worker --once, then {me} batches show {batch.id} --user {user}")


def _sample_photo() -> bytes:
    # Imported here: drawing needs NumPy, which every other command can do without.
    from portraitkit.generators.sample import sample_portrait_png

    return sample_portrait_png()


@app.command("list")
def list_batches(
    ctx: typer.Context,
    user: User,
    status: Annotated[
        BatchStatus | None, typer.Option("--status", help="Only batches in this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Batches per page.")] = 20,
    after: Annotated[
        str | None, typer.Option("--after", help="The cursor printed under the previous page.")
    ] = None,
) -> None:
    """The user's gallery, newest first: date, cover style, "X/Y photos", status, progress.

    Examples:

      portraitkit batches list --user ada@example.com
      portraitkit batches list --user ada@example.com --status completed --limit 5
      portraitkit batches list --user ada@example.com --after CURSOR --json
    """
    options = cli_context(ctx)

    async def page_of_batches() -> BatchPage:
        async with options.user_client(user) as client:
            return await client.list_batches(status, page_size=limit, after=after)

    page = run(page_of_batches())
    if options.json:
        emit_json(page)
        return
    out = console()
    if not page.items:
        out.print("no batches" + (" on this page" if after else " yet"))
        return
    out.print(render.batches_table(page))
    if page.next_cursor:
        out.print(
            f"more: portraitkit batches list --user {shlex.quote(user)} --limit {limit} "
            f"--after {shlex.quote(page.next_cursor)}"
        )


@app.command()
def show(
    ctx: typer.Context,
    batch_id: BatchId,
    user: User,
    contact_sheet: Annotated[
        Path | None,
        typer.Option(
            "--contact-sheet",
            dir_okay=False,
            help="Also write the source and results as one labelled PNG grid here.",
        ),
    ] = None,
) -> None:
    """One batch in detail: per style the status, attempts, duration, image and last error.

    Examples:

      portraitkit batches show 0b6c4c1e-... --user ada@example.com
      portraitkit batches show 0b6c4c1e-... --user ada@example.com --contact-sheet sheet.png
    """
    options = cli_context(ctx)

    async def detail() -> tuple[Batch, dict[str, str]]:
        async with options.user_client(user) as client:
            batch = await client.get_batch(batch_id)
            if contact_sheet is not None:
                await write_contact_sheet(client, batch, contact_sheet)
            return batch, await image_locations(client, batch)

    batch, locations = run(detail())
    if options.json:
        emit_json(batch)
        return
    out = console()
    for line in render.batch_header(batch):
        out.print(line)
    out.print(render.items_table(batch))
    images = render.image_lines(batch, lambda path: locations.get(path, path))
    if images:
        out.print("[bold]images[/bold]")
        for line in images:
            out.print(line, soft_wrap=True)
    if contact_sheet is not None:
        out.print(f"[bold]contact sheet[/bold] {contact_sheet}")


async def image_locations(client: PortraitClient, batch: Batch) -> dict[str, str]:
    """Where each result can be opened: a file path locally, a signed URL on Supabase."""
    paths = [i.generated_image_url for i in batch.items if i.generated_image_url]
    storage = client.storage
    if isinstance(storage, LocalStorage):
        return {p: str(storage.base / p) for p in paths}
    if storage is None:
        return {}
    return {p: await storage.url(p) for p in paths}


@app.command()
def watch(
    ctx: typer.Context,
    batch_id: BatchId,
    user: User,
    backstop: Annotated[
        float,
        typer.Option(
            min=0.1, help="Re-read at least this often (seconds) if no change notification arrives."
        ),
    ] = BACKSTOP_SECONDS,
) -> None:
    """Follow a batch live until it ends, then print its summary.

    Progress bars for the batch and each style, updated from the change feed (LISTEN/NOTIFY
    on Postgres, Realtime on Supabase). Ctrl-C stops watching, not the batch.

    Examples:

      portraitkit batches watch 0b6c4c1e-... --user ada@example.com
      portraitkit batches watch 0b6c4c1e-... --user ada@example.com --json
    """
    options = cli_context(ctx)
    try:
        final = run(follow_batch(options, user, batch_id, backstop))
    except KeyboardInterrupt:
        console(stderr=True).print("stopped watching; the batch goes on")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    if options.json:
        emit_json(final)
    else:
        console().print(render.summary(final))


async def follow_batch(options: CliContext, user: str, batch_id: UUID, backstop: float) -> Batch:
    """Watch one batch to its end, showing it live unless the output is JSON."""
    final: Batch | None = None
    async with (
        options.user_client(user) as client,
        batch_feed(options.settings(), client, batch_id) as feed,
    ):
        with render.BatchView(console()) as view:
            # Said on stderr with --json, so the document on stdout stays one document.
            note = console(stderr=True).print if options.json else view.note
            async for final in watch_batch(client, batch_id, feed, backstop=backstop, on_note=note):
                if not options.json:
                    view.update(final)
    assert final is not None
    return final


@app.command()
def cancel(ctx: typer.Context, batch_id: BatchId, user: User) -> None:
    """Cancel what has not started (refunded); items already running finish.

    Example:

      portraitkit batches cancel 0b6c4c1e-... --user ada@example.com
    """
    options = cli_context(ctx)
    result = run(_act(options, user, lambda c: c.cancel_batch(batch_id)))
    if options.json:
        emit_json(result)
    else:
        console().print(
            f"cancelled {render.plural(result.cancelled, 'item')}, "
            f"refunded {render.plural(result.refunded, 'credit')}; "
            f"batch is {render.status_text(result.status)}"
        )


@app.command()
def retry(ctx: typer.Context, batch_id: BatchId, user: User) -> None:
    """Put the failed items back in the queue (their cost is charged again).

    Example:

      portraitkit batches retry 0b6c4c1e-... --user ada@example.com
    """
    options = cli_context(ctx)
    result = run(_act(options, user, lambda c: c.retry_failed(batch_id)))
    if options.json:
        emit_json(result)
    else:
        console().print(
            f"retrying {render.plural(result.retried, 'item')}, "
            f"charged {render.plural(result.charged, 'credit')}; "
            f"batch is {render.status_text(result.status)}"
        )


@app.command()
def delete(ctx: typer.Context, batch_id: BatchId, user: User, yes: Yes = False) -> None:
    """Delete a batch and its images (unfinished items are cancelled and refunded first).

    Asks first (unless --yes); without a terminal to ask on, --yes is required.

    Examples:

      portraitkit batches delete 0b6c4c1e-... --user ada@example.com
      portraitkit batches delete 0b6c4c1e-... --user ada@example.com --yes --json
    """
    options = cli_context(ctx)
    if not yes:
        confirm_or_refuse(
            f"Delete batch {batch_id} of {user} with its images?",
            declined="Nothing was deleted (pass --yes to skip the question).",
            code="delete_declined",
        )
    result = run(_act(options, user, lambda c: c.delete_batch(batch_id)))
    if options.json:
        emit_json(result)
    else:
        images = render.plural(len(result.image_paths), "image")
        console().print(
            f"deleted batch {result.batch_id} and {images}; "
            f"refunded {render.plural(result.refunded, 'credit')}"
        )


def stats(ctx: typer.Context, user: User) -> None:
    """A user's totals: batches, photos by status, success rate, average time, credits.

    Examples:

      portraitkit stats --user ada@example.com
      portraitkit stats --user ada@example.com --json
    """
    options = cli_context(ctx)
    result = run(_act(options, user, lambda c: c.stats()))
    if options.json:
        emit_json(result)
    else:
        console().print(render.stats_table(result))


async def _act(options: CliContext, user: str, call: Callable[[PortraitClient], Awaitable[T]]) -> T:
    async with options.user_client(user) as client:
        return await call(client)
