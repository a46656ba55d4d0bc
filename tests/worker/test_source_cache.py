"""The worker's cache of source photos: one fetch per photo for all its styles, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from portraitkit.storage import LocalStorage
from portraitkit.worker import _SourceCache

pytestmark = pytest.mark.anyio

MIB = 1 << 20


class CountingStorage(LocalStorage):
    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.reads: list[str] = []

    async def get(self, path: str) -> bytes:
        self.reads.append(path)
        return await super().get(path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_photo_is_fetched_once_and_big_photos_are_not_all_kept(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    paths = [f"u/sources/{i}.jpg" for i in range(5)]
    for i, path in enumerate(paths):
        await storage.put(path, bytes([i]) * MIB, "image/jpeg")
    cache = _SourceCache(storage, size=16, max_bytes=int(2.5 * MIB))

    for path in paths:
        for _style in range(3):  # a batch's styles share its photo
            assert (await cache.get(path))[:1] == bytes([paths.index(path)])
    assert storage.reads == paths

    # Only the newest fit in the byte budget; the oldest is fetched again.
    await cache.get(paths[-1])
    await cache.get(paths[0])
    assert storage.reads == [*paths, paths[0]]
