"""Progress reporting: library code announces stages; the CLI decides how (or whether) to draw them."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int) -> contextlib.AbstractContextManager["Advance"]: ...


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None: ...


class SilentProgress:
    """The default: reports nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator[Advance]:
        yield lambda n=1: None
