"""The app's side: an HTTP API, live events and web pages over the same client."""

from portraitkit.web.app import create_app

__all__ = ["create_app"]
