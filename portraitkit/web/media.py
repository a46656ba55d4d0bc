"""Signed image URLs for a local storage directory, as Supabase Storage signs its own.

A URL names one object and an expiry, signed with HMAC-SHA256 under a key derived from
the local JWT secret: whoever holds it may fetch that object until then, and nobody can
make one for another path. On Supabase the bucket signs its own URLs instead.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from portraitkit.errors import NotAllowed

MEDIA_PREFIX = "/media/"


class MediaSigner:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"portraitkit-media:" + secret.encode()).digest()

    def _signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, path: str, expires_in: int = 3600) -> str:
        """A link valid for at least ``expires_in`` seconds. The expiry is rounded up to a
        whole period, so the same image keeps the same URL for a while and browsers can
        cache it instead of fetching it again on every page."""
        expires = (int(time.time()) // expires_in + 2) * expires_in
        query = urlencode({"exp": expires, "sig": self._signature(path, expires)})
        return f"{MEDIA_PREFIX}{quote(path)}?{query}"

    def check(self, path: str, expires: int, signature: str) -> None:
        if expires < time.time():
            raise NotAllowed("This image link has expired.", details={"path": path})
        if not hmac.compare_digest(self._signature(path, expires), signature):
            raise NotAllowed("This image link is not valid.", details={"path": path})
