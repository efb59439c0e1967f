"""Run TensorRT engines as a chain of block segments on the GPU.

* **One device buffer per block boundary**, shared by every variant of the neighbouring blocks:
  :class:`BoundaryBuffers` lays all boundaries of one batch size out in a single allocation
  (:func:`~legocompile.backends.tensorrt.cuda_memory.plan_buffers`). Switching a block's variant or precision
  changes which engine runs, never where data lives.
* **Bound once**: :meth:`TrtEngine.bind` creates one execution context per (engine, buffers) pair, sets its input
  shape and calls ``set_tensor_address`` once; the returned callable only calls ``execute_async_v3``.
* **One CUDA stream** (:class:`ExecutionResources`) for every engine; nothing synchronizes between blocks.
* **Pinned host buffers at the chain's two ends only**: :meth:`TrtChain.run` copies the input in and the output out
  asynchronously and synchronizes once.
* **Shared scratch** (TensorRT 10.1+): contexts are created ``USER_MANAGED`` and all point at one scratch
  allocation sized for the largest engine, since engines on one stream never run at the same time.
* **CUDA graphs** (cuda-python only): the whole selected chain is captured and replayed; a switch or a new batch
  size means another graph, decided by the pure :func:`graph_action`.

Engines load from ``bytes`` (a verified bundle) or a path; the legocompile header is checked against this device
before TensorRT sees the plan (:func:`~legocompile.backends.tensorrt.engine_file.compatibility_error`).

A chain (and its buffers and contexts) belongs to one thread: TensorRT execution contexts are not thread-safe.
Nothing here has run on a GPU in this repository's CI.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Hashable, Literal, Protocol, Sequence

import numpy as np

from legocompile.backends.tensorrt import version as v
from legocompile.backends.tensorrt.cuda_memory import DeviceApi, Stream, load_device_api, plan_buffers
from legocompile.backends.tensorrt.engine_file import DeviceFacts, compatibility_error, unpack
from legocompile.backends.base import bound_outputs
from legocompile.errors import LegoCompileError
from legocompile.export.onnx_export import output_names
from legocompile.outputs import from_outputs

if TYPE_CHECKING:
    import tensorrt as trt

GraphKey = tuple[tuple[Hashable, ...], int]
GraphAction = Literal["launch", "capture", "warmup", "eager"]


# --------------------------------------------------------------------------------------------------- pure rules
def graph_action(
    wanted: GraphKey,
    captured: Collection[GraphKey],
    warmed: Collection[GraphKey],
    failed: Collection[GraphKey] = (),
) -> GraphAction:
    """What to do to run the chain ``wanted`` = (engine key per block, batch size) with CUDA graphs.

    * ``"launch"``: a graph of exactly this selection and batch size is captured: replay it.
    * ``"warmup"``: not captured and not yet run: run it eagerly first (TensorRT finishes shape-dependent setup
      in its first ``execute_async_v3``, which must not be captured).
    * ``"capture"``: warmed up but not captured (a new selection after a switch, or a new batch size): capture.
    * ``"eager"``: capturing this chain failed before: run without a graph.

    A switch changes the engine tuple and a new batch size changes the buffers (and shapes), so either needs
    another graph; switching back to a selection whose graph is still cached replays it.
    """
    if wanted in failed:
        return "eager"
    if wanted in captured:
        return "launch"
    if wanted not in warmed:
        return "warmup"
    return "capture"


def needs_recapture(old: GraphKey | None, new_engines: Sequence[Hashable], batch: int) -> bool:
    """Whether the graph captured for ``old`` cannot replay ``new_engines`` at ``batch`` (switch or batch change)."""
    return old != (tuple(new_engines), batch)


# ------------------------------------------------------------------------------------------------- device state
class DeviceTensor(Protocol):
    """What ``bind`` needs of a buffer: a device address, a shape (and dtype and size)."""

    @property
    def ptr(self) -> int: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class TensorView:
    """A tensor inside a larger device allocation (which its owner keeps alive)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    owner: object = None

    def numpy(self) -> np.ndarray:
        raise LegoCompileError("read a chain boundary through TrtChain.run (it copies only at the chain's ends)")


class ExecutionResources:
    """What all engines of a process share: the CUDA adapter, one stream, this device's facts, the scratch memory.

    Args:
        api: The CUDA adapter (default: :func:`~legocompile.backends.tensorrt.cuda_memory.load_device_api`).
        shared_scratch: Share one scratch allocation among all contexts (TensorRT 10.1+ only; default on there).
    """

    def __init__(self, api: DeviceApi | None = None, *, shared_scratch: bool | None = None) -> None:
        self.version = v.installed_version()
        v.check_supported(self.version)
        self.api = api if api is not None else load_device_api()
        self.stream: Stream = self.api.stream_create()
        self.device = DeviceFacts(self.version, self.api.device_name(), self.api.compute_capability())
        allowed = v.user_managed_scratch(self.version)
        self.shared_scratch = allowed if shared_scratch is None else (shared_scratch and allowed)
        self._lock = threading.Lock()
        self._scratch_ptr = 0
        self._scratch_bytes = 0
        # Contexts pointing at the shared scratch, held weakly: an engine is unloaded by dropping its references.
        self._scratch_users: list[Callable[[], trt.IExecutionContext | None]] = []
        self._runtime: trt.Runtime | None = None

    def runtime(self) -> trt.Runtime:
        import tensorrt as trt

        from legocompile.backends.tensorrt.builder import trt_logger

        with self._lock:
            if self._runtime is None:
                self._runtime = trt.Runtime(trt_logger())
            return self._runtime

    def create_context(self, engine: trt.ICudaEngine, scratch_bytes: int) -> trt.IExecutionContext:
        """An execution context; with shared scratch, pointed at the (grown if needed) shared allocation."""
        import tensorrt as trt

        how = v.context_creation(self.version, shared_scratch=self.shared_scratch)
        context: trt.IExecutionContext | None  # None when TensorRT cannot allocate, which the stubs do not say
        if how == "static":
            context = engine.create_execution_context()
        elif how == "strategy":
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            config = engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            context = engine.create_execution_context(config)
        if context is None:
            raise LegoCompileError("TensorRT could not create an execution context (out of GPU memory?)")
        if self.shared_scratch:
            with self._lock:
                if scratch_bytes > self._scratch_bytes:
                    self._grow_scratch(scratch_bytes)
                context.set_device_memory(self._scratch_ptr, self._scratch_bytes)
                self._scratch_users = [user for user in self._scratch_users if user() is not None]
                self._scratch_users.append(_weak(context))
        return context

    def _grow_scratch(self, nbytes: int) -> None:
        self.api.stream_synchronize(self.stream)  # nothing may still be using the old scratch
        new = self.api.malloc(nbytes)
        for user in self._scratch_users:
            context = user()
            if context is not None:
                context.set_device_memory(new, nbytes)
        if self._scratch_ptr:
            self.api.free(self._scratch_ptr)
        self._scratch_ptr, self._scratch_bytes = new, nbytes

    @property
    def scratch_bytes(self) -> int:
        return self._scratch_bytes


def _weak(context: trt.IExecutionContext) -> Callable[[], trt.IExecutionContext | None]:
    try:
        return weakref.ref(context)
    except TypeError:  # a binding without weak-reference support: hold it (the scratch then outlives it)
        return lambda: context


class BoundaryBuffers:
    """Every block boundary of a chain at one batch size, in one device allocation, plus pinned ends."""

    def __init__(self, api: DeviceApi, shapes: Sequence[tuple[int, ...]], dtype: str = "float32") -> None:
        if len(shapes) < 2:
            raise LegoCompileError("a chain needs at least one block (two boundaries)")
        self.plan = plan_buffers([(shape, dtype) for shape in shapes])
        self.api = api
        self.base = api.malloc(self.plan.total_bytes)
        self._finalizer = weakref.finalize(self, api.free, self.base)
        self.views = [TensorView(self.base + s.offset, s.shape, s.dtype, s.nbytes, self) for s in self.plan.slots]
        self.host_in = api.pinned_empty(tuple(shapes[0]), dtype)
        self.host_out = api.pinned_empty(tuple(shapes[-1]), dtype)

    def close(self) -> None:
        self._finalizer()


# ------------------------------------------------------------------------------------------------------ engines
class TrtEngine:
    """A deserialized engine whose header matched this device, with one float32 input and one float32 output."""

    def __init__(self, data: bytes | Path, resources: ExecutionResources, source: str | None = None) -> None:
        import tensorrt as trt

        if isinstance(data, Path):
            path = data
            source = source or str(path)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise LegoCompileError(f"engine file not found: {path}") from None
        self.source = source or "engine"
        header, plan = unpack(data, self.source)
        problem = compatibility_error(header, resources.device, self.source)
        if problem is not None:
            raise LegoCompileError(problem)
        self.header = header
        self.resources = resources
        engine: trt.ICudaEngine | None = resources.runtime().deserialize_cuda_engine(plan)  # None on failure
        if engine is None:
            raise LegoCompileError(f"TensorRT could not deserialize {self.source}; the TensorRT log above says why")
        self.engine = engine
        inputs: list[str] = []
        outputs: list[str] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise LegoCompileError(f"{self.source}: I/O tensor {name!r} is not float32; chain boundaries are float32")
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        expected = output_names(len(outputs))  # y (, y1, ...): the export's names and order
        if len(inputs) != 1 or sorted(outputs) != sorted(expected):
            raise LegoCompileError(
                f"{self.source}: a block engine has one input and outputs {expected[:1]} (or y, y1, ... for a model's "
                f"last block), this one has {inputs} and {outputs}"
            )
        self.input_name, self.output_names = inputs[0], expected
        self.output_name = expected[0]
        if v.device_memory_size_attribute(resources.version) == "device_memory_size_v2":
            self.scratch_bytes = int(engine.device_memory_size_v2)
        else:
            self.scratch_bytes = int(engine.device_memory_size)

    def bind(self, src: DeviceTensor, dst: DeviceTensor | Sequence[DeviceTensor]) -> Callable[[], None]:
        """A callable running this engine from ``src`` into ``dst`` (one buffer per output for a last block with
        several) on the shared stream; binds once, allocates nothing."""
        dsts = bound_outputs(dst, len(self.output_names))
        context = self.resources.create_context(self.engine, self.scratch_bytes)
        if not context.set_input_shape(self.input_name, tuple(src.shape)):
            raise LegoCompileError(f"{self.source}: input shape {tuple(src.shape)} is outside the engine's profile")
        if not context.set_tensor_address(self.input_name, src.ptr):
            raise LegoCompileError(f"{self.source}: TensorRT refused a boundary buffer address")
        for name, out in zip(self.output_names, dsts):
            dims = context.get_tensor_shape(name)
            out_shape = tuple(dims[i] for i in range(len(dims)))
            if out_shape != tuple(out.shape):
                raise LegoCompileError(f"{self.source}: output {name!r} shape {out_shape} does not match the buffer "
                                       f"{tuple(out.shape)}")
            if not context.set_tensor_address(name, out.ptr):
                raise LegoCompileError(f"{self.source}: TensorRT refused a boundary buffer address")
        execute = context.execute_async_v3
        handle = self.resources.stream.handle
        source = self.source
        keep_alive = (context, src, dsts)

        def run(_execute: Callable[[int], bool] = execute, _handle: int = handle, _keep: object = keep_alive) -> None:
            if not _execute(_handle):
                raise LegoCompileError(f"TensorRT execution of {source} failed; the TensorRT log above says why")

        return run

    def run(self, x: np.ndarray) -> Any:
        """Convenience (allocating, synchronous) run from a host array to a new one (a tuple of them for several
        outputs): the accuracy gate and profiles.

        The outputs' batch size is the input's; their other dimensions are the engine's (fixed by the block)."""
        from legocompile.backends.tensorrt.cuda_memory import DeviceBuffer

        x = np.ascontiguousarray(x, dtype=np.float32)
        api, stream = self.resources.api, self.resources.stream
        src = DeviceBuffer(api, tuple(x.shape), "float32", stream=stream)
        dsts = []
        for name in self.output_names:
            dims = self.engine.get_tensor_shape(name)
            dsts.append(DeviceBuffer(api, (x.shape[0], *(int(dims[i]) for i in range(1, len(dims)))), "float32",
                                     stream=stream))
        src.upload(x)
        self.bind(src, dsts)()
        return from_outputs(tuple(d.download() for d in dsts))  # same stream: each waits for the run


# ------------------------------------------------------------------------------------------------------- chains
class TrtChain:
    """A chain of block engines at one batch size over shared boundary buffers (one thread's).

    Args:
        resources: The process's shared execution resources.
        boundaries: Shape of every block boundary (input of block 0, output of each block), batch first.
        batch: The batch size.
        use_graphs: Capture and replay CUDA graphs (only where the adapter supports them).
        max_graphs: Graphs kept (least recently used dropped), so switching back replays without recapture.
    """

    def __init__(
        self,
        resources: ExecutionResources,
        boundaries: Sequence[Sequence[int]],
        batch: int,
        *,
        use_graphs: bool = True,
        max_graphs: int = 8,
    ) -> None:
        from legocompile.backends.tensorrt.cuda_memory import boundary_shapes

        self.resources = resources
        self.api = resources.api
        self.batch = batch
        self.buffers = BoundaryBuffers(self.api, boundary_shapes(boundaries, batch))
        self.use_graphs = use_graphs and self.api.supports_graphs
        self.max_graphs = max_graphs
        self._bound: dict[tuple[int, int], Callable[[], None]] = {}
        self._graphs: OrderedDict[GraphKey, Any] = OrderedDict()
        self._warmed: set[GraphKey] = set()
        self._failed: set[GraphKey] = set()

    def _runs(self, engines: Sequence[TrtEngine]) -> list[Callable[[], None]]:
        if len(engines) != len(self.buffers.views) - 1:
            raise LegoCompileError(f"{len(engines)} engines for a chain of {len(self.buffers.views) - 1} blocks")
        runs = []
        for index, engine in enumerate(engines):
            key = (index, id(engine))
            run = self._bound.get(key)
            if run is None:
                run = self._bound[key] = engine.bind(self.buffers.views[index], self.buffers.views[index + 1])
            runs.append(run)
        return runs

    def run(self, engines: Sequence[TrtEngine], x: np.ndarray, keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """Runs ``engines`` (one per block) on ``x``; copies only at the ends and synchronizes once.

        Args:
            keys: A stable key per engine (e.g. (block, variant, precision)) naming the selection for the graph
                cache; default: the engines' identities.
        """
        api, stream, buffers = self.api, self.resources.stream, self.buffers
        runs = self._runs(engines)
        np.copyto(buffers.host_in, x, casting="same_kind")
        api.memcpy_htod_async(buffers.views[0].ptr, buffers.host_in, stream)
        wanted: GraphKey = (tuple(keys) if keys is not None else tuple(id(e) for e in engines), self.batch)
        action: GraphAction = graph_action(wanted, self._graphs, self._warmed, self._failed) if self.use_graphs else "eager"
        if action == "launch":
            self._graphs.move_to_end(wanted)
            api.graph_launch(self._graphs[wanted], stream)
        elif action == "capture" and self._capture(wanted, runs):
            api.graph_launch(self._graphs[wanted], stream)
        else:
            for run in runs:
                run()
            if action == "warmup":
                self._warmed.add(wanted)
        api.memcpy_dtoh_async(buffers.host_out, buffers.views[-1].ptr, stream)
        api.stream_synchronize(stream)
        out: np.ndarray = buffers.host_out.copy()
        return out

    def _capture(self, key: GraphKey, runs: Sequence[Callable[[], None]]) -> bool:
        api, stream = self.api, self.resources.stream
        try:
            api.graph_begin_capture(stream)
        except LegoCompileError:
            self._failed.add(key)
            return False
        try:
            for run in runs:
                run()
        except LegoCompileError:
            try:
                api.graph_destroy(api.graph_end_capture(stream))
            except LegoCompileError:
                pass
            self._failed.add(key)
            return False
        try:
            graph = api.graph_end_capture(stream)
        except LegoCompileError:
            self._failed.add(key)
            return False
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            _, old = self._graphs.popitem(last=False)
            api.graph_destroy(old)
        return True

    def close(self) -> None:
        for graph in self._graphs.values():
            self.api.graph_destroy(graph)
        self._graphs.clear()
        self._bound.clear()
        self.buffers.close()
