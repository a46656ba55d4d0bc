"""`portraitkit serve`: the app's HTTP API and web pages."""

from __future__ import annotations

from typing import Annotated

import typer

from portraitkit.logs import configure_logging

from .context import cli_context


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8000,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker", help="Do not run a worker in this process (run `portraitkit worker`)."
        ),
    ] = False,
) -> None:
    """Serve the app: the JSON API, live batch events and the web pages.

    On the embedded database or a DATABASE_URL it also runs a worker in the same process
    (unless --no-worker), so a batch started on a page fills in with nothing else running.
    Tokens for curl: `portraitkit users token EMAIL`.

    Examples:

      portraitkit serve
      portraitkit serve --host 0.0.0.0 --port 8080 --no-worker
    """
    import uvicorn

    from portraitkit.web import create_app

    options = cli_context(ctx)
    configure_logging(verbose=options.verbose)
    app = create_app(options.settings(), worker=not no_worker)
    typer.echo(f"serving on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if options.verbose else "warning")
