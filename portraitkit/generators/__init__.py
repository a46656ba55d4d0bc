"""Generators turn one source photo into one stylised image.

- :mod:`~portraitkit.generators.base`: the :class:`Generator` protocol, request, result,
  and :func:`get_generator` (the retryable/permanent errors live in
  :mod:`portraitkit.errors`).
- :mod:`~portraitkit.generators.local`: real stylisation on this machine (OpenCV, NumPy).
- :mod:`~portraitkit.generators.http`: a hosted model in Replicate's predictions API shape.
- :mod:`~portraitkit.generators.noop`: a fixed tiny PNG, for benchmarks.
- :mod:`~portraitkit.generators.sample`: a portrait we draw ourselves, for demos and tests.
"""

from portraitkit.errors import (
    GenerationError,
    PermanentGenerationError,
    RetryableGenerationError,
)
from portraitkit.generators.base import (
    GeneratedImage,
    GenerationRequest,
    Generator,
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
