"""ONNX Runtime backend (CPU everywhere; the default)."""

from legocompile.backends.onnxrt.backend import OnnxRuntimeBackend
from legocompile.backends.onnxrt.session import configure_threads, create_session

__all__ = ["OnnxRuntimeBackend", "configure_threads", "create_session"]
