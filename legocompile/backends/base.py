"""What a backend must do.

A backend turns a block's ONNX into an engine file for one precision, loads engines, allocates the boundary
buffers that every variant of a block reads and writes, and binds a loaded engine to an (input, output) buffer pair.
The runtime only ever calls the bound callable on the hot path.

The Runtime loads engines from bytes it has read from the bundle and checked against the manifest's sha256
(:func:`legocompile.bundle.reader.read_verified_bytes`), so a file swapped after the check is never loaded. Build
and profiling code may pass a path. An engine is unloaded by dropping every reference to it (the engine and the
callables ``bind`` returned); a backend must free its memory then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from legocompile.errors import LegoCompileError


class Buffer(Protocol):
    """A preallocated tensor that engines read from and write to."""

    def numpy(self) -> Any: ...


class Engine(Protocol):
    def bind(self, src: Buffer, dst: Buffer) -> Callable[[], None]:
        """Return a no-argument callable that runs the engine from ``src`` into ``dst``, allocating nothing."""
        ...


class Backend(Protocol):
    name: str
    engine_suffix: str

    def fingerprint(self) -> dict:
        """Versions and device facts that an engine built by this backend is tied to (part of every cache key)."""
        ...

    def build(
        self, onnx_path: Path, precision: str, out_path: Path, *, ranges: Any = None, recipe: Any = None
    ) -> None:
        """Build the engine for ``precision`` from ``onnx_path`` into ``out_path`` (written atomically).

        ``ranges`` are the block's calibration ranges and ``recipe`` its :class:`calibration.recipe.Int8Recipe`
        (int8 only; backends with one int8 format ignore the recipe)."""
        ...

    def load(self, engine: bytes | Path) -> Engine:
        """Load an engine from its serialized bytes (what the Runtime passes) or from a file."""
        ...

    def allocate(self, shape: tuple[int, ...]) -> Buffer: ...


def _onnxruntime() -> Backend:
    from legocompile.backends.onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend()


def _tensorrt() -> Backend:
    from legocompile.backends.tensorrt import TensorRTBackend

    return TensorRTBackend()


BACKENDS: dict[str, Callable[[], Backend]] = {"onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def get_backend(name: str) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise LegoCompileError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
    return factory()
