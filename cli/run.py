"""`portraitkit worker` and `portraitkit demo`: the commands that make the images."""

from __future__ import annotations

from typing import Annotated

import typer

from portraitkit.logs import configure_logging
from portraitkit.service import run_worker
from portraitkit.worker import WorkerOptions

from . import render
from .context import cli_context, run
from .output import command_name, console, emit_json


def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64, help="Items rendered at once.")
    ] = 4,
    once: Annotated[
        bool, typer.Option("--once", help="Stop when the queue is empty instead of waiting.")
    ] = False,
    generator: Annotated[
        str | None,
        typer.Option(
            "--generator",
            help="Render every style with this generator "
            "(local, http, noop) instead of the catalogue's.",
        ),
    ] = None,
) -> None:
    """Run a worker: claim pending items, render them, store the images, record results.

    Runs until Ctrl-C or SIGTERM (in-flight items get a grace period), or with --once until
    the queue is empty. Any number of workers may share a database.

    Examples:

      portraitkit worker
      portraitkit worker --concurrency 8
      portraitkit worker --once --json
    """
    options = cli_context(ctx)
    configure_logging(verbose=options.verbose)  # its start and stop lines; every item with -v
    worker_options = WorkerOptions(concurrency=concurrency, generator=generator)
    stats = run(run_worker(options.settings(), worker_options, once=once))
    if options.json:
        emit_json(vars(stats))
    else:
        console().print(
            f"worker stopped: {stats.completed} completed, {stats.failed} failed, "
            f"{stats.retried} retried, {stats.discarded} discarded, {stats.released} released"
        )


def demo(ctx: typer.Context) -> None:
    """The main job from nothing: a batch of stylised portraits, made while you watch.

    Starts the embedded database, creates the demo user (demo@portraitkit.local), takes
    the bundled sample portrait (drawn by portraitkit, free to use), orders eight styles,
    runs a worker in this process, shows the batch filling up, then prints where the
    images and a contact sheet are. Safe to run again.

    Examples:

      portraitkit demo
      portraitkit --state-dir /tmp/portraitkit-demo demo
      portraitkit demo --json
    """
    from portraitkit.demo import DEMO_EMAIL, run_demo  # NumPy and OpenCV: only when needed

    options = cli_context(ctx)
    if options.verbose:
        configure_logging(verbose=True)
    out = console()
    with render.BatchView(out) as view:
        update = (lambda _batch: None) if options.json else view.update
        result = run(run_demo(options.settings(), update))
    if options.json:
        emit_json(result)
        return
    out.print(render.summary(result.batch))
    out.print("[bold]images[/bold]")
    for image in result.images:
        out.print(f"  {image.style_name:<16} {image.file}")
    out.print(f"[bold]contact sheet[/bold]  {result.contact_sheet}")
    me = command_name()
    out.print("next:")
    out.print(f"  {me} batches show {result.batch.id} --user {DEMO_EMAIL}")
    out.print(f"  {me} serve          the same batches in a browser")
    out.print(f"  {me} db stop        stop the embedded PostgreSQL the demo left running")
