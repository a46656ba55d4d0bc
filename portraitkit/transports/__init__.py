"""The two ways to the database, behind one small interface (see base.Transport)."""

from portraitkit.transports.base import Transport

__all__ = ["Transport"]
