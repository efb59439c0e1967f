"""The chained runtime: one engine per block, one buffer per block boundary, switchable selections."""

from legocompile.optimize.select import Selection
from legocompile.runtime.executor import Runtime

__all__ = ["Runtime", "Selection"]
