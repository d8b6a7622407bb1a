"""The one exception type the media package raises for bad input files."""

from __future__ import annotations


class MediaError(Exception):
    """A media file that cannot be used; the message is a short reason, shown to users verbatim."""
