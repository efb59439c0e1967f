"""ONNX Runtime sessions that chain well.

Measured on the 2-core CI machine (ResNet-18 example, batch 1, 10 chained sessions vs one whole-model session):
default per-session thread pools with spinning cost 13.5×, because every session's idle intra-op threads spin and
fight for the cores; spinning off cost 1.29×; one **process-wide thread pool** shared by all sessions (threads spin
between consecutive blocks instead of sleeping) plus IOBinding cost 1.09×. So every legocompile session uses the
global pool; if it cannot be created (another library already created one of a different size), sessions fall back
to their own pools with spinning off.

Once ORT's global pool exists, every later session in the process must opt in (``use_per_session_threads =
False``), or ORT refuses to create it. legocompile's own sessions do; code that creates sessions internally (ORT's
calibrators and quantizer) runs inside :func:`ort_compat`, and applications that create their own sessions beside a
``Runtime`` should start from :func:`session_options`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator
from pathlib import Path

from legocompile._log import logger

_lock = threading.Lock()
_state: dict = {"threads": None, "global": None}


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def shared_pool_default() -> bool:
    """Whether a Runtime uses the shared pool unless told otherwise (``LEGOCOMPILE_SHARED_THREADPOOL=0`` turns it off)."""
    return os.environ.get("LEGOCOMPILE_SHARED_THREADPOOL", "1") not in ("0", "false", "no")


def configure_threads(threads: int | None = None, *, shared: bool | None = None) -> bool:
    """Decide this process's ORT threading once; return True if sessions share the process-wide pool.

    Only applications (the Runtime, the profiling probe) call this: a process that merely builds keeps ORT's
    defaults, so it never forces other ORT users in the process to opt in to a global pool.
    """
    import onnxruntime.capi._pybind_state as C

    with _lock:
        if _state["global"] is not None:
            if threads is not None and threads != _state["threads"]:
                logger.debug("ORT threading already set to %s threads; keeping it", _state["threads"])
            return _state["global"]
        n = threads or default_threads()
        _state["threads"] = n
        _state["global"] = False
        if shared_pool_default() if shared is None else shared:
            try:
                C.set_global_thread_pool_sizes(n, 1)
                _state["global"] = True
            except Exception as e:  # pools created elsewhere in this process
                logger.warning("ORT global thread pool unavailable (%s); using per-session pools, spinning off", e)
        return _state["global"]


def session_options(*, optimization: str = "all", threads: int | None = None):
    """SessionOptions for a chained engine: the shared pool if this process set it up, else own threads, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[optimization]
    so.log_severity_level = 3
    if _state["global"]:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads or _state["threads"] or default_threads()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def create_session(model: str | Path | bytes, *, threads: int | None = None):
    """An InferenceSession on the CPU provider with the chaining thread settings."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, session_options(threads=threads), providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def ort_compat() -> Iterator[None]:
    """Let code that builds its own ``onnxruntime.SessionOptions()`` run after the global pool exists.

    Inside the block, ``onnxruntime.SessionOptions`` is a subclass that opts in to the global pool. This is the only
    way to reach the sessions that ``onnxruntime.quantization`` creates internally; it is scoped and serialised.
    """
    import onnxruntime as ort

    if not _state["global"]:
        yield
        return

    base = ort.SessionOptions

    class _SharedPoolOptions(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.use_per_session_threads = False

    with _compat_lock:
        ort.SessionOptions = _SharedPoolOptions
        try:
            yield
        finally:
            ort.SessionOptions = base


_compat_lock = threading.Lock()
