"""ONNX Runtime sessions that chain well, without changing how other ORT users in the process work.

Threading modes (decided once per process by :func:`configure_threads`, which only the Runtime and the profiling
probe call; a process that merely builds keeps ORT's defaults):

* ``own`` (the default): every engine has its own intra-op pool. ORT's default pools spin after each run, so the
  idle sessions of a chain steal the cores from the one that runs (measured ~13× the latency of one whole-model
  session on the 2-core CI machine). legocompile's sessions therefore stop spinning when their run ends
  (``session.force_spinning_stop``), while still spinning between the kernels of one run. Nothing process-wide is
  touched, so any other ``onnxruntime.InferenceSession`` in the application keeps working as usual.
* ``shared`` (opt-in: ``Runtime.load(..., shared_threads=True)`` or ``LEGOCOMPILE_SHARED_THREADPOOL=1``): all
  legocompile sessions run on ORT's process-wide pool. It cannot be undone, and **after it exists ORT refuses every
  session that does not opt in** (``use_per_session_threads = False``), including ORT's own calibrators and
  quantizer, and a plain ``InferenceSession`` elsewhere in the application. Applications that choose it must build
  their other sessions from :func:`session_options`. ``benchmarks/bench_chain.py`` measures both modes
  (chain / whole-model-session latency per mode) so the trade-off is a number, not a belief.

If the application created ORT's global pool itself before loading a bundle, per-session sessions are refused by
ORT; :func:`create_session` then retries on the global pool.

Nothing here monkeypatches ``onnxruntime``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from legocompile._log import logger

_lock = threading.Lock()
_state: dict = {"threads": None, "global": None}

SHARED_ENV = "LEGOCOMPILE_SHARED_THREADPOOL"


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def shared_pool_default() -> bool:
    """Whether a Runtime uses the process-wide pool unless told otherwise: off, unless ``LEGOCOMPILE_SHARED_THREADPOOL=1``."""
    return os.environ.get(SHARED_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def configure_threads(threads: int | None = None, *, shared: bool | None = None) -> bool:
    """Decide this process's ORT threading once; return True if sessions share ORT's process-wide pool.

    The first call decides; later calls keep that decision (a process-wide pool cannot be undone), except that a
    process still in ``own`` mode may switch to ``shared`` when asked explicitly.
    """
    want_shared = shared_pool_default() if shared is None else bool(shared)
    with _lock:
        if _state["global"] is not None:
            if threads is not None and threads != _state["threads"]:
                logger.debug("ORT threading already set to %s threads; keeping it", _state["threads"])
            if want_shared and not _state["global"] and shared:
                _state["global"] = _create_global_pool(_state["threads"])
            return _state["global"]
        n = threads or default_threads()
        _state["threads"] = n
        _state["global"] = _create_global_pool(n) if want_shared else False
        return _state["global"]


def _create_global_pool(n: int) -> bool:
    import onnxruntime.capi._pybind_state as C  # the only entry point ORT offers for its global pool

    try:
        C.set_global_thread_pool_sizes(n, 1)
        return True
    except Exception as e:  # the ORT environment already exists in this process
        logger.warning("ORT global thread pool unavailable (%s); using per-session pools", e)
        return False


def thread_mode() -> str:
    """``shared`` or ``own`` (see the module docstring); ``own`` before :func:`configure_threads` ran."""
    return "shared" if _state["global"] else "own"


def session_options(*, optimization: str = "all", threads: int | None = None, shared: bool | None = None):
    """SessionOptions for a chained engine, in this process's threading mode (or the one ``shared`` names)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[optimization]
    so.log_severity_level = 3
    if _state["global"] if shared is None else shared:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads or _state["threads"] or default_threads()
        so.inter_op_num_threads = 1
        # spin between the kernels of a run, sleep once the run ends: an idle engine must not steal the cores
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


_GLOBAL_POOL_REFUSAL = "global thread pool"


def create_session(model: str | Path | bytes, *, threads: int | None = None):
    """An InferenceSession on the CPU provider with the chaining thread settings (model: a path or ONNX bytes)."""
    import onnxruntime as ort

    src = model if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
    if isinstance(src, (bytearray, memoryview)):
        src = bytes(src)
    try:
        return ort.InferenceSession(src, session_options(threads=threads), providers=["CPUExecutionProvider"])
    except Exception as e:
        if _state["global"] or _GLOBAL_POOL_REFUSAL not in str(e):
            raise
        # someone else in this process created ORT's global pool: per-session pools are refused, so use it
        logger.info("ORT's global thread pool exists in this process; legocompile sessions use it")
        return ort.InferenceSession(src, session_options(shared=True), providers=["CPUExecutionProvider"])


def ort_compat():
    """Deprecated no-op, kept only until ``legocompile/pipeline.py`` stops importing it; delete both together.

    It used to swap ``onnxruntime.SessionOptions`` module-wide. legocompile no longer patches onnxruntime: in the
    default threading mode nothing needs it, and in the opt-in ``shared`` mode code that builds its own sessions
    must start from :func:`session_options`.
    """
    import contextlib

    return contextlib.nullcontext()
