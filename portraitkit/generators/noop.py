"""A generator that does no work: benchmarks use it to measure the pipeline, not the art."""

from __future__ import annotations

import base64

from portraitkit.generators.base import GeneratedImage, GenerationRequest

# An 8x8 mid-grey PNG (78 bytes).
NOOP_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mNsaGhgwAaYGHCAwSkBADAXAZDUexXGAAAAAElFTkSuQmCC"
)


class NoopGenerator:
    """Returns the same tiny PNG for every request, without yielding to the event loop."""

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        return GeneratedImage(data=NOOP_PNG, content_type="image/png", extension="png")
