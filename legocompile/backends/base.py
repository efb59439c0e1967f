"""What a backend must do.

A backend turns a block's ONNX into an engine file for one precision, loads engines, allocates the boundary
buffers that every variant of a block reads and writes, and binds a loaded engine to an (input, output) buffer pair.
The runtime only ever calls the bound callable on the hot path.

The Runtime loads engines from bytes it has read from the bundle and checked against the manifest's sha256
(:func:`legocompile.bundle.reader.read_verified_bytes`), so a file swapped after the check is never loaded. Build
and profiling code may pass a path. An engine is unloaded by dropping every reference to it (the engine and the
callables ``bind`` returned); a backend must free its memory then.

Everything outside ``legocompile/backends`` reaches a backend through this protocol and the registry
(:data:`BACKENDS`, :func:`get_backend`): the Runtime allocates a bundle's boundary buffers and sets up threading
through the backend its options name, and the profiling probe loads engines through it too. Adding a backend means
adding a folder and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from legocompile.errors import LegoCompileError


class Buffer(Protocol):
    """A preallocated tensor that engines read from and write to (host or device memory, the backend's)."""

    def numpy(self) -> Any:
        """The content as a numpy array: host buffers return the array itself (a view; writes go to the buffer),
        device buffers a host copy. For checks; the hot path uses :meth:`upload` and :meth:`download`."""
        ...

    def upload(self, x: Any) -> None:
        """Copy the host array ``x`` into the buffer (the chain's input end)."""
        ...

    def download(self) -> Any:
        """A new host numpy array holding the content, owned by the caller (the chain's output end)."""
        ...


@dataclass
class HostBuffer:
    """A float32 numpy array holding one block boundary in host memory (the CPU backends' buffer)."""

    array: np.ndarray

    def numpy(self) -> np.ndarray:
        return self.array

    def upload(self, x: np.ndarray) -> None:
        np.copyto(self.array, x, casting="same_kind")

    def download(self) -> np.ndarray:
        return self.array.copy()


class Engine(Protocol):
    def bind(self, src: Buffer, dst: Buffer | Sequence[Buffer]) -> Callable[[], None]:
        """Return a no-argument callable that runs the engine from ``src`` into ``dst``, allocating nothing.

        ``dst`` is one buffer, or one buffer per output, in the ONNX's output order, for the last block of a model
        whose ``forward`` returns several tensors (:func:`bound_outputs` checks the count)."""
        ...

    def run(self, x: Any) -> Any:
        """Convenience (allocating) run from a host array to a new host array (a tuple of them for several
        outputs, as :func:`legocompile.outputs.from_outputs` gives): accuracy gate and profiles."""
        ...


def bound_outputs(dst: Any, count: int) -> tuple:
    """``dst`` as one buffer per engine output; a one-line error when the count differs from the engine's."""
    dsts = tuple(dst) if isinstance(dst, (tuple, list)) else (dst,)
    if len(dsts) != count:
        raise LegoCompileError(f"the engine has {count} output{'s' * (count != 1)} but {len(dsts)} buffer"
                               f"{'s were' if len(dsts) != 1 else ' was'} bound")
    return dsts


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

    def configure(self, *, threads: int | None = None, shared: bool | None = None) -> bool:
        """Set this process up to run engines (the Runtime and the profiling probe call it; a build does not).

        ``threads``: CPU threads per engine (None: the backend's default); ``shared``: one process-wide pool, where
        the backend has one. Returns True when engines share a process-wide pool. Backends without such settings
        ignore them and return False."""
        ...

    def preload(self) -> None:
        """Import what loading an engine needs, creating no session, thread or device context (the probe calls
        it once before forking its measuring children, so that they do not each pay for the import)."""
        ...


def _lazy(module: str, attribute: str) -> Callable[[], Backend]:
    """A factory that imports ``module`` (a fixed name from this file, never from a bundle) only when called."""

    def make() -> Backend:
        factory: Callable[[], Backend] = getattr(importlib.import_module(module), attribute)
        return factory()

    return make


# The registry: one line per backend folder. It drives the CLI's --backend choices, config validation and the
# unknown-name error. Backends are imported only when asked for (``--help`` and the CPU path import no GPU package).
BACKENDS: dict[str, Callable[[], Backend]] = {
    "onnxruntime": _lazy("legocompile.backends.onnxrt", "OnnxRuntimeBackend"),
    "onnxruntime-cuda": _lazy("legocompile.backends.onnxrt.gpu", "OrtCudaBackend"),
    "onnxruntime-trt": _lazy("legocompile.backends.onnxrt.gpu", "OrtTensorRTBackend"),
    "reference": _lazy("legocompile.backends.reference", "ReferenceBackend"),
    "tensorrt": _lazy("legocompile.backends.tensorrt", "TensorRTBackend"),
}


def get_backend(name: str) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise LegoCompileError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
    return factory()
