"""Run a bundle as a chain of engine segments.

Design:

* **One buffer per block boundary.** Every variant of block *i* reads the same input buffer and writes the same
  output buffer (pruning never changes boundary shapes), so switching a block changes which engine runs and copies
  nothing. The buffers live in the memory of the bundle's backend (host arrays for ONNX Runtime's CPU backend,
  device memory for GPU backends), allocated through it; the call copies data in and out only at the chain's ends
  (``Buffer.upload`` / ``Buffer.download``). Engines are bound to the buffers (ORT: IOBinding) once per thread and
  buffer set; a call runs the bound engines in order. Everything backend-specific goes through the backend protocol
  (:mod:`legocompile.backends.base`), threading included.
* **Selections are immutable plans, and a plan owns its engines.** ``select`` loads whatever engines the new
  selection needs (reusing every engine still alive), builds a new :class:`_Plan` and swaps one reference.
  ``__call__`` reads that reference once, so an inference runs entirely on one selection even while another thread
  switches, and the plan it holds keeps that selection's engines alive until it returns.
* **Engines outside the current plan are unloaded.** The Runtime holds engines only through the current plan and
  an optional keep-warm set (at most ``keep_warm_mb`` of profiled memory, default 0, least recently used evicted
  first). An engine that only an old plan still holds is freed when the last call running on that plan returns
  (CPython frees it at once: nothing here forms a reference cycle with an engine). After a switch that freed or
  loaded engines, the C heap's free pages go back to the OS (glibc ``malloc_trim``), so resident memory follows the
  selection. Resident memory is therefore about ``base + memory(selection) + memory(keep-warm set)``, and at most
  ``base + memory_mb + keep_warm_mb`` under a budget, except during a switch while calls on the old plan finish.
* **Lazy loading.** ``Runtime.load`` verifies the bundle and loads no engine. The first call without a ``select``
  uses the original fp32 selection.
* **Verified bytes.** Each engine is loaded from bytes that
  :func:`legocompile.bundle.reader.read_verified_bytes` read and checked against the manifest's sha256, so what
  runs is what was verified, even if a file changes after ``Runtime.load``.
* **Buffers are per thread** (and per batch size, at most 4 sizes per thread), so concurrent calls never share a
  boundary buffer and the hot path takes no lock. Bindings are cached on the engine, weakly keyed by the thread's
  buffer set: switching back to a warm engine allocates nothing, and a thread's bindings go when its buffers go.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from legocompile.backends import get_backend
from legocompile.bundle import Manifest, OptionEntry, read_bundle
from legocompile.errors import LegoCompileError
from legocompile.optimize.select import (
    Selection,
    check_latency_quantile,
    costs_of,
    make_selection,
    select_options,
    selection_pairs,
)
from legocompile.optimize.solver import prepare
from legocompile.outputs import concat_outputs, from_outputs

_EngineKey = tuple[int, str, str]  # (block index, variant, precision)


class _BufferSet:
    """One thread's boundary buffers for one batch size: ``blocks + 1`` buffers, and ``extra``, the buffers of the
    last block's further outputs (a model whose forward returns a tuple; empty otherwise)."""

    __slots__ = ("batch", "buffers", "extra", "__weakref__")

    def __init__(self, batch: int, buffers: list, extra: tuple = ()) -> None:
        self.batch = batch
        self.buffers = buffers
        self.extra = extra

    def outputs_of(self, i: int):
        """What block ``i`` writes: its output buffer, or the last block's buffers when it has several outputs."""
        dst = self.buffers[i + 1]
        return (dst, *self.extra) if self.extra and i + 2 == len(self.buffers) else dst

    def download(self):
        """The chain's result: an array, or a tuple of arrays for several outputs."""
        return from_outputs(tuple(b.download() for b in (self.buffers[-1], *self.extra)))


class _Loaded:
    """A loaded engine and its bindings. Alive while a plan, an in-flight call or the keep-warm set holds it."""

    __slots__ = ("key", "option", "engine", "bound", "__weakref__")

    def __init__(self, key: _EngineKey, option: OptionEntry, engine: Any) -> None:
        self.key = key
        self.option = option
        self.engine = engine
        # buffer set -> bound callable; the callables hold the session and the buffers, never this object
        self.bound: weakref.WeakKeyDictionary[_BufferSet, Any] = weakref.WeakKeyDictionary()

    def run_for(self, bufs: _BufferSet):
        run = self.bound.get(bufs)
        if run is None:
            i = self.key[0]
            run = self.bound[bufs] = self.engine.bind(bufs.buffers[i], bufs.outputs_of(i))
        return run


class _Plan:
    """An immutable selection with the engines that run it (owned: they live as long as the plan)."""

    __slots__ = ("selection", "engines", "runs", "__weakref__")

    def __init__(self, selection: Selection, engines: tuple[_Loaded, ...]) -> None:
        self.selection = selection
        self.engines = engines
        self.runs: weakref.WeakKeyDictionary[_BufferSet, tuple] = weakref.WeakKeyDictionary()

    def runs_for(self, bufs: _BufferSet) -> tuple:
        runs = self.runs.get(bufs)
        if runs is None:
            runs = self.runs[bufs] = tuple(e.run_for(bufs) for e in self.engines)
        return runs


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.sets: dict[int, _BufferSet] = {}  # batch size -> buffer set, oldest first


def _count_freed(counter: list) -> None:
    counter[0] += 1


_malloc_trim: Any = None


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (AttributeError, OSError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)
        return True
    return False


def bundle_backend(manifest: Manifest) -> str:
    """The backend every option of the bundle names (the boundary buffers live in that backend's memory)."""
    names = sorted({o.backend for b in manifest.blocks for o in b.options})
    if len(names) != 1:
        raise LegoCompileError(f"a bundle's engines must all be for one backend; this one names {', '.join(names) or 'none'}")
    return names[0]


class Runtime:
    """A loaded bundle. ``rt.select(latency_ms=..., memory_mb=...)`` then ``y = rt(x)``."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        *,
        threads: int | None = None,
        shared_threads: bool | None = None,
        keep_warm_mb: float = 0.0,
        latency_quantile: str = "median",
    ) -> None:
        self.latency_quantile = check_latency_quantile(latency_quantile)
        if keep_warm_mb < 0:
            raise LegoCompileError(f"keep_warm_mb must be at least 0, got {keep_warm_mb}")
        self.root = Path(root)
        self.manifest = manifest
        self._threads = threads or manifest.settings.get("profile", {}).get("threads")
        self.keep_warm_bytes = int(round(keep_warm_mb * 1e6))
        self._backends: dict[str, Any] = {}
        self.backend_name = bundle_backend(manifest)
        # ONNX Runtime: per-session pools by default, so nothing process-wide changes and other ORT users keep
        # working; the shared process-wide pool is opt-in (see backends/onnxrt/session.py for what it costs).
        self.shared_threads = self._backend(self.backend_name).configure(threads=self._threads, shared=shared_threads)
        self._alive: weakref.WeakValueDictionary[_EngineKey, _Loaded] = weakref.WeakValueDictionary()
        self._warm: OrderedDict[_EngineKey, _Loaded] = OrderedDict()  # outside the plan, kept within budget
        self._freed = [0]  # engines freed so far (weakref finalizers count them; no reference to self)
        self._trimmed_at = 0
        self._select_lock = threading.RLock()
        self._local = _ThreadState()
        self._max_batch_sets = 4
        self._costs = prepare(costs_of(manifest, self.latency_quantile))  # reused by every select()
        self._original = tuple(b.option("s0", "fp32") for b in manifest.blocks)
        self._plan: _Plan | None = None  # nothing loaded until the first select() or call
        self.loads = 0  # engines loaded from the bundle so far (a switch back to a warm engine loads nothing)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        threads: int | None = None,
        shared_threads: bool | None = None,
        keep_warm_mb: float = 0.0,
        impl: str = "python",
        latency_quantile: str = "median",
    ) -> "Runtime":
        """Open a bundle (checking its schema and checksums). No engine is loaded yet: the first call without a
        ``select`` loads the original fp32 selection.

        Args:
            impl: ``"python"``, or ``"cpp"`` for the C++ runtime behind the same API
                (:class:`legocompile.runtime.cpp_runtime.CppRuntime`, built with CMake on first use).
            threads: CPU threads per engine (ORT: intra-op threads; default: the count the bundle was profiled with).
            shared_threads: put all engines on ORT's process-wide pool (default off; the environment variable
                ``LEGOCOMPILE_SHARED_THREADPOOL=1`` turns it on). After that, ORT refuses any other session in
                the process that does not opt in (see :mod:`legocompile.backends.onnxrt.session`).
            keep_warm_mb: profiled memory (MB = 1e6 bytes) that engines outside the current selection may keep
                occupying so that switching back to them is fast; least recently used first out. 0 (the default)
                unloads every engine the current selection does not use.
            latency_quantile: what a latency budget counts: each option's ``"median"`` profiled latency (the
                default; a selection predicted right at its budget runs over it on about half its frames) or its
                ``"p90"`` (a stricter promise; see :data:`legocompile.optimize.select.LATENCY_QUANTILES`).
        """
        if impl == "cpp":
            from legocompile.runtime.cpp_runtime import CppRuntime

            return CppRuntime.load(path, verify=verify, threads=threads, shared_threads=shared_threads,
                                   keep_warm_mb=keep_warm_mb,
                                   latency_quantile=latency_quantile)  # type: ignore[return-value]
        if impl != "python":
            raise LegoCompileError(f"unknown runtime impl {impl!r}; choose 'python' or 'cpp'")
        manifest = read_bundle(path, verify=verify)
        return cls(Path(path), manifest, threads=threads, shared_threads=shared_threads, keep_warm_mb=keep_warm_mb,
                   latency_quantile=latency_quantile)

    def _backend(self, name: str) -> Any:
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = get_backend(name)
        return backend

    def _acquire(self, index: int, option: OptionEntry) -> _Loaded:
        """The loaded engine for ``option``: one still alive anywhere (plan, in-flight call, warm set), or a new one
        loaded from verified bytes. Called with the select lock held."""
        key = (index, option.variant, option.precision)
        loaded = self._alive.get(key)
        if loaded is None:
            from legocompile.bundle import reader

            data = reader.read_verified_bytes(self.root, option.engine, option.sha256)
            loaded = _Loaded(key, option, self._backend(option.backend).load(data))
            del data
            weakref.finalize(loaded, _count_freed, self._freed)
            self._alive[key] = loaded
            self.loads += 1
        return loaded

    @property
    def blocks(self):
        return self.manifest.blocks

    @property
    def selection(self) -> Selection:
        """The current selection (before any select or call: the original fp32 one, not loaded yet)."""
        plan = self._plan
        return plan.selection if plan is not None else make_selection(self.manifest, self._original,
                                                                      self.latency_quantile)

    def loaded_engines(self) -> list[tuple[str, str, str]]:
        """``(block, variant, precision)`` of every engine loaded now: the current selection's, the keep-warm set's,
        and any that a call still running on an older selection holds."""
        names = [b.name for b in self.manifest.blocks]
        return sorted((names[i], v, p) for (i, v, p) in list(self._alive.keys()))

    @property
    def warm_bytes(self) -> int:
        """Profiled memory of the keep-warm set (engines loaded but outside the current selection)."""
        return sum(e.option.memory_bytes for e in list(self._warm.values()))

    # ----------------------------------------------------------------------------------------------- selecting
    def select(
        self,
        latency_ms: float | None = None,
        memory_mb: float | None = None,
        *,
        selection: Iterable | dict | None = None,
    ) -> Selection:
        """Switch to the best selection under a budget, or to an explicit one.

        Engines the new selection does not use are unloaded (or kept within ``keep_warm_mb``) once no running call
        needs them.

        Args:
            latency_ms: budget on the sum of profiled block latencies (milliseconds).
            memory_mb: budget on the sum of profiled engine memory (megabytes, 1e6 bytes).
            selection: explicit choice instead of a budget: a sequence of ``(variant, precision)`` pairs or of
                ``{"variant":..., "precision":...}`` dicts in block order, or a dict ``block name -> (variant,
                precision)`` (blocks not named keep the original fp32 option). An option that the bundle marks as
                excluded is refused.
        """
        if selection is not None:
            if latency_ms is not None or memory_mb is not None:
                raise LegoCompileError("give either a budget or an explicit selection, not both")
            options = self._explicit(selection)
        else:
            options = self.plan(latency_ms=latency_ms, memory_mb=memory_mb).options
        return self._switch(options).selection

    def _switch(self, options: Sequence[OptionEntry]) -> _Plan:
        sel = make_selection(self.manifest, options, self.latency_quantile)
        with self._select_lock:
            loads = self.loads
            plan = _Plan(sel, tuple(self._acquire(i, o) for i, o in enumerate(sel.options)))
            old, self._plan = self._plan, plan  # the swap: a single reference assignment, atomic under the GIL
            self._retire(old, plan)
            del old  # the old plan's engines go now, or when the last call still running on it returns
            if self.loads != loads or self._freed[0] != self._trimmed_at:
                self._trimmed_at = self._freed[0]
                release_free_heap()
        return plan

    def _retire(self, old: _Plan | None, new: _Plan) -> None:
        """Move the engines that ``old`` used and ``new`` does not into the keep-warm set; evict beyond budget."""
        current = {e.key for e in new.engines}
        for key in current:
            self._warm.pop(key, None)  # in the plan now: not counted as warm
        if old is not None:
            for e in old.engines:
                if e.key not in current:
                    self._warm[e.key] = e
                    self._warm.move_to_end(e.key)
        total = sum(e.option.memory_bytes for e in self._warm.values())
        while self._warm and total > self.keep_warm_bytes:
            _, e = self._warm.popitem(last=False)
            total -= e.option.memory_bytes

    def _default_plan(self) -> _Plan:
        with self._select_lock:
            plan = self._plan
            return plan if plan is not None else self._switch(self._original)

    def plan(self, latency_ms: float | None = None, memory_mb: float | None = None) -> Selection:
        """The optimizer's best selection under the budget, without switching to it."""
        return select_options(self.manifest, latency_ms=latency_ms, memory_mb=memory_mb, costs=self._costs,
                              latency_quantile=self.latency_quantile)

    def _explicit(self, selection) -> tuple[OptionEntry, ...]:
        out = []
        for b, (variant, precision) in zip(self.manifest.blocks, selection_pairs(self.manifest, selection)):
            option = b.option(variant, precision)
            reason = getattr(option, "excluded", None)
            if reason:
                reason = " ".join(str(reason).split())  # one line, whatever the manifest holds
                raise LegoCompileError(f"block {b.name!r}: option {variant}/{precision} is excluded from selection: {reason}")
            out.append(option)
        return tuple(out)

    # ----------------------------------------------------------------------------------------------- running
    def _buffer_set(self, batch: int) -> _BufferSet:
        sets = self._local.sets
        bufs = sets.get(batch)
        if bufs is None:
            if len(sets) >= self._max_batch_sets:  # bound the per-thread cache: drop the oldest batch size
                del sets[next(iter(sets))]  # its bindings go with it (weakly keyed)
            backend = self._backend(self.backend_name)  # the buffers live in the bundle's backend's memory
            shapes = [self.manifest.blocks[0].input.shape] + [b.output.shape for b in self.manifest.blocks]
            extra = tuple(backend.allocate((batch, *t.shape[1:])) for t in self.manifest.blocks[-1].extra_outputs)
            bufs = sets[batch] = _BufferSet(batch, [backend.allocate((batch, *s[1:])) for s in shapes], extra)
        return bufs

    def __call__(self, x: np.ndarray) -> Any:
        """Run the current selection on a float32 batch shaped like the bundle's input (any batch size).

        Returns the output array, or a tuple of arrays (in the model's order) when the model returns several."""
        plan = self._plan or self._default_plan()  # read once: this call runs on this plan, which it keeps alive
        expected = self.manifest.input.shape[1:]
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
            raise LegoCompileError(f"input shape {tuple(x.shape)} does not match the bundle's (N, {', '.join(map(str, expected))})")
        bufs = self._buffer_set(x.shape[0])
        runs = plan.runs_for(bufs)
        bufs.buffers[0].upload(x)
        for run in runs:
            run()
        return bufs.download()

    def predict(self, x: np.ndarray, *, batch_size: int = 128) -> Any:
        """Outputs for a dataset, in batches (an array, or a tuple of arrays for a model with several outputs)."""
        return concat_outputs([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
