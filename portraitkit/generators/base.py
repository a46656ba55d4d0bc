"""The Generator protocol every renderer implements, its request and its result.

A generator turns one source photo into one stylised image. It knows nothing of batches,
credits or storage: the worker reads the job, calls :meth:`Generator.generate`, stores the
bytes and reports the outcome. Its only say in the outcome is *which* error it raises:
:class:`~portraitkit.errors.RetryableGenerationError` (the worker retries with backoff)
or :class:`~portraitkit.errors.PermanentGenerationError` (the generation fails for good).
The registry that builds a generator by name is in :mod:`portraitkit.generators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationRequest:
    """What to render: the source photo, the style and the prompt already rendered from the
    style's ``prompt_template`` (the user's ``custom_prompt`` is kept apart as well, for
    generators that treat it differently)."""

    source: bytes
    style_key: str
    prompt: str
    custom_prompt: str | None = None
    model: str | None = None

    def __repr__(self) -> str:
        # The photo can be megabytes; never dump it into logs.
        return (
            f"GenerationRequest(style_key={self.style_key!r}, source=<{len(self.source)} bytes>, "
            f"prompt={self.prompt!r}, custom_prompt={self.custom_prompt!r}, model={self.model!r})"
        )


@dataclass(frozen=True)
class GeneratedImage:
    """One rendered image, ready to store as ``<generation_id>.<extension>``."""

    data: bytes
    content_type: str = "image/png"
    extension: str = "png"

    def __repr__(self) -> str:
        return f"GeneratedImage(content_type={self.content_type!r}, data=<{len(self.data)} bytes>)"


@runtime_checkable
class Generator(Protocol):
    """Renders one source photo in one style."""

    async def generate(self, request: GenerationRequest) -> GeneratedImage: ...


def sniff_image_type(data: bytes) -> tuple[str, str] | None:
    """``(content_type, extension)`` from an image's first bytes, or None if not one we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None
