"""Device memory, streams, events and CUDA graphs through one small adapter, plus the pure buffer plan.

The backend talks to CUDA only through a :class:`DeviceApi`. :func:`load_device_api` picks the first binding that
imports, lazily: cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` in releases before
12.6), else pycuda (``pycuda.driver``, on the device's primary context, the one TensorRT uses). Neither installed:
:class:`~legocompile.errors.MissingDependencyError` naming both and the ``tensorrt`` extra. CUDA graphs are
offered by the cuda-python adapter only.

Nothing here has run on a GPU in this repository's CI; :func:`plan_buffers` and :func:`boundary_shapes` are pure
and unit-tested.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from legocompile.errors import LegoCompileError, MissingDependencyError

DEFAULT_ALIGNMENT = 256  # cudaMalloc's guarantee, and what TensorRT asks of I/O tensor addresses


# ----------------------------------------------------------------------------------------------------- pure plan
@dataclass(frozen=True)
class BufferSlot:
    """One buffer of a :class:`BufferPlan`: its shape, dtype, size and place in the plan's single allocation."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    offset: int


@dataclass(frozen=True)
class BufferPlan:
    """Buffers laid out in one allocation, each at an ``alignment``-byte boundary."""

    slots: tuple[BufferSlot, ...]
    total_bytes: int
    alignment: int


def align_up(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment


def plan_buffers(
    specs: Sequence[tuple[Sequence[int], str | np.dtype[Any] | type]], alignment: int = DEFAULT_ALIGNMENT
) -> BufferPlan:
    """Lays buffers of the given (shape, dtype) out in one allocation.

    Args:
        specs: (shape, dtype) per buffer, in order; every dimension must be a concrete non-negative int.
        alignment: Byte alignment of every buffer's offset (a power of two).

    Returns:
        The plan: per buffer its byte size and offset (each offset a multiple of ``alignment``; a zero-byte buffer
        still gets its own offset), and the total size to allocate (a multiple of ``alignment``, at least one
        ``alignment``).

    Raises:
        LegoCompileError: On a dynamic (negative) or non-integer dimension, or a bad alignment.
    """
    if alignment <= 0 or alignment & (alignment - 1):
        raise LegoCompileError(f"buffer alignment must be a positive power of two, got {alignment}")
    slots: list[BufferSlot] = []
    offset = 0
    for index, (shape, dtype) in enumerate(specs):
        dims = tuple(shape)
        if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0 for d in dims):
            raise LegoCompileError(
                f"buffer {index} has shape {dims}: every dimension must be a concrete size (a dynamic dimension "
                "must be resolved to the batch size first)"
            )
        np_dtype = np.dtype(dtype)
        nbytes = int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize if dims else np_dtype.itemsize
        slots.append(BufferSlot(tuple(int(d) for d in dims), np_dtype.name, nbytes, offset))
        offset += align_up(max(nbytes, 1), alignment)
    return BufferPlan(tuple(slots), max(offset, alignment), alignment)


def boundary_shapes(boundaries: Sequence[Sequence[int]], batch: int) -> list[tuple[int, ...]]:
    """The concrete shapes of a chain's block boundaries for one batch size (the first dimension is the batch)."""
    if batch < 1:
        raise LegoCompileError(f"batch size must be at least 1, got {batch}")
    out = []
    for shape in boundaries:
        dims = tuple(shape)
        if not dims:
            raise LegoCompileError("a block boundary has no batch dimension")
        out.append((batch, *(int(d) for d in dims[1:])))
    return out


# ----------------------------------------------------------------------------------------------------- adapter
@dataclass(frozen=True)
class Stream:
    """A CUDA stream: its raw handle (what TensorRT's ``execute_async_v3`` takes) and the binding's object."""

    handle: int
    obj: Any


class DeviceApi(Protocol):
    """The CUDA operations the TensorRT backend needs; every pointer is an int."""

    name: str
    supports_graphs: bool

    def device_name(self) -> str: ...
    def compute_capability(self) -> tuple[int, int]: ...
    def mem_get_info(self) -> tuple[int, int]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def pinned_empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray: ...
    def stream_create(self) -> Stream: ...
    def stream_synchronize(self, stream: Stream) -> None: ...
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Stream) -> None: ...
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Stream) -> None: ...
    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: Stream) -> None: ...
    def event_create(self) -> Any: ...
    def event_record(self, event: Any, stream: Stream) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...
    def graph_begin_capture(self, stream: Stream) -> None: ...
    def graph_end_capture(self, stream: Stream) -> Any: ...
    def graph_launch(self, graph: Any, stream: Stream) -> None: ...
    def graph_destroy(self, graph: Any) -> None: ...


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError:
        return None


class CudaPythonApi:
    """:class:`DeviceApi` over cuda-python's runtime API (calls return ``(error, *values)``)."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: Any, device: int = 0) -> None:
        self._rt = cudart
        self._check(self._rt.cudaSetDevice(device), "cudaSetDevice")
        self._device = device

    def _check(self, result: Any, what: str) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self._rt.cudaError_t.cudaSuccess:
            name = getattr(error, "name", str(error))
            raise LegoCompileError(f"CUDA call {what} failed: {name}")
        return values[0] if len(values) == 1 else tuple(values)

    def _props(self) -> Any:
        return self._check(self._rt.cudaGetDeviceProperties(self._device), "cudaGetDeviceProperties")

    def device_name(self) -> str:
        raw = self._props().name
        return (raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)).strip()

    def compute_capability(self) -> tuple[int, int]:
        props = self._props()
        return int(props.major), int(props.minor)

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def pinned_empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        np_dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize, 1)
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_char * nbytes).from_address(ptr)
        weakref.finalize(raw, self._rt.cudaFreeHost, ptr)  # freed when the last view of the memory goes
        flat = np.frombuffer(memoryview(raw).cast("B"), dtype=np_dtype, count=int(np.prod(shape, dtype=np.int64)))
        array: np.ndarray = flat.reshape(shape)
        return array

    def stream_create(self) -> Stream:
        flags = self._rt.cudaStreamNonBlocking
        stream = self._check(self._rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        return Stream(int(stream), stream)

    def stream_synchronize(self, stream: Stream) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream.obj), "cudaStreamSynchronize")

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Stream) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream.obj), "cudaMemcpyAsync")

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Stream) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream.obj), "cudaMemcpyAsync")

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.obj), "cudaMemcpyAsync")

    def event_create(self) -> Any:
        return self._check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Stream) -> None:
        self._check(self._rt.cudaEventRecord(event, stream.obj), "cudaEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self._rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def graph_begin_capture(self, stream: Stream) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self._rt.cudaStreamBeginCapture(stream.obj, mode), "cudaStreamBeginCapture")

    def graph_end_capture(self, stream: Stream) -> Any:
        graph = self._check(self._rt.cudaStreamEndCapture(stream.obj), "cudaStreamEndCapture")
        try:
            executable = self._check(self._rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        finally:
            self._rt.cudaGraphDestroy(graph)
        return executable

    def graph_launch(self, graph: Any, stream: Stream) -> None:
        self._check(self._rt.cudaGraphLaunch(graph, stream.obj), "cudaGraphLaunch")

    def graph_destroy(self, graph: Any) -> None:
        self._check(self._rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")


class PycudaApi:
    """:class:`DeviceApi` over pycuda's driver API, on the device's primary context (no CUDA graphs)."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self, driver: Any, device: int = 0) -> None:
        self._drv = driver
        driver.init()
        self._device = driver.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._allocations: dict[int, Any] = {}

    def device_name(self) -> str:
        return str(self._device.name()).strip()

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._device.compute_capability()
        return int(major), int(minor)

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._drv.mem_get_info()
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        allocation = self._drv.mem_alloc(max(nbytes, 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        array: np.ndarray = self._drv.pagelocked_empty(shape, np.dtype(dtype))
        return array

    def stream_create(self) -> Stream:
        stream = self._drv.Stream()
        return Stream(int(stream.handle), stream)

    def stream_synchronize(self, stream: Stream) -> None:
        stream.obj.synchronize()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Stream) -> None:
        self._drv.memcpy_htod_async(dst, src, stream.obj)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Stream) -> None:
        self._drv.memcpy_dtoh_async(dst, src, stream.obj)

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        self._drv.memcpy_dtod_async(dst, src, nbytes, stream.obj)

    def event_create(self) -> Any:
        return self._drv.Event()

    def event_record(self, event: Any, stream: Stream) -> None:
        event.record(stream.obj)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def graph_begin_capture(self, stream: Stream) -> None:
        raise LegoCompileError("CUDA graphs need cuda-python (pip install cuda-python); pycuda is used here")

    def graph_end_capture(self, stream: Stream) -> Any:
        raise LegoCompileError("CUDA graphs need cuda-python (pip install cuda-python); pycuda is used here")

    def graph_launch(self, graph: Any, stream: Stream) -> None:
        raise LegoCompileError("CUDA graphs need cuda-python (pip install cuda-python); pycuda is used here")

    def graph_destroy(self, graph: Any) -> None:
        return None


def load_device_api(device: int = 0) -> DeviceApi:
    """The :class:`DeviceApi` over whichever CUDA binding imports: cuda-python first, then pycuda.

    Raises:
        MissingDependencyError: If neither imports.
    """
    cudart = _import_cudart()
    if cudart is not None:
        return CudaPythonApi(cudart, device)
    try:
        import pycuda.driver as driver
    except ImportError:
        raise MissingDependencyError(
            "cuda-python or pycuda", "GPU memory in the tensorrt backend", extra="tensorrt"
        ) from None
    return PycudaApi(driver, device)


class DeviceBuffer:
    """A device allocation holding one tensor (a chain boundary), with a pinned host mirror made on demand.

    Satisfies the backend protocol's ``Buffer`` (``numpy()``): that copies device -> host synchronously, so it is
    for checks and tests; the chain runner copies only at the chain's ends, asynchronously.
    """

    def __init__(self, api: DeviceApi, shape: tuple[int, ...], dtype: str = "float32", stream: Stream | None = None) -> None:
        self.api = api
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).name
        self.nbytes = plan_buffers([(self.shape, self.dtype)]).slots[0].nbytes
        self.ptr = api.malloc(self.nbytes)
        self._stream = stream
        self._host: np.ndarray | None = None
        self._finalizer = weakref.finalize(self, api.free, self.ptr)

    @property
    def host(self) -> np.ndarray:
        """The pinned host mirror (allocated on first use)."""
        if self._host is None:
            self._host = self.api.pinned_empty(self.shape, self.dtype)
        return self._host

    def _sync_stream(self) -> Stream:
        if self._stream is None:
            self._stream = self.api.stream_create()
        return self._stream

    def upload(self, x: np.ndarray) -> None:
        stream = self._sync_stream()
        np.copyto(self.host, x, casting="same_kind")
        self.api.memcpy_htod_async(self.ptr, self.host, stream)
        self.api.stream_synchronize(stream)

    def numpy(self) -> np.ndarray:
        stream = self._sync_stream()
        self.api.memcpy_dtoh_async(self.host, self.ptr, stream)
        self.api.stream_synchronize(stream)
        out: np.ndarray = self.host.copy()
        return out

    def download(self) -> np.ndarray:
        """A host copy of the content (the backend protocol's name for :meth:`numpy`, which copies here)."""
        return self.numpy()

    def close(self) -> None:
        self._finalizer()
