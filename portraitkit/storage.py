"""Where images live: Supabase Storage or a local directory, behind one small interface.

Object paths are the same in both: ``<user_id>/sources/<sha256>.<ext>`` for uploaded
photos and ``<user_id>/<batch_id>/<generation_id>-<attempt>.<ext>`` for results, inside one private
bucket. Storage RLS on Supabase keys on that first path segment being the user's id.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from portraitkit.errors import (
    DatabaseUnavailable,
    InvalidImage,
    InvalidInput,
    NotAllowed,
    ObjectNotFound,
    PortraitkitError,
    StorageError,
)

DEFAULT_BUCKET = "portraits"
MAX_SOURCE_BYTES = 20 * 1024 * 1024
MAX_SOURCE_PIXELS = 40_000_000
MIN_SOURCE_SIDE = 64
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# As people name them, in messages.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def validate_source_image(data: bytes, name: str | None = None) -> ImageInfo:
    """Check a photo before anyone is charged for it: a real JPEG, PNG or WebP, not empty,
    not huge, and not a decompression bomb.

    ``name`` (the file's name, when there is one) is what the messages call the photo.
    """
    subject = name or "The image"
    details: dict[str, Any] = {"field": "source", "accepted": list(ACCEPTED_FORMATS)}
    if name:
        details["name"] = name
    if not data:
        raise InvalidImage(f"{subject} is empty.", details=details)
    if len(data) > MAX_SOURCE_BYTES:
        raise InvalidImage(
            f"{subject} is {len(data) / 2**20:.1f} MB; the limit is "
            f"{MAX_SOURCE_BYTES // 2**20} MB.",
            details={**details, "max_bytes": MAX_SOURCE_BYTES, "given": len(data)},
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format or "", image.size
            if fmt not in CONTENT_TYPES:
                raise InvalidImage(
                    f"{subject} is {f'a {fmt} image' if fmt else 'in no format we read'}; "
                    f"accepted formats: {', '.join(ACCEPTED_FORMATS)}.",
                    details={**details, "format": fmt},
                )
            if width * height > MAX_SOURCE_PIXELS:
                raise InvalidImage(
                    f"{subject} is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                    f"the limit is {MAX_SOURCE_PIXELS / 1e6:g} megapixels.",
                    details={**details, "max_pixels": MAX_SOURCE_PIXELS, "given": width * height},
                )
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImage(
            f"{subject} is not a readable image; accepted formats: {', '.join(ACCEPTED_FORMATS)}.",
            details=details,
        ) from exc
    if min(width, height) < MIN_SOURCE_SIDE:
        raise InvalidImage(
            f"{subject} is {width}x{height}; each side needs at least {MIN_SOURCE_SIDE} pixels.",
            details={**details, "min_side": MIN_SOURCE_SIDE},
        )
    return ImageInfo(fmt, width, height)


# The contract's path rules (docs/contract.md, "Paths"), checked again by the worker
# before it reads a source: a row written some other way must not leak another's photo.
_FORBIDDEN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\\\xa0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff]"
)


def owned_path_problem(path: str, owner: Any) -> str | None:
    """Why ``path`` is not a well-formed object path in ``owner``'s folder, or None."""
    if not path or len(path) > 1024:
        return "missing or too long"
    if _FORBIDDEN.search(path):
        return "control, white-space or backslash character"
    segments = path.split("/")
    if any(s in ("", ".", "..") or s != s.strip(" ") for s in segments):
        return "empty, dot or space-edged segment"
    if len(segments) < 2 or segments[0] != str(owner):
        return "not in the owner's folder"
    return None


def source_object_path(user_id: Any, data: bytes, info: ImageInfo) -> str:
    """Content-addressed, so uploading the same photo twice stores it once."""
    return f"{user_id}/sources/{hashlib.sha256(data).hexdigest()[:32]}.{info.extension}"


def result_object_path(
    user_id: Any, batch_id: Any, generation_id: Any, extension: str, *, attempt: int = 1
) -> str:
    """Where one attempt's result goes: each attempt has its own object, so a worker that
    lost its lease and drops its result never removes the image of the one that won."""
    return f"{user_id}/{batch_id}/{generation_id}-{attempt}.{extension}"


class Storage(Protocol):
    """A bucket of objects addressed by path."""

    async def put(self, path: str, data: bytes, content_type: str) -> None: ...

    async def get(self, path: str) -> bytes: ...

    async def remove(self, paths: list[str]) -> None: ...

    async def url(self, path: str, expires_in: int = 3600) -> str: ...


class LocalStorage:
    """A directory standing in for a bucket: ``<root>/<bucket>/<path>``."""

    def __init__(self, root: Path, bucket: str = DEFAULT_BUCKET) -> None:
        self.base = Path(root) / bucket

    def file_for(self, path: str) -> Path:
        """The file that holds ``path`` (which must stay inside the bucket's directory)."""
        target = (self.base / path).resolve()
        if self.base.resolve() not in target.parents:
            raise InvalidInput(f"Invalid object path: {path!r}.", details={"field": "path"})
        return target

    async def put(self, path: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, self.file_for(path), data)

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        for attempt in range(3):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_bytes(data)
                break
            except FileNotFoundError:  # a remove pruned the folder, empty until now
                if attempt == 2:
                    raise
        os.replace(tmp, target)  # readers never see half a file

    async def get(self, path: str) -> bytes:
        try:
            return await asyncio.to_thread(self.file_for(path).read_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"No stored object at {path!r}.", details={"path": path}) from exc

    async def remove(self, paths: list[str]) -> None:
        """Remove the objects, then the folders they leave empty: a bucket has no folders,
        so a deleted batch leaves none behind."""
        await asyncio.to_thread(self._remove, [self.file_for(path) for path in paths])

    def _remove(self, files: list[Path]) -> None:
        for file in files:
            file.unlink(missing_ok=True)
        base = self.base.resolve()
        for folder in sorted({f.parent for f in files}, key=lambda f: -len(f.parts)):
            while folder != base and base in folder.parents:
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass  # pruned already, with a deeper one
                except OSError:
                    break  # not empty: other objects live here
                folder = folder.parent

    async def remove_folder(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (e.g. a user's id); returns how many."""
        return await asyncio.to_thread(self._remove_folder, self.file_for(prefix))

    @staticmethod
    def _remove_folder(folder: Path) -> int:
        if not folder.is_dir():
            return 0
        count = sum(1 for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        shutil.rmtree(folder)
        return count

    async def url(self, path: str, expires_in: int = 3600) -> str:
        return self.file_for(path).as_uri()


def _storage_error(exc: Exception, path: str) -> PortraitkitError:
    """storage3's StorageApiError (status as a string, e.g. "404") as a typed error."""
    status = str(getattr(exc, "status", "") or "")
    message = str(getattr(exc, "message", "") or exc)
    details = {"path": path, "status": status}
    if status == "404":
        return ObjectNotFound(f"No stored object at {path!r}.", details=details)
    if status in ("401", "403"):
        return NotAllowed(f"Storage refused access to {path!r}: {message}", details=details)
    if status in ("413", "415"):  # the bucket's size or type limit (Supabase Storage)
        return InvalidImage(f"Storage refused {path!r}: {message}", details=details)
    if status.startswith("5") or not status:
        return DatabaseUnavailable(f"Storage is unavailable: {message}", details=details)
    return StorageError(message, details=details, http_status=int(status))


class SupabaseStorage:
    """A private Supabase Storage bucket through storage3 (supabase-py's storage client)."""

    def __init__(self, storage_client: Any, bucket: str = DEFAULT_BUCKET) -> None:
        self._client = storage_client
        self.bucket = bucket

    def _bucket(self) -> Any:
        return self._client.from_(self.bucket)

    async def put(self, path: str, data: bytes, content_type: str) -> None:
        try:
            await self._bucket().upload(
                path, data, {"content-type": content_type, "upsert": "true"}
            )
        except Exception as exc:
            raise _storage_error(exc, path) from exc

    async def get(self, path: str) -> bytes:
        try:
            return bytes(await self._bucket().download(path))
        except Exception as exc:
            raise _storage_error(exc, path) from exc

    async def remove(self, paths: list[str]) -> None:
        if paths:
            try:
                await self._bucket().remove(paths)
            except Exception as exc:
                raise _storage_error(exc, paths[0]) from exc

    async def url(self, path: str, expires_in: int = 3600) -> str:
        try:
            signed = await self._bucket().create_signed_url(path, expires_in)
        except Exception as exc:
            raise _storage_error(exc, path) from exc
        return str(signed["signedURL"])
