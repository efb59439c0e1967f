"""Engine backends, one folder each. ``get_backend(name)`` is the registry the CLI's choices come from."""

from legocompile.backends.base import BACKENDS, Backend, get_backend

__all__ = ["BACKENDS", "Backend", "get_backend"]
