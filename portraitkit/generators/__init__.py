"""Generators turn one source photo into one stylised image; this module is their registry.

- :mod:`~portraitkit.generators.base`: the :class:`Generator` protocol, request and result
  (the retryable/permanent errors live in :mod:`portraitkit.errors`).
- :mod:`~portraitkit.generators.local`: real stylisation on this machine (OpenCV, NumPy).
- :mod:`~portraitkit.generators.http`: a hosted model in Replicate's predictions API shape.
- :mod:`~portraitkit.generators.noop`: a fixed tiny PNG, for benchmarks.
- :mod:`~portraitkit.generators.sample`: a portrait we draw ourselves, for demos and tests.

Implementations are imported lazily, so a worker that only uses ``http`` never loads OpenCV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portraitkit.errors import (
    ConfigurationError,
    GenerationError,
    PermanentGenerationError,
    RetryableGenerationError,
)
from portraitkit.generators.base import GeneratedImage, GenerationRequest, Generator

if TYPE_CHECKING:
    from portraitkit.settings import Settings

GENERATOR_NAMES = ("local", "http", "noop")

__all__ = [
    "GENERATOR_NAMES",
    "GeneratedImage",
    "GenerationError",
    "GenerationRequest",
    "Generator",
    "PermanentGenerationError",
    "RetryableGenerationError",
    "configured_generators",
    "get_generator",
]


def get_generator(name: str, **options: Any) -> Generator:
    """The generator called ``name`` (the ``styles.generator`` column), built with ``options``.

    ``local`` stylises on this machine, ``http`` calls a hosted model in Replicate's API
    shape (``api_token=`` required), ``noop`` returns a tiny fixed PNG at once (benchmarks).
    """
    if name == "local":
        from portraitkit.generators.local import LocalGenerator

        return LocalGenerator(**options)
    if name == "http":
        from portraitkit.generators.http import HttpGenerator

        return HttpGenerator(**options)
    if name == "noop":
        from portraitkit.generators.noop import NoopGenerator

        return NoopGenerator(**options)
    raise ConfigurationError(
        f"Unknown generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}.",
        details={"generator": name, "choices": list(GENERATOR_NAMES)},
    )


def configured_generators(settings: Settings) -> Callable[[str], Generator]:
    """Build a generator by name with what ``settings`` say about it; a setting it needs
    and lacks is a :class:`ConfigurationError` when it is built (a worker builds the one it
    is told to use before it claims anything)."""

    def build(name: str) -> Generator:
        if name != "http":
            return get_generator(name)
        if settings.image_api_token is None:
            raise ConfigurationError(
                "The http generator needs PORTRAITKIT_IMAGE_API_TOKEN (or REPLICATE_API_TOKEN).",
                details={"generator": "http", "setting": "PORTRAITKIT_IMAGE_API_TOKEN"},
            )
        return get_generator(
            "http",
            api_token=settings.image_api_token.get_secret_value(),
            base_url=settings.image_api_url,
        )

    return build
