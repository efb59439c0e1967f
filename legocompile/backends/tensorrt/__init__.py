"""TensorRT backend (NVIDIA GPUs and Jetson). TensorRT and pycuda are imported lazily, on first use."""

from __future__ import annotations

from legocompile.errors import MissingDependencyError


class TensorRTBackend:
    name = "tensorrt"
    engine_suffix = ".engine"

    def __init__(self) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise MissingDependencyError("tensorrt", "the tensorrt backend", extra="tensorrt") from None
        raise MissingDependencyError("a TensorRT builder", "the tensorrt backend (not implemented yet in this release)")
