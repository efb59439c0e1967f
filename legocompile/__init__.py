"""legocompile: export-and-deploy compiler for LegoDNN-style block-switchable models.

``legocompile.compile(model, example_input, ...)`` builds an engine bundle; ``legocompile.Runtime.load(bundle)``
runs it. Both are imported on first use so ``import legocompile`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LegoCompileError", "Runtime", "compile", "__version__"]

from legocompile.errors import LegoCompileError  # noqa: E402


def __getattr__(name: str) -> Any:
    if name == "compile":
        from legocompile.pipeline import compile as _compile

        return _compile
    if name == "Runtime":
        from legocompile.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'legocompile' has no attribute {name!r}")
