"""Run a bundle as a chain of engine segments.

Design:

* **One buffer per block boundary.** Every variant of block *i* reads the same input buffer and writes the same
  output buffer (pruning never changes boundary shapes), so switching a block changes which engine runs and copies
  nothing. Engines are bound to the buffers once (ORT IOBinding); a call runs the bound engines in order.
* **Selections are immutable plans.** ``select`` loads whatever engines the new selection needs (reusing the ones
  already loaded), builds a new :class:`_Plan` and swaps one reference. ``__call__`` reads that reference once, so
  an inference runs entirely on one selection even while another thread switches.
* **Buffers are per thread** (and per batch size), so concurrent calls never share a boundary buffer and the hot
  path takes no lock. Bindings are cached per thread and engine: switching back and forth allocates nothing new.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from legocompile.backends import get_backend
from legocompile.bundle import Manifest, OptionEntry, read_bundle
from legocompile.errors import LegoCompileError
from legocompile.optimize.select import Selection, costs_of, make_selection, select_options
from legocompile.optimize.solver import prepare


@dataclass(frozen=True)
class _Plan:
    selection: Selection
    engines: tuple[Any, ...]  # loaded engine per block


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[int, list] = {}  # batch size -> boundary buffers (len = blocks + 1)
        self.bound: dict[tuple[int, int, int], Any] = {}  # (batch, block index, id(engine)) -> run callable
        self.plan: _Plan | None = None
        self.batch = -1
        self.runs: tuple = ()


class Runtime:
    """A loaded bundle. ``rt.select(latency_ms=..., memory_mb=...)`` then ``y = rt(x)``."""

    def __init__(
        self, root: Path, manifest: Manifest, *, threads: int | None = None, shared_threads: bool | None = None
    ) -> None:
        from legocompile.backends.onnxrt import configure_threads

        self.root = Path(root)
        self.manifest = manifest
        self._threads = threads or manifest.settings.get("profile", {}).get("threads")
        # Chained sessions share one ORT thread pool (see backends/onnxrt/session.py for the measurements). After
        # this, other ORT sessions in the process must opt in: build them from legocompile's session_options().
        configure_threads(self._threads, shared=shared_threads)
        self._backends: dict[str, Any] = {}
        self._engines: dict[tuple[int, str, str], Any] = {}
        self._load_lock = threading.Lock()
        self._local = _ThreadState()
        self._max_batch_sets = 4
        self._costs = prepare(costs_of(manifest))  # the solver reuses this table on every select()
        original = [b.option("s0", "fp32") for b in manifest.blocks]
        self._plan = self._make_plan(original)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls, path: str | Path, *, verify: bool = True, threads: int | None = None, shared_threads: bool | None = None
    ) -> "Runtime":
        """Open a bundle (checking schema and checksums) and select the all-fp32 original chain.

        Args:
            threads: ORT intra-op threads (default: the count the bundle was profiled with).
            shared_threads: one process-wide ORT pool for all engines (default on; the environment variable
                ``LEGOCOMPILE_SHARED_THREADPOOL=0`` turns it off). Off, each engine has its own pool with spinning
                off, which is slower to chain but leaves other ORT users in the process unconstrained.
        """
        manifest = read_bundle(path, verify=verify)
        return cls(Path(path), manifest, threads=threads, shared_threads=shared_threads)

    def _engine(self, index: int, option: OptionEntry) -> Any:
        key = (index, option.variant, option.precision)
        engine = self._engines.get(key)
        if engine is None:
            with self._load_lock:
                engine = self._engines.get(key)
                if engine is None:
                    backend = self._backends.get(option.backend)
                    if backend is None:
                        backend = self._backends[option.backend] = get_backend(option.backend)
                    engine = backend.load(self.root / option.engine)
                    self._engines[key] = engine
        return engine

    def _make_plan(self, options: Sequence[OptionEntry]) -> _Plan:
        sel = make_selection(self.manifest, options)
        return _Plan(sel, tuple(self._engine(i, o) for i, o in enumerate(sel.options)))

    @property
    def blocks(self):
        return self.manifest.blocks

    @property
    def selection(self) -> Selection:
        return self._plan.selection

    # ----------------------------------------------------------------------------------------------- selecting
    def select(
        self,
        latency_ms: float | None = None,
        memory_mb: float | None = None,
        *,
        selection: Iterable | dict | None = None,
    ) -> Selection:
        """Switch to the best selection under a budget, or to an explicit one.

        Args:
            latency_ms: budget on the sum of profiled block latencies (milliseconds).
            memory_mb: budget on the sum of profiled engine memory (megabytes, 1e6 bytes).
            selection: explicit choice instead of a budget: a sequence of ``(variant, precision)`` pairs or of
                ``{"variant":..., "precision":...}`` dicts in block order, or a dict ``block name -> (variant,
                precision)`` (blocks not named keep the original fp32 option).
        """
        if selection is not None:
            if latency_ms is not None or memory_mb is not None:
                raise LegoCompileError("give either a budget or an explicit selection, not both")
            options = self._explicit(selection)
        else:
            options = self.plan(latency_ms=latency_ms, memory_mb=memory_mb).options
        plan = self._make_plan(options)
        self._plan = plan  # the swap: a single reference assignment, atomic under the GIL
        return plan.selection

    def plan(self, latency_ms: float | None = None, memory_mb: float | None = None) -> Selection:
        """The optimizer's best selection under the budget, without switching to it."""
        return select_options(self.manifest, latency_ms=latency_ms, memory_mb=memory_mb, costs=self._costs)

    def _explicit(self, selection) -> tuple[OptionEntry, ...]:
        blocks = self.manifest.blocks
        if isinstance(selection, dict):
            unknown = set(selection) - {b.name for b in blocks}
            if unknown:
                raise LegoCompileError(f"unknown block {sorted(unknown)[0]!r}; blocks: {', '.join(b.name for b in blocks)}")
            pairs = [selection.get(b.name, ("s0", "fp32")) for b in blocks]
        else:
            pairs = list(selection)
            if len(pairs) != len(blocks):
                raise LegoCompileError(f"selection has {len(pairs)} entries but the bundle has {len(blocks)} blocks")
        out = []
        for b, p in zip(blocks, pairs):
            variant, precision = (p["variant"], p["precision"]) if isinstance(p, dict) else p
            out.append(b.option(variant, precision))
        return tuple(out)

    # ----------------------------------------------------------------------------------------------- running
    def _buffers(self, batch: int) -> list:
        st = self._local
        bufs = st.buffers.get(batch)
        if bufs is None:
            if len(st.buffers) >= self._max_batch_sets:  # bound the per-thread cache: drop the oldest batch size
                oldest = next(iter(st.buffers))
                del st.buffers[oldest]
                st.bound = {k: v for k, v in st.bound.items() if k[0] != oldest}
            backend = self._backends.get("onnxruntime") or get_backend("onnxruntime")
            shapes = [self.manifest.blocks[0].input.shape] + [b.output.shape for b in self.manifest.blocks]
            bufs = [backend.allocate((batch, *s[1:])) for s in shapes]
            st.buffers[batch] = bufs
        return bufs

    def _runs(self, plan: _Plan, batch: int) -> tuple:
        st = self._local
        if st.plan is plan and st.batch == batch:
            return st.runs
        bufs = self._buffers(batch)
        runs = []
        for i, engine in enumerate(plan.engines):
            key = (batch, i, id(engine))
            run = st.bound.get(key)
            if run is None:
                run = st.bound[key] = engine.bind(bufs[i], bufs[i + 1])
            runs.append(run)
        st.plan, st.batch, st.runs = plan, batch, tuple(runs)
        return st.runs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the current selection on a float32 batch shaped like the bundle's input (any batch size)."""
        plan = self._plan  # read once: this call runs on this selection to the end
        expected = self.manifest.input.shape[1:]
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
            raise LegoCompileError(f"input shape {tuple(x.shape)} does not match the bundle's (N, {', '.join(map(str, expected))})")
        runs = self._runs(plan, x.shape[0])
        bufs = self._local.buffers[x.shape[0]]
        np.copyto(bufs[0].array, x, casting="same_kind")
        for run in runs:
            run()
        return bufs[-1].array.copy()

    def predict(self, x: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """Logits for a dataset, in batches."""
        outs = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)
