"""The Generator protocol every renderer implements, its request and result, its two errors,
and the factory that picks a generator by the name stored in ``styles.generator``.

A generator turns one source photo into one stylised image. It knows nothing of batches,
credits or storage: the worker reads the job, calls :meth:`Generator.generate`, stores the
bytes and reports the outcome. Its only say in the outcome is *which* error it raises:
:class:`RetryableGenerationError` (the worker retries with backoff) or
:class:`PermanentGenerationError` (the generation fails for good).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from portraitkit.errors import (
    ConfigurationError,
)

GENERATOR_NAMES = ("local", "http", "noop")


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


def get_generator(name: str, **settings: Any) -> Generator:
    """The generator called ``name`` (the ``styles.generator`` column), built with ``settings``.

    ``local`` stylises on this machine, ``http`` calls a hosted model in Replicate's API
    shape (``api_token=`` required), ``noop`` returns a tiny fixed PNG at once (benchmarks).
    Implementations are imported here, lazily, so a worker that only uses ``http`` never
    loads OpenCV.
    """
    if name == "local":
        from portraitkit.generators.local import LocalGenerator

        return LocalGenerator(**settings)
    if name == "http":
        from portraitkit.generators.http import HttpGenerator

        return HttpGenerator(**settings)
    if name == "noop":
        from portraitkit.generators.noop import NoopGenerator

        return NoopGenerator(**settings)
    raise ConfigurationError(
        f"Unknown generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}.",
        details={"generator": name, "choices": list(GENERATOR_NAMES)},
    )


def sniff_image_type(data: bytes) -> tuple[str, str] | None:
    """``(content_type, extension)`` from an image's first bytes, or None if not one we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None
