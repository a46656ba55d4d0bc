"""The product's main job from nothing: a batch of stylised portraits, made while you watch.

Starts (and migrates) the database, makes sure the demo user exists with enough credits,
creates a batch of several styles from the bundled sample portrait, runs a worker in this
process with the local generator, follows the batch through the change feed, and writes a
contact sheet. Safe to run again: the user is reused and topped up when it runs low.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from portraitkit import admin
from portraitkit.client import PortraitClient
from portraitkit.contact_sheet import write_contact_sheet
from portraitkit.database.lifecycle import bring_up
from portraitkit.errors import ConfigurationError, UserNotFound
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import Batch
from portraitkit.service import open_worker
from portraitkit.session import open_client
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.watch import batch_feed, watch_batch
from portraitkit.worker import Worker, WorkerOptions

DEMO_EMAIL = "demo@portraitkit.local"
# Eight styles from all five categories of the catalogue (14 credits).
DEMO_STYLES = (
    "pencil_sketch",
    "watercolor",
    "oil_painting",
    "pop_art",
    "comic_halftone",
    "pixel_art",
    "neon_glow",
    "vintage_photo",
)
TOP_UP_CREDITS = 100


class DemoImage(BaseModel):
    """One result on disk. ``storage_path`` is the object's path in the bucket (what the
    contract's ``generated_image_url`` holds); ``file`` is where that object is here."""

    model_config = ConfigDict(frozen=True)

    style_key: str
    style_name: str
    storage_path: str
    file: Path


class DemoResult(BaseModel):
    """What ``portraitkit demo --json`` prints: the batch, its images and the sheet."""

    model_config = ConfigDict(frozen=True)

    batch: Batch
    images: list[DemoImage]  # in the batch's order
    contact_sheet: Path


def sample_photo(state_dir: Path) -> bytes:
    """The bundled sample portrait, drawn once and kept in the state directory (drawing
    it takes a second or two; the bytes are the same every time)."""
    path = state_dir / "demo" / "sample-portrait.png"
    if path.is_file():
        return path.read_bytes()
    data = sample_portrait_png()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


async def ensure_demo_user(settings: Settings, needed: int) -> admin.UserAccount:
    """The demo user, created on first use and topped up whenever it cannot pay ``needed``."""
    try:
        user = await asyncio.to_thread(admin.find_user, settings, DEMO_EMAIL)
        account = await asyncio.to_thread(admin.get_account, settings, user.id)
    except UserNotFound:
        account = await asyncio.to_thread(admin.create_user, settings, DEMO_EMAIL)
    if account.balance < needed:
        await admin.grant_credits(settings, DEMO_EMAIL, TOP_UP_CREDITS, "demo top-up")
        account = await asyncio.to_thread(admin.get_account, settings, account.id)
    return account


async def demo_cost(client: PortraitClient, styles: Sequence[str]) -> int:
    costs = {s.key: s.credit_cost for s in await client.styles()}
    return sum(costs.get(key, 0) for key in styles)


async def run_demo(
    settings: Settings,
    on_update: Callable[[Batch], None],
    *,
    styles: Sequence[str] = DEMO_STYLES,
    concurrency: int = 2,
) -> DemoResult:
    """Make one demo batch; ``on_update`` sees every snapshot of it, the final one last."""
    if settings.mode == "supabase":
        raise ConfigurationError(
            "The demo runs on the embedded database or a DATABASE_URL, not on SUPABASE_URL."
        )
    # Start (if embedded) and migrate the database once; everything below then shares it.
    url = (await asyncio.to_thread(bring_up, settings)).url
    settings = settings.model_copy(update={"database_url": url})
    async with await admin.open_anonymous_client(settings) as anonymous:
        needed = await demo_cost(anonymous, styles)
    await ensure_demo_user(settings, needed)
    async with await open_client(settings, user=DEMO_EMAIL) as client:
        photo = await asyncio.to_thread(sample_photo, settings.state_dir)
        batch_id = await client.create_batch(styles, photo)
        options = WorkerOptions(
            concurrency=concurrency,
            generator="local",
            poll_seconds=1.0,
            worker_id=f"demo-{batch_id}",
        )
        async with open_worker(settings, options) as worker:
            batch = await _watch_while_working(settings, client, batch_id, worker, on_update)
        sheet = settings.state_dir / "demo" / f"contact-sheet-{batch.id}.png"
        await write_contact_sheet(client, batch, sheet)
        return DemoResult(batch=batch, images=result_files(client, batch), contact_sheet=sheet)


async def _watch_while_working(
    settings: Settings,
    client: PortraitClient,
    batch_id: UUID,
    worker: Worker,
    on_update: Callable[[Batch], None],
) -> Batch:
    """Follow the batch while the worker runs; stop the worker when the batch ends."""
    worker_task = asyncio.create_task(worker.run(), name="demo-worker")

    async def follow() -> Batch:
        final: Batch | None = None
        async with batch_feed(settings, client, batch_id) as feed:
            async for final in watch_batch(client, batch_id, feed):
                on_update(final)
        assert final is not None
        return final

    watch_task = asyncio.create_task(follow(), name="demo-watch")
    try:
        await asyncio.wait({watch_task, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not watch_task.done():
            worker_task.result()  # the worker's own error, if it crashed
            raise RuntimeError("The worker stopped before the batch finished.")
        return watch_task.result()
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task


def result_files(client: PortraitClient, batch: Batch) -> list[DemoImage]:
    """Where the batch's images are on disk (local storage only)."""
    storage = client.storage
    if not isinstance(storage, LocalStorage):
        return []
    return [
        DemoImage(
            style_key=i.style_key,
            style_name=i.style_name,
            storage_path=i.generated_image_url,
            file=storage.base / i.generated_image_url,
        )
        for i in sorted(batch.items, key=lambda i: i.position)
        if i.generated_image_url
    ]
