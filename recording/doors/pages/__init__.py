"""The recordings pages: find, play, hold and audit recordings in a browser, each person seeing
only what they may (README, "The recordings in a browser")."""

from .app import PREFIX, Pages

__all__ = ["PREFIX", "Pages"]
