"""The C++ selection solver (``lc::PreparedCosts``, the C++ runtime's exact port of :mod:`solver`'s search) via ctypes.

**What and why.** Python's branch and bound costs about 30 us per node; on adversarial tables the worst solves took
3-15 ms, above the runtime's 1 ms target for ``rt.select``. The C++ port answers the same selections (the order of
:mod:`legocompile.optimize.problem` is total, so every exact solver returns the same one) in well under 1 ms.
:class:`~legocompile.optimize.solver.PreparedCosts` uses it when the library loads (``engine == "native"``) and
keeps the Python search as the fallback and the reference.

**How it is built.** ``pip install`` (editable or not) compiles ``legocompile/runtime/cpp/src/solver.cpp``,
``problem.cpp``, ``pyfmt.cpp`` and the C ABI ``solver_capi.cpp`` into ``legocompile/optimize/_native_solver*.so``
(setup.py: an *optional* setuptools extension with the C++ runtime's flags, C++17 -O2 -ffp-contract=off, no
fast-math; an install without a C++ compiler succeeds without it). It is an extension only for the build and the
install location: it has no Python glue and is loaded with ctypes, so it needs no Python headers beyond what the
build already has. An editable install places it in the source tree (git-ignored); rerun ``pip install -e .``
after changing those C++ sources. Until then the library is stale: it records the sha256 of the sources it was
built from (``lc_solver_source_hash``), and a library whose hash differs from the sources beside it is not used
(a warning says so once; the Python search answers).

**Choosing.** ``$LEGOCOMPILE_SOLVER`` (read when a table is prepared): ``auto`` (default: native when the library
loads), ``native`` (a one-line :class:`LegoCompileError` when it is missing) or ``python``.

**The ABI** (solver_capi.cpp): ``lc_solver_prepare`` from flat arrays (per-block option counts, latency double[],
memory int64[], drop double[]) to a handle, ``lc_solver_solve`` (optional latency and memory bounds, the choice
out; status ok / error with a message / infeasible with the least latency and memory), ``lc_solver_free``. No
exception crosses it; each call writes its message to the caller's buffer, so calls on one handle are thread-safe
(ctypes releases the GIL during them).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from legocompile.errors import LegoCompileError
from legocompile.optimize.problem import Cost

__all__ = ["ENGINE_ENV", "NativeSolverError", "NativeTable", "choose_engine", "library_path", "load"]

ENGINE_ENV = "LEGOCOMPILE_SOLVER"
ENGINES = ("auto", "native", "python")
_LIBRARY_STEM = "_native_solver"
# lc_solver status codes (solver_capi.cpp)
_OK, _ERROR, _INFEASIBLE, _INTERNAL = range(4)
_MESSAGE_SIZE = 512
_INT64_MAX = 2**63 - 1
# what setup.py compiles and hashes, in its order (legocompile/runtime/cpp/src/)
SOURCES = ("solver.cpp", "problem.cpp", "pyfmt.cpp", "solver_capi.cpp",
           "solver.hpp", "problem.hpp", "pyfmt.hpp", "error.hpp")
_SOURCE_DIR = Path(__file__).resolve().parents[1] / "runtime" / "cpp" / "src"
logger = logging.getLogger("legocompile")

_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # [] before the first load(), then [library or None]


class NativeSolverError(LegoCompileError):
    """The C++ solver rejected a table or a solve (the caller falls back to the Python search)."""


def library_path() -> Path | None:
    """The built ``_native_solver`` library next to this module, or None."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load() -> ctypes.CDLL | None:
    """The native solver library (loaded once per process), or None when it is not built or does not load."""
    with _lock:
        if not _loaded:
            _loaded.append(_open())
        return _loaded[0]


def _open() -> ctypes.CDLL | None:
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    built_from = _built_from(lib)
    expected = source_hash()
    if expected is not None and built_from != expected:
        logger.warning("the native solver %s was built from other sources than legocompile/runtime/cpp/src holds "
                       "now (rebuild it: pip install -e .); using the Python search", path.name)
        return None
    c_char_p, c_size_t, c_int32, c_double, c_int64 = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32,
                                                      ctypes.c_double, ctypes.c_int64)
    lib.lc_solver_prepare.restype = ctypes.c_int
    lib.lc_solver_prepare.argtypes = [
        c_int32, ctypes.POINTER(c_int32), ctypes.POINTER(c_double), ctypes.POINTER(c_int64),
        ctypes.POINTER(c_double), ctypes.POINTER(ctypes.c_void_p), c_char_p, c_size_t,
    ]
    lib.lc_solver_solve.restype = ctypes.c_int
    lib.lc_solver_solve.argtypes = [
        ctypes.c_void_p, c_int32, c_double, c_int32, c_int64, ctypes.POINTER(c_int32),
        ctypes.POINTER(c_double), ctypes.POINTER(c_int64), c_char_p, c_size_t,
    ]
    lib.lc_solver_free.restype = None
    lib.lc_solver_free.argtypes = [ctypes.c_void_p]
    return lib


def source_hash() -> str | None:
    """sha256 of the C++ sources beside this package (setup.py's hash), or None when they are not shipped."""
    h = hashlib.sha256()
    try:
        for name in SOURCES:
            h.update(name.encode() + b"\0" + (_SOURCE_DIR / name).read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def _built_from(lib: ctypes.CDLL) -> str | None:
    try:
        fn = lib.lc_solver_source_hash
    except AttributeError:  # built before the hash existed
        return None
    fn.restype, fn.argtypes = ctypes.c_char_p, []
    return fn().decode() or None


def choose_engine(engine: str | None = None) -> str:
    """``"native"`` or ``"python"``: ``engine``, else ``$LEGOCOMPILE_SOLVER``, else ``auto``.

    Raises:
        LegoCompileError: An unknown engine name, or ``native`` when the library is not built.
    """
    name = engine if engine is not None else (os.environ.get(ENGINE_ENV) or "auto")
    name = name.strip().lower()
    if name not in ENGINES:
        raise LegoCompileError(f"unknown solver engine {name!r} (from {ENGINE_ENV} or engine=): choose one of "
                               f"{', '.join(ENGINES)}")
    if name == "python":
        return "python"
    if load() is not None:
        return "native"
    if name == "native":
        raise LegoCompileError(
            f"the native solver was asked for ({ENGINE_ENV}=native) but legocompile/optimize/{_LIBRARY_STEM}*.so "
            "is not built: reinstall with a C++17 compiler present (pip install -e .), or use auto/python"
        )
    return "python"


class NativeTable:
    """One cost table prepared in C++ (freed with the object).

    Raises:
        NativeSolverError: The library is missing, a memory value does not fit the C side's int64 (totals
            included), or the C side rejected the table.
    """

    __slots__ = ("_lib", "_handle", "_num_blocks", "__weakref__")

    def __init__(self, costs: Sequence[Sequence[Cost]]) -> None:
        self._handle = None
        lib = load()
        if lib is None:
            raise NativeSolverError("the native solver library is not built")
        if sum(max(c.memory_bytes for c in block) for block in costs) > _INT64_MAX:
            raise NativeSolverError("the memory totals do not fit in 64 bits")
        flat = [c for block in costs for c in block]
        n = len(flat)
        counts = (ctypes.c_int32 * len(costs))(*(len(block) for block in costs))
        latency = (ctypes.c_double * n)(*(c.latency_ms for c in flat))
        memory = (ctypes.c_int64 * n)(*(c.memory_bytes for c in flat))
        drop = (ctypes.c_double * n)(*(c.accuracy_drop for c in flat))
        handle = ctypes.c_void_p()
        message = ctypes.create_string_buffer(_MESSAGE_SIZE)
        status = lib.lc_solver_prepare(len(costs), counts, latency, memory, drop, ctypes.byref(handle), message,
                                       _MESSAGE_SIZE)
        if status != _OK:
            raise NativeSolverError(f"the native solver rejected the table: {message.value.decode(errors='replace')}")
        self._lib = lib
        self._handle = handle
        self._num_blocks = len(costs)

    def solve(self, latency_ms: float | None, memory_bytes: int | None) -> tuple[int, ...] | None:
        """The optimal choice under the bounds (None: unbounded), or None when nothing fits.

        Raises:
            NativeSolverError: The C side failed (out of memory, a bound it rejects).
        """
        if memory_bytes is not None and memory_bytes > _INT64_MAX:
            memory_bytes = None  # beyond every total (they fit in int64): no bound
        choice = (ctypes.c_int32 * self._num_blocks)()
        message = ctypes.create_string_buffer(_MESSAGE_SIZE)
        status = self._lib.lc_solver_solve(
            self._handle, latency_ms is not None, 0.0 if latency_ms is None else latency_ms,
            memory_bytes is not None, 0 if memory_bytes is None else memory_bytes, choice, None, None, message,
            _MESSAGE_SIZE,
        )
        if status == _OK:
            return tuple(choice)
        if status == _INFEASIBLE:
            return None
        raise NativeSolverError(f"the native solver failed: {message.value.decode(errors='replace')}")

    def __del__(self) -> None:
        if self._handle is not None:
            self._lib.lc_solver_free(self._handle)
            self._handle = None
