"""A hosted image model behind Replicate's predictions API (or anything shaped like it).

One generation is three steps: create a prediction with the source as a data URI and the
prompt, poll the prediction's ``urls.get`` until it ends, download its ``output`` (a URL or
a list of URLs; the first is taken). The model is ``owner/name`` (the model's latest
version, ``POST /v1/models/{owner}/{name}/predictions``), ``owner/name:version`` or a bare
version id (both ``POST /v1/predictions`` with ``"version"``).

What the worker sees:

===============================================  ==========================================
situation                                        raised
===============================================  ==========================================
429, 408 or 5xx, still so after ``max_retries``  :class:`RetryableGenerationError`
backoffs (each honours ``Retry-After``)
``Retry-After`` longer than ``max_backoff``      :class:`RetryableGenerationError` at once,
                                                 with ``details["retry_after"]``
timeout, connection error                        :class:`RetryableGenerationError` (no
                                                 in-place retry: a timed-out create may
                                                 have started a paid prediction)
any other 4xx (400, 401, 403, 404, 422, ...)     :class:`PermanentGenerationError`
prediction ``failed``                            :class:`PermanentGenerationError`, unless
                                                 its error names a transient infrastructure
                                                 fault (:data:`TRANSIENT_FAILURE_MARKERS`)
prediction ``canceled``                          :class:`PermanentGenerationError`
still running after ``max_wait``                 :class:`RetryableGenerationError` (and the
                                                 prediction is cancelled, best effort)
no output, or an output that is not an image     :class:`PermanentGenerationError`
===============================================  ==========================================
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import wait_exponential

from portraitkit.errors import (
    ConfigurationError,
    PermanentGenerationError,
    RetryableGenerationError,
)
from portraitkit.generators.base import GeneratedImage, GenerationRequest, sniff_image_type
from portraitkit.retrying import retry_after_or, retrying

DEFAULT_BASE_URL = "https://api.replicate.com"
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
RUNNING_STATUSES = frozenset({"starting", "processing"})
# A failed prediction is retried only when its error text names one of these, i.e. the
# provider's machinery failed rather than the model rejecting this input.
TRANSIENT_FAILURE_MARKERS = (
    "timed out",
    "timeout",
    "temporarily unavailable",
    "out of capacity",
    "try again",
    "connection reset",
)
CONTENT_TYPE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

Sleep = Callable[[float], Awaitable[None]]
Prediction = dict[str, Any]


class _Busy(Exception):
    """A 429, 408 or 5xx answer: worth asking again, after ``Retry-After`` if it says."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.detail = _detail(response)
        self.retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())
        super().__init__(f"answered {self.status}: {self.detail}")


class HttpGenerator:
    """Renders with a hosted model; ``client``, ``sleep`` and ``clock`` are for tests."""

    def __init__(
        self,
        *,
        api_token: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 1.0,
        max_wait: float = 300.0,
        prefer_wait: int | None = None,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        extra_input: Mapping[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not api_token:
            raise ConfigurationError("The http generator needs an API token.")
        if prefer_wait is not None and not 1 <= prefer_wait <= 60:
            raise ConfigurationError("prefer_wait must be between 1 and 60 seconds.")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.prefer_wait = prefer_wait
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.extra_input = dict(extra_input or {})
        self._token = api_token
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._sleep = sleep
        self._clock = clock

    async def aclose(self) -> None:
        """Close the HTTP client if this generator made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpGenerator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        model = request.model or self.model
        if not model:
            raise PermanentGenerationError(
                f"Style {request.style_key!r} names no model for the http generator.",
                details={"style_key": request.style_key},
            )
        prediction = await self._create(model, request)
        prediction = await self._wait(prediction)
        return await self._download(_first_output(prediction))

    # -- the three steps ----------------------------------------------------------------

    async def _create(self, model: str, request: GenerationRequest) -> Prediction:
        url, body = self._create_target(model)
        body["input"] = {
            **self.extra_input,
            "image": _data_uri(request.source),
            "prompt": request.prompt,
        }
        headers, timeout = {}, self.timeout
        if self.prefer_wait:
            headers["Prefer"] = f"wait={self.prefer_wait}"
            timeout += self.prefer_wait  # the server may hold the request that long
        response = await self._request("POST", url, json=body, headers=headers, timeout=timeout)
        return _json(response)

    def _create_target(self, model: str) -> tuple[str, dict[str, Any]]:
        name, _, version = model.partition(":")
        if version:
            return f"{self.base_url}/v1/predictions", {"version": version}
        if "/" in name:
            owner, _, model_name = name.partition("/")
            return f"{self.base_url}/v1/models/{owner}/{model_name}/predictions", {}
        return f"{self.base_url}/v1/predictions", {"version": name}

    async def _wait(self, prediction: Prediction) -> Prediction:
        deadline = self._clock() + self.max_wait
        poll_url: str | None = None
        while True:
            status = prediction.get("status")
            if status == "succeeded":
                return prediction
            if status == "failed":
                raise _failure(prediction)
            if status == "canceled":
                raise PermanentGenerationError(
                    "The prediction was canceled.", details={"prediction": prediction.get("id")}
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                await self._cancel(prediction)
                raise RetryableGenerationError(
                    f"The prediction did not finish within {self.max_wait:g} s.",
                    details={"prediction": prediction.get("id"), "status": status},
                )
            poll_url = poll_url or _poll_url(prediction, self.base_url)
            await self._sleep(min(self.poll_interval, remaining))
            prediction = _json(await self._request("GET", poll_url))

    async def _download(self, url: str) -> GeneratedImage:
        if url.startswith("data:"):
            data = _decode_data_uri(url)
            content_type = None
        else:
            response = await self._request("GET", url, authorize=self._same_origin(url))
            data = response.content
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
        sniffed = sniff_image_type(data)
        if sniffed is None and content_type in CONTENT_TYPE_EXTENSIONS:
            sniffed = content_type, CONTENT_TYPE_EXTENSIONS[content_type]
        if sniffed is None:
            raise PermanentGenerationError(
                "The model's output is not a PNG, JPEG or WebP image.",
                details={"url": url[:200], "content_type": content_type},
            )
        return GeneratedImage(data=data, content_type=sniffed[0], extension=sniffed[1])

    async def _cancel(self, prediction: Prediction) -> None:
        """Stop paying for a prediction we gave up on; failing to is not an error."""
        url = (prediction.get("urls") or {}).get("cancel")
        if not url:
            return
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post(url, headers=self._headers(authorize=True))

    # -- HTTP with the error policy -----------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        authorize: bool = True,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, with 429/408/5xx asked again after a backoff (or the server's
        ``Retry-After``, if no longer than ``max_backoff``); other failures classified."""
        kwargs.setdefault("timeout", self.timeout)
        headers = {**self._headers(authorize), **(headers or {})}
        tries = 0
        try:
            async for attempt in retrying(
                f"{method} {_short(url)}",
                attempts=self.max_retries + 1,
                retry_on=self._worth_waiting_for,
                wait=retry_after_or(
                    wait_exponential(multiplier=self.backoff, max=self.max_backoff),
                    lambda error: error.retry_after if isinstance(error, _Busy) else None,
                ),
                sleep=self._sleep,
            ):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    response = await self._send(method, url, headers, **kwargs)
        except _Busy as busy:
            details: dict[str, Any] = {"status": busy.status, "url": _short(url)}
            if busy.retry_after is not None:
                details["retry_after"] = busy.retry_after
            raise RetryableGenerationError(
                f"{method} {_short(url)} answered {busy.status} {tries} time(s): {busy.detail}",
                details=details,
            ) from None
        return response

    def _worth_waiting_for(self, error: BaseException) -> bool:
        """A busy answer, unless the server asks for a longer wait than we allow: the
        worker's own backoff (the item back in the queue) then does the waiting."""
        return isinstance(error, _Busy) and (error.retry_after or 0.0) <= self.max_backoff

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], **kwargs: Any
    ) -> httpx.Response:
        """One request: its response, :class:`_Busy` for an answer worth asking again, or
        the generation error the failure means."""
        try:
            response = await self._client.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise RetryableGenerationError(
                f"{method} {_short(url)} timed out.", details={"url": _short(url)}
            ) from exc
        except httpx.TransportError as exc:
            raise RetryableGenerationError(
                f"{method} {_short(url)} failed: {exc!s}", details={"url": _short(url)}
            ) from exc
        status = response.status_code
        if status < 400:
            return response
        if status not in RETRYABLE_STATUSES and status < 500:
            raise PermanentGenerationError(
                f"{method} {_short(url)} was refused with {status}: {_detail(response)}",
                details={"status": status, "url": _short(url)},
            )
        raise _Busy(response)

    def _headers(self, authorize: bool) -> dict[str, str]:
        headers = {"User-Agent": "portraitkit"}
        if authorize:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _same_origin(self, url: str) -> bool:
        """Send the token only to the API's own host, never to a file CDN."""
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header (delay in seconds, or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _failure(prediction: Prediction) -> PermanentGenerationError | RetryableGenerationError:
    error = str(prediction.get("error") or "no error given")
    details = {"prediction": prediction.get("id"), "error": error}
    if any(marker in error.lower() for marker in TRANSIENT_FAILURE_MARKERS):
        return RetryableGenerationError(f"The prediction failed: {error}", details=details)
    return PermanentGenerationError(f"The prediction failed: {error}", details=details)


def _first_output(prediction: Prediction) -> str:
    output = prediction.get("output")
    if isinstance(output, list):
        output = output[0] if output else None
    if not isinstance(output, str) or not output:
        raise PermanentGenerationError(
            "The prediction succeeded without an image URL in its output.",
            details={"prediction": prediction.get("id"), "output": repr(output)[:200]},
        )
    return output


def _poll_url(prediction: Prediction, base_url: str) -> str:
    url = (prediction.get("urls") or {}).get("get")
    if url:
        return str(url)
    if prediction.get("id"):
        return f"{base_url}/v1/predictions/{prediction['id']}"
    raise PermanentGenerationError(
        "The prediction has neither urls.get nor an id to poll.",
        details={"prediction": repr(prediction)[:200]},
    )


def _json(response: httpx.Response) -> Prediction:
    """The prediction in a response body; a body that is not one looks like a proxy's error
    page, so it is worth another try later."""
    try:
        body = response.json()
    except ValueError as exc:
        raise RetryableGenerationError(
            f"{_short(str(response.url))} did not answer with JSON.",
            details={"status": response.status_code},
        ) from exc
    if not isinstance(body, dict):
        raise RetryableGenerationError(f"{_short(str(response.url))} did not answer an object.")
    return body


def _data_uri(source: bytes) -> str:
    content_type = (sniff_image_type(source) or ("application/octet-stream", ""))[0]
    return f"data:{content_type};base64,{base64.b64encode(source).decode('ascii')}"


def _decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise PermanentGenerationError("The model's output data URI is not base64.")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise PermanentGenerationError("The model's output data URI is corrupt.") from exc


def _detail(response: httpx.Response) -> str:
    """The error text of an API answer: Replicate puts it in ``detail``."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:200]
    return str(body)[:200]


def _short(url: str) -> str:
    """A URL without its query string (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
