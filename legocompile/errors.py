"""The project's user-facing exceptions.

A :class:`LegoCompileError` is a user error: the CLI prints its message on one line, without a traceback, and
exits 1. Messages say what failed, what was asked for, and how to fix it.
"""

from __future__ import annotations


class LegoCompileError(Exception):
    """A user error (bad input, bad config, missing file, infeasible budget...)."""


class MissingDependencyError(LegoCompileError):
    """An optional dependency (TensorRT, pycuda, ...) is needed for what was asked but is not installed."""

    def __init__(self, package: str, needed_for: str, extra: str | None = None) -> None:
        hint = f"pip install 'legocompile[{extra}]'" if extra else f"install {package}"
        super().__init__(f"{package} is required for {needed_for} but is not installed ({hint})")
        self.package = package
