"""Fixtures for driving the pages in a real browser: Debian's Chromium (installed with
apt-get when missing and we may), Playwright to drive it, and the app served by uvicorn
on a free localhost port with its in-process worker, on the module's own database.

Import them into a test module with ``from .browser_fixtures import *``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from portraitkit.auth import LocalUser, create_local_user
from portraitkit.settings import Settings
from portraitkit.web import create_app
from tests.debian import apt_install

__all__ = ["LiveServer", "browser", "chromium", "live_server", "local_user", "screenshots"]

SECRET = "portraitkit-browser-test-secret-with-32-bytes-or-more"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# New items wait this long before a worker may claim them, so each test sees its batch
# queued before the in-process worker (which polls every 5 s) picks it up.
QUEUE_DELAY = "2 seconds"


def _find_chromium() -> str | None:
    for path in (os.environ.get("PORTRAITKIT_CHROMIUM"), *CHROMIUM_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium executable, installed from Debian's packages if need be."""
    pytest.importorskip(
        "playwright.sync_api", reason="the browser tests drive Chromium with `playwright`"
    )
    path = _find_chromium()
    if path is None:
        problem = apt_install("chromium", timeout=900)
        path = _find_chromium()
        if path is None:
            pytest.skip(
                f"No Chromium for the browser tests: {problem or 'not found after install'}"
            )
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the tests leave their screenshots (ignored by git), printed for people."""
    folder = Path(
        os.environ.get("PORTRAITKIT_SCREENSHOTS") or Path(__file__).parent / "screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".gitignore").write_text("*\n")
    print(f"\nscreenshots: {folder}")
    return folder


@dataclass
class LiveServer:
    url: str
    settings: Settings
    db_url: str


@pytest.fixture(scope="module")
def live_server(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app as `portraitkit serve` runs it (API, pages, in-process worker) on a free port."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "alter table public.generations alter column run_after"
            f" set default now() + interval '{QUEUE_DELAY}'"
        )
    settings = Settings(
        database_url=db_url, jwt_secret=SECRET, state_dir=tmp_path_factory.mktemp("browser-state")
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, worker=True),
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web server did not start")
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", settings, db_url)
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture
def local_user(live_server: LiveServer) -> Callable[..., LocalUser]:
    """A new local user with ``credits`` to spend."""

    def make(credits: int = 50) -> LocalUser:
        with psycopg.connect(live_server.db_url, autocommit=True) as conn:
            return create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)

    return make
