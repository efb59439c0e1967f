"""The C++ runtime from Python: the same API as :class:`legocompile.runtime.Runtime`, over ``liblegocompile_runtime``.

``CppRuntime.load(bundle)`` opens the bundle in C++ (schema, safe paths and every sha256 checked there, with the
Python reader's one-line messages); ``select`` / ``plan`` run the C++ port of the optimizer (the same selection as
Python's on every budget); ``rt(x)`` runs the chain in C++ on per-thread boundary buffers. Python only converts
arguments and results: the manifest it exposes is parsed from the very bytes the C++ side verified.

The library is built on first use, like a JIT extension: CMake configures ``legocompile/runtime/cpp`` into a cache
folder keyed by the hash of its sources, the ONNX Runtime library and the build options
(``$LEGOCOMPILE_CPP_CACHE``, default ``~/.cache/legocompile/cpp``); later processes reuse it. A prebuilt library can
be named with ``$LEGOCOMPILE_CPP_LIBRARY``. When the build is impossible, :class:`CppToolchainMissing` says in one
line what is missing (cmake, a C++ compiler, nlohmann-json, OpenSSL, ONNX Runtime's C headers) and how to get it
(``legocompile/runtime/cpp/install_deps.sh`` on Debian).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from legocompile.bundle import Manifest
from legocompile.errors import LegoCompileError, MissingDependencyError
from legocompile.optimize.problem import Budget, InfeasibleBudgetError
from legocompile.optimize.select import Selection, check_latency_quantile, make_selection, selection_pairs
from legocompile.outputs import concat_outputs, from_outputs

CPP_DIR = Path(__file__).resolve().parent / "cpp"
CACHE_ENV = "LEGOCOMPILE_CPP_CACHE"
LIBRARY_ENV = "LEGOCOMPILE_CPP_LIBRARY"
ORT_HOME_ENV = "LEGOCOMPILE_ORT_HOME"
DEFAULT_ORT_HOME = Path("/opt/legocompile/onnxruntime")
LIBRARY_NAME = "liblegocompile_runtime.so"
INSTALL_HINT = "run legocompile/runtime/cpp/install_deps.sh as root (Debian bookworm)"

# lc_status codes (legocompile/runtime.h)
LC_OK, LC_ERROR, LC_INFEASIBLE, LC_ENGINE_ERROR, LC_INVALID_ARGUMENT, LC_OUT_OF_MEMORY, LC_INTERNAL = range(7)


class CppToolchainMissing(MissingDependencyError):
    """The C++ runtime cannot be built here: a tool, a library or ONNX Runtime's C headers are missing."""

    def __init__(self, what: str, hint: str = INSTALL_HINT) -> None:
        LegoCompileError.__init__(self, f"the C++ runtime cannot be built: {what} not found; {hint}")
        self.package = what


# ------------------------------------------------------------------------------------------------ building
def ort_headers() -> Path | None:
    """The folder holding ``onnxruntime_c_api.h``, or None."""
    candidates = []
    if os.environ.get(ORT_HOME_ENV):
        candidates.append(Path(os.environ[ORT_HOME_ENV]) / "include")
    candidates += [DEFAULT_ORT_HOME / "include", Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]
    return next((c for c in candidates if (c / "onnxruntime_c_api.h").is_file()), None)


def ort_library() -> Path | None:
    """The onnxruntime wheel's ``libonnxruntime.so.X.Y.Z`` (what the C++ runtime links), or None."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "capi").glob("libonnxruntime.so.*.*"))
    return found[0].resolve() if found else None


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _header(*relative: str) -> bool:
    roots = [Path("/usr/include"), Path("/usr/local/include"), Path(sys.prefix) / "include"]
    return any((r / rel).is_file() for r in roots for rel in relative)


def missing_toolchain() -> str | None:
    """Why the C++ runtime cannot be built here (one line), or None when everything it needs is present."""
    if os.environ.get(LIBRARY_ENV):
        return None if Path(os.environ[LIBRARY_ENV]).is_file() else f"{LIBRARY_ENV}={os.environ[LIBRARY_ENV]} does not exist"
    try:
        _check_toolchain()
    except CppToolchainMissing as e:
        return str(e)
    return None


def _check_toolchain() -> tuple[str, str, Path, Path]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise CppToolchainMissing("cmake")
    cxx = _compiler()
    if cxx is None:
        raise CppToolchainMissing("a C++17 compiler (g++ or clang++)")
    if not _header("nlohmann/json.hpp"):
        raise CppToolchainMissing("nlohmann-json (nlohmann/json.hpp)")
    if not _header("openssl/evp.h"):
        raise CppToolchainMissing("OpenSSL's headers (openssl/evp.h, libssl-dev)")
    headers = ort_headers()
    if headers is None:
        raise CppToolchainMissing(f"ONNX Runtime's C headers (onnxruntime_c_api.h under {DEFAULT_ORT_HOME}/include)")
    library = ort_library()
    if library is None:
        raise CppToolchainMissing("the onnxruntime wheel's libonnxruntime.so", "pip install onnxruntime")
    return cmake, cxx, headers, library


def sources_hash(folder: Path = CPP_DIR) -> str:
    """sha256 of every file of ``legocompile/runtime/cpp`` (paths and bytes), the cache key's main part."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "legocompile" / "cpp")


def build(*, sanitize: bool = False, tests: bool = False, jobs: int = 2) -> Path:
    """Configure and build the C++ runtime into the cache (once per sources and options); return the build folder.

    Args:
        sanitize: build with AddressSanitizer and UBSan (a separate folder).
        tests: also build the C++ unit tests (``lc_unit_tests``).
        jobs: parallel compile jobs.

    Raises:
        CppToolchainMissing: a tool, a library or the ORT headers are missing (one line, with the fix).
        LegoCompileError: the build failed (the message names the log).
    """
    cmake, cxx, headers, library = _check_toolchain()
    options = {"CMAKE_BUILD_TYPE": "Debug" if sanitize else "Release",
               "LEGOCOMPILE_SANITIZE": "ON" if sanitize else "OFF",
               "LEGOCOMPILE_BUILD_TESTS": "ON" if tests else "OFF",
               "LEGOCOMPILE_BUILD_EXAMPLES": "ON",
               "LEGOCOMPILE_ORT_INCLUDE_DIR": str(headers),
               "LEGOCOMPILE_ORT_LIBRARY": str(library),
               "CMAKE_CXX_COMPILER": cxx}
    if sanitize:  # unoptimized with line tables: sanitizer reports name the line, and the build is quickest
        options["CMAKE_CXX_FLAGS_DEBUG"] = "-O0 -g1"
        options["LEGOCOMPILE_BUILD_EXAMPLES"] = "OFF"
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    # Build from a snapshot of the sources, keyed by the snapshot's hash: a build always matches its key, even
    # while someone edits the tree (a header changed mid-build would otherwise mix two layouts in one library).
    snapshot = Path(tempfile.mkdtemp(prefix=".sources-", dir=root))
    try:
        shutil.copytree(CPP_DIR, snapshot / "source", ignore=shutil.ignore_patterns("__pycache__"))
        key = hashlib.sha256(json.dumps([sources_hash(snapshot / "source"), options, library.stat().st_size],
                                        sort_keys=True).encode())
        name = key.hexdigest()[:16] + ("-asan" if sanitize else "")
        folder = root / name
        if (folder / "ok").is_file():
            return folder
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key at a time, across processes
            if (folder / "ok").is_file():
                return folder
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            os.rename(snapshot / "source", folder / "source")
            _run_build(cmake, folder, options, tests and sanitize, jobs)
            (folder / "ok").write_text(name + "\n")
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    _forget_old_builds(root, sanitize)
    return folder


def _run_build(cmake: str, folder: Path, options: dict, unit_tests_only: bool, jobs: int) -> None:
    """Configure ``folder/source`` into ``folder`` and build; a failure names its log."""
    log = folder / "build.log"
    configure = [cmake, "-S", str(folder / "source"), "-B", str(folder)] + [f"-D{k}={v}" for k, v in options.items()]
    steps = [configure, [cmake, "--build", str(folder), "--parallel", str(max(1, jobs))]
             + (["--target", "lc_unit_tests"] if unit_tests_only else [])]
    with open(log, "w") as out:
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
            if done.returncode != 0:
                raise LegoCompileError(
                    f"building the C++ runtime failed ({Path(step[0]).name} {step[1]} exited {done.returncode}); "
                    f"log: {log}")


def _forget_old_builds(root: Path, sanitize: bool, keep: int = 3) -> None:
    """Delete finished builds of the same kind beyond the ``keep`` newest (sources change; the cache must not grow)."""
    done = [p.parent for p in root.glob("*/ok") if p.parent.name.endswith("-asan") == sanitize]
    for stale in root.glob(".sources-*"):  # snapshots left by a killed process (an hour is far beyond any build)
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    done.sort(key=lambda p: (p / "ok").stat().st_mtime, reverse=True)
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)  # a process still using its library keeps the mapped file
        (root / f"{old.name}.lock").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ ctypes
class _OpenOptions(ctypes.Structure):
    _fields_ = [("verify", ctypes.c_int), ("threads", ctypes.c_int), ("keep_warm_mb", ctypes.c_double)]


class _Budget(ctypes.Structure):
    _fields_ = [("has_latency", ctypes.c_int), ("latency_ms", ctypes.c_double),
                ("has_memory", ctypes.c_int), ("memory_mb", ctypes.c_double)]


class _Totals(ctypes.Structure):
    _fields_ = [("latency_ms", ctypes.c_double), ("memory_bytes", ctypes.c_int64), ("accuracy", ctypes.c_double)]


_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library_path() -> Path:
    """The C++ runtime's shared library: ``$LEGOCOMPILE_CPP_LIBRARY``, else built (once) into the cache."""
    if os.environ.get(LIBRARY_ENV):
        path = Path(os.environ[LIBRARY_ENV])
        if not path.is_file():
            raise CppToolchainMissing(f"{LIBRARY_ENV}={path}", "unset it or build the library")
        return path
    return build() / LIBRARY_NAME


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c = ctypes
    P, S, I64 = c.c_void_p, c.c_size_t, c.c_int64
    sigs = {
        "lc_abi_version": ([], c.c_int),
        "lc_last_error": ([], c.c_char_p),
        "lc_open": ([c.c_char_p, c.POINTER(_OpenOptions), c.POINTER(P)], c.c_int),
        "lc_close": ([P], None),
        "lc_num_blocks": ([P, c.POINTER(S)], c.c_int),
        "lc_num_outputs": ([P, c.POINTER(S)], c.c_int),
        "lc_output_shape": ([P, c.POINTER(I64), S, c.POINTER(S)], c.c_int),
        "lc_manifest_json": ([P, c.POINTER(c.c_void_p), c.POINTER(S)], c.c_int),
        "lc_plan": ([P, c.POINTER(_Budget), c.POINTER(c.c_int32), c.POINTER(_Totals)], c.c_int),
        "lc_select": ([P, c.POINTER(_Budget), c.POINTER(c.c_int32), c.POINTER(_Totals)], c.c_int),
        "lc_select_options": ([P, c.POINTER(c.c_char_p), c.POINTER(c.c_char_p), S, c.POINTER(c.c_int32),
                               c.POINTER(_Totals)], c.c_int),
        "lc_selection": ([P, c.POINTER(c.c_int32), c.POINTER(_Totals)], c.c_int),
        "lc_min_totals": ([P, c.POINTER(c.c_double), c.POINTER(I64)], c.c_int),
        "lc_run": ([P, P, I64, P], c.c_int),
        "lc_run_outputs": ([P, P, I64, c.POINTER(P), S], c.c_int),
        "lc_engine_loads": ([P, c.POINTER(I64)], c.c_int),
        "lc_measure": ([P, P, I64, P, c.c_int, c.c_int, c.POINTER(c.c_double), c.POINTER(c.c_double),
                        c.POINTER(c.c_double)], c.c_int),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    if lib.lc_abi_version() != 1:
        raise LegoCompileError(f"{lib._name}: C ABI version {lib.lc_abi_version()}, this legocompile needs 1")
    return lib


def library() -> ctypes.CDLL:
    """The loaded C library (built on first use); ctypes releases the GIL during every call."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _declare(ctypes.CDLL(str(library_path())))
        return _lib


def _raise(lib: ctypes.CDLL, status: int, infeasible: tuple | None = None) -> None:
    message = (lib.lc_last_error() or b"").decode("utf-8", "surrogateescape")
    if status == LC_INFEASIBLE and infeasible is not None:
        budget, handle = infeasible
        lat, mem = ctypes.c_double(), ctypes.c_int64()
        lib.lc_min_totals(handle, ctypes.byref(lat), ctypes.byref(mem))
        err = InfeasibleBudgetError(budget, lat.value, mem.value)
        err.args = (message,)  # the C++ runtime's text (tests hold it equal to Python's)
        raise err
    if status in (LC_ERROR, LC_INFEASIBLE, LC_ENGINE_ERROR):
        raise LegoCompileError(message)
    if status == LC_INVALID_ARGUMENT:
        raise ValueError(message)
    if status == LC_OUT_OF_MEMORY:
        raise MemoryError(message)
    raise RuntimeError(message)


# ------------------------------------------------------------------------------------------------ the runtime
class CppRuntime:
    """A bundle loaded by the C++ runtime. ``rt.select(latency_ms=..., memory_mb=...)`` then ``y = rt(x)``.

    Same API as :class:`legocompile.runtime.Runtime`: :meth:`load`, :meth:`select`, :meth:`plan`,
    :attr:`selection`, ``__call__``, :meth:`predict`; plus :meth:`close` (also on ``with`` exit and garbage
    collection). Calls may run in many threads at once, also while another thread selects.
    """

    def __init__(self, root: Path, handle: ctypes.c_void_p, lib: ctypes.CDLL) -> None:
        self.root = Path(root)
        self._lib = lib
        self._h = handle
        data, size = ctypes.c_void_p(), ctypes.c_size_t()
        self._check(lib.lc_manifest_json(handle, ctypes.byref(data), ctypes.byref(size)))
        self.manifest = Manifest.from_json(json.loads(ctypes.string_at(data, size.value).decode("utf-8")))
        self._n = len(self.manifest.blocks)
        self._out_shapes = [tuple(t.shape[1:]) for t in self.manifest.outputs]  # several: a model returning a tuple
        self.last_predicted: dict | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        verify: bool = True,
        threads: int | None = None,
        shared_threads: bool | None = None,
        keep_warm_mb: float = 0.0,
        latency_quantile: str = "median",
    ) -> "CppRuntime":
        """Open a bundle in C++ (schema, paths and, with ``verify``, every sha256 checked); no engine loads yet.

        Args:
            threads: ORT intra-op threads per engine (default: the bundle's profile setting, else all cores).
            shared_threads: only False/None: the C++ runtime gives every engine its own pool, spinning stopped
                after each run (ORT's process-wide pool would change how the rest of the process uses ORT).
            keep_warm_mb: profiled memory (MB = 1e6 bytes) of engines outside the selection kept loaded.

        Raises:
            CppToolchainMissing: the library is not built and cannot be (one line: what is missing).
            LegoCompileError: the bundle is damaged (the Python reader's one-line messages).
        """
        if check_latency_quantile(latency_quantile) != "median":
            raise LegoCompileError(f"the C++ runtime budgets on median latencies; latency_quantile="
                                   f"{latency_quantile!r} needs the Python runtime")
        if shared_threads:
            raise LegoCompileError("the C++ runtime runs each engine on its own thread pool; shared_threads=True "
                                   "is not supported (use the Python runtime for ORT's process-wide pool)")
        lib = library()
        options = _OpenOptions(int(bool(verify)), int(threads or 0), float(keep_warm_mb))
        handle = ctypes.c_void_p()
        status = lib.lc_open(os.fsencode(os.fspath(path)), ctypes.byref(options), ctypes.byref(handle))
        if status != LC_OK:
            _raise(lib, status)
        try:
            return cls(Path(path), handle, lib)
        except BaseException:
            lib.lc_close(handle)
            raise

    # ----------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Unload every engine and free the buffers; the runtime is unusable afterwards (no call may be running)."""
        handle, self._h = self._h, None
        if handle:
            self._lib.lc_close(handle)

    def __enter__(self) -> "CppRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None):
            self.close()

    def _handle(self) -> ctypes.c_void_p:
        if not self._h:
            raise LegoCompileError("this CppRuntime is closed")
        return self._h

    def _check(self, status: int, infeasible: tuple | None = None) -> None:
        if status != LC_OK:
            _raise(self._lib, status, infeasible)

    # ----------------------------------------------------------------------------------------------- selecting
    @property
    def blocks(self):
        return self.manifest.blocks

    @property
    def loads(self) -> int:
        """Engines loaded from the bundle so far (a switch back to a warm engine loads nothing)."""
        n = ctypes.c_int64()
        self._check(self._lib.lc_engine_loads(self._handle(), ctypes.byref(n)))
        return n.value

    def _selection(self, choice, totals: _Totals) -> Selection:
        self.last_predicted = {"latency_ms": totals.latency_ms, "memory_bytes": totals.memory_bytes,
                               "accuracy": totals.accuracy}  # the C++ totals of the last selection returned
        options = tuple(b.options[i] for b, i in zip(self.manifest.blocks, choice))
        return make_selection(self.manifest, options)

    @property
    def selection(self) -> Selection:
        """The current selection (before any select or call: the original fp32 one, not loaded yet)."""
        choice, totals = (ctypes.c_int32 * self._n)(), _Totals()
        self._check(self._lib.lc_selection(self._handle(), choice, ctypes.byref(totals)))
        return self._selection(choice, totals)

    def predicted(self) -> dict:
        """The C++ runtime's own totals for the current selection (latency_ms, memory_bytes, accuracy)."""
        choice, totals = (ctypes.c_int32 * self._n)(), _Totals()
        self._check(self._lib.lc_selection(self._handle(), choice, ctypes.byref(totals)))
        return {"latency_ms": totals.latency_ms, "memory_bytes": totals.memory_bytes, "accuracy": totals.accuracy}

    @staticmethod
    def _budget(latency_ms, memory_mb) -> tuple[_Budget, Budget]:
        """The C budget; Python-level argument checks first, with the Python optimizer's exceptions."""
        memory_bytes = None if memory_mb is None else int(round(memory_mb * 1e6))
        asked = Budget(latency_ms=latency_ms, memory_bytes=memory_bytes)  # raises as select_options does
        raw = _Budget(latency_ms is not None, float(latency_ms) if latency_ms is not None else 0.0,
                      memory_mb is not None, float(memory_mb) if memory_mb is not None else 0.0)
        return raw, asked

    def plan(self, latency_ms: float | None = None, memory_mb: float | None = None) -> Selection:
        """The optimizer's best selection under the budget, without switching to it (C++ solver)."""
        raw, asked = self._budget(latency_ms, memory_mb)
        choice, totals = (ctypes.c_int32 * self._n)(), _Totals()
        h = self._handle()
        self._check(self._lib.lc_plan(h, ctypes.byref(raw), choice, ctypes.byref(totals)), (asked, h))
        return self._selection(choice, totals)

    def select(
        self,
        latency_ms: float | None = None,
        memory_mb: float | None = None,
        *,
        selection: Iterable | dict | None = None,
    ) -> Selection:
        """Switch to the best selection under a budget, or to an explicit one (see ``Runtime.select``)."""
        h = self._handle()
        choice, totals = (ctypes.c_int32 * self._n)(), _Totals()
        if selection is not None:
            if latency_ms is not None or memory_mb is not None:
                raise LegoCompileError("give either a budget or an explicit selection, not both")
            pairs = selection_pairs(self.manifest, selection)
            variants = (ctypes.c_char_p * len(pairs))(*(str(v).encode() for v, _ in pairs))
            precisions = (ctypes.c_char_p * len(pairs))(*(str(p).encode() for _, p in pairs))
            self._check(self._lib.lc_select_options(h, variants, precisions, len(pairs), choice, ctypes.byref(totals)))
        else:
            raw, asked = self._budget(latency_ms, memory_mb)
            self._check(self._lib.lc_select(h, ctypes.byref(raw), choice, ctypes.byref(totals)), (asked, h))
        return self._selection(choice, totals)

    # ----------------------------------------------------------------------------------------------- running
    def __call__(self, x: np.ndarray):
        """Run the current selection on a float32 batch shaped like the bundle's input (any batch size): an array,
        or a tuple of arrays for a model that returns several."""
        x = np.asarray(x)
        expected = self.manifest.input.shape[1:]
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
            raise LegoCompileError(f"input shape {tuple(x.shape)} does not match the bundle's (N, {', '.join(map(str, expected))})")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            buf = np.empty(x.shape, np.float32)
            np.copyto(buf, x, casting="same_kind")
            x = buf
        outs = [np.empty((x.shape[0], *s), np.float32) for s in self._out_shapes]
        if len(outs) == 1:
            self._check(self._lib.lc_run(self._handle(), x.ctypes.data, x.shape[0], outs[0].ctypes.data))
        else:
            ptrs = (ctypes.c_void_p * len(outs))(*(o.ctypes.data for o in outs))
            self._check(self._lib.lc_run_outputs(self._handle(), x.ctypes.data, x.shape[0], ptrs, len(outs)))
        return from_outputs(outs)

    def predict(self, x: np.ndarray, *, batch_size: int = 128):
        """Outputs for a dataset, in batches (a tuple of arrays for a model with several outputs)."""
        return concat_outputs([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def measure(self, x: np.ndarray, *, rounds: int = 7, iters: int = 200) -> dict:
        """The chain's time per call, each engine's time inside the chain, and the runtime's own overhead per call
        (call time minus its engines' times), in ns, medians measured inside the library (no ctypes in the loop)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], *self._out_shapes[0]), np.float32)  # further outputs go to C++ scratch
        chain, blocks, overhead = ctypes.c_double(), (ctypes.c_double * self._n)(), ctypes.c_double()
        self._check(self._lib.lc_measure(self._handle(), x.ctypes.data, x.shape[0], out.ctypes.data, rounds, iters,
                                         ctypes.byref(chain), blocks, ctypes.byref(overhead)))
        return {"chain_ns": chain.value, "block_ns": list(blocks), "overhead_ns": overhead.value}
