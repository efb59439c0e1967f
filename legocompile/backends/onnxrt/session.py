"""ONNX Runtime sessions that chain well, without changing how other ORT users in the process work.

Threading modes (decided once per process by :func:`configure_threads`, which only the Runtime and the profiling
probe call; a process that merely builds keeps ORT's defaults):

* ``own`` (the default): every engine has its own intra-op pool, with spinning off. ORT's default pools spin after
  each run, so the idle sessions of a chain steal the cores from the one that runs (measured ~13× the latency of
  one whole-model session on the 2-core CI machine); spin-waiting threads would also take cycles from the
  application's own threads. Nothing process-wide is touched, so any other ``onnxruntime.InferenceSession`` in the
  application keeps working as usual.
* ``shared`` (opt-in: ``Runtime.load(..., shared_threads=True)`` or ``LEGOCOMPILE_SHARED_THREADPOOL=1``): all
  legocompile sessions run on ORT's process-wide pool, whose threads spin between consecutive blocks instead of
  sleeping. It cannot be undone, and **after it exists ORT refuses every session that does not opt in**
  (``use_per_session_threads = False``): ORT's own calibrators and quantizer (so no build in that process), and a
  plain ``InferenceSession`` elsewhere in the application. Applications that choose it must build their other
  sessions from :func:`session_options`.

``benchmarks/bench_chain.py`` measures chain / whole-model-session latency in each mode, and in a third one kept
for comparison (``own-spin``: own pools that spin during a run and stop when it ends, ``session.force_spinning_stop``).
Measured on the 2-core CI machine with an older ORT: own pools without spinning 1.29×, shared pool 1.09×. On a
loaded machine (other processes wanting the cores) spinning costs far more than it saves: with 2 cores and a load
of 7, fp32 chain/whole measured 1.16× own, 1.19× shared and 1.55× own-spin, and own was the fastest in absolute
terms (6.3 ms against 10.8 ms shared and 44 ms own-spin).

If the application created ORT's global pool itself before loading a bundle, ORT refuses per-session pools;
:func:`create_session` then uses the global pool.

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
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle engines must not take cores
    return so


_GLOBAL_POOL_REFUSAL = "global thread pool"


CPU_ONLY = ("CPUExecutionProvider",)


def create_session(model: str | Path | bytes, *, threads: int | None = None, providers=CPU_ONLY):
    """An InferenceSession with the chaining thread settings (model: a path or ONNX bytes), on the CPU provider
    unless ``providers`` (ORT's list of names or ``(name, options)`` pairs) says otherwise.

    Bytes are handed to ORT through a sealed in-memory file where the OS has them (Linux ``memfd``), not as a
    Python ``bytes``: ORT's Python ``InferenceSession`` keeps a model given as bytes for the life of the session
    (to re-create it on a provider fallback), which would hold a second copy of every engine's weights. Measured on
    the example, all-fp32 chain over the process's base: 25.7 MB with bytes, 14.5 MB this way (profiled: 14.2 MB).
    """
    import onnxruntime as ort

    if isinstance(model, (bytearray, memoryview)):
        model = bytes(model)

    def make(options):
        if isinstance(model, bytes):
            return _session_from_bytes(model, options, list(providers))
        return ort.InferenceSession(str(model), options, providers=list(providers))

    try:
        session = make(session_options(threads=threads))
    except Exception as e:
        if _state["global"] or _GLOBAL_POOL_REFUSAL not in str(e):
            raise
        # someone else in this process created ORT's global pool: per-session pools are refused, so use it
        logger.info("ORT's global thread pool exists in this process; legocompile sessions use it")
        session = make(session_options(shared=True))
    session.disable_fallback()  # no silent re-creation on other providers (and a bytes model could not be re-created)
    return session


def _session_from_bytes(data: bytes, options, providers: list):
    import onnxruntime as ort

    fd = _sealed_memfd(data)
    if fd is None:  # no memfd here: ORT keeps this copy of the bytes as long as the session
        return ort.InferenceSession(data, options, providers=providers)
    try:
        return ort.InferenceSession(f"/proc/self/fd/{fd}", options, providers=providers)
    finally:
        os.close(fd)  # ORT has read it; the in-memory file goes with its last descriptor


def _sealed_memfd(data: bytes) -> int | None:
    """A read-only (sealed) in-memory file holding ``data``, or None where the OS has none."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    import fcntl

    try:
        fd = os.memfd_create("legocompile-engine", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except OSError:
        os.close(fd)
        return None
    return fd
