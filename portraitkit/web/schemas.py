"""The HTTP API's bodies: the client's models plus what a browser needs (image URLs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from portraitkit.models import BatchSummary, Generation

# PostgreSQL text cannot hold NUL: such input is refused here, as the document says.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]


class ErrorBody(BaseModel):
    """Every error: the SQL contract's code, a message for people, details for programs."""

    code: str = Field(examples=["insufficient_credits"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class BatchCard(BatchSummary):
    """A gallery card, with URLs for its cover and its source photo."""

    cover_url: str | None = None
    source_url: str | None = None


class GenerationOut(Generation):
    image_url: str | None = None


class BatchDetail(BatchCard):
    items: list[GenerationOut]
    refunded_credits: int = Field(0, description="Refunded for items now failed or cancelled.")
    net_credits: int = Field(description="What the batch cost in the end: charged less refunded.")


class BatchList(BaseModel):
    items: list[BatchCard]
    next_cursor: str | None = None


class StyleOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str
    name: str
    category: str
    description: str
    credit_cost: int


class StyleCategory(BaseModel):
    category: str
    styles: list[StyleOut]


class CreateFromStorage(BaseModel):
    """A batch for a photo already in the user's storage folder."""

    model_config = ConfigDict(extra="forbid")

    styles: list[Text] = Field(min_length=1, examples=[["pencil_sketch", "pop_art"]])
    source_path: Text = Field(examples=["00000000-0000-0000-0000-000000000000/sources/a.jpg"])
    custom_prompt: Text | None = None


class Health(BaseModel):
    status: str
