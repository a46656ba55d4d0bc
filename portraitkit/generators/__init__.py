"""Generators turn one source photo into one stylised image.

- :mod:`~portraitkit.generators.base`: the :class:`Generator` protocol, request, result,
  the retryable/permanent errors and :func:`get_generator`.
- :mod:`~portraitkit.generators.local`: real stylisation on this machine (OpenCV, NumPy).
- :mod:`~portraitkit.generators.http`: a hosted model in Replicate's predictions API shape.
- :mod:`~portraitkit.generators.noop`: a fixed tiny PNG, for benchmarks.
- :mod:`~portraitkit.generators.sample`: a portrait we draw ourselves, for demos and tests.
"""

from portraitkit.generators.base import (
    GeneratedImage,
    GenerationError,
    GenerationRequest,
    Generator,
    PermanentGenerationError,
    RetryableGenerationError,
    get_generator,
)

__all__ = [
    "GeneratedImage",
    "GenerationError",
    "GenerationRequest",
    "Generator",
    "PermanentGenerationError",
    "RetryableGenerationError",
    "get_generator",
]
