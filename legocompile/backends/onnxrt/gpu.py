"""ONNX Runtime on NVIDIA GPUs: the ``onnxruntime-cuda`` and ``onnxruntime-trt`` backends (onnxruntime-gpu's CUDA
and TensorRT execution providers), for users who have onnxruntime-gpu but not TensorRT's Python API.

Same seam, bundle format and Runtime API as the CPU backend (:mod:`.backend`); what differs:

* **Engines** are ONNX files stamped with their precision (``metadata_props["legocompile.precision"]``), because
  the TensorRT EP's fp16/int8 switches are session options that ``load`` must choose from the engine alone. fp32
  is the block's ONNX as exported (the CPU backend's optimized graph holds CPU-only fused operators); fp16 and int8
  are the CPU backend's own fp16 conversion and QDQ writer. int8 uses :data:`calibration.recipe.TENSORRT_RECIPE`
  (symmetric int8, float biases: what TensorRT takes), whatever recipe the host's CPU would choose.
* **Buffers** are device tensors (``OrtValue`` on ``cuda``); engines are bound to them once with IOBinding, and
  data crosses to the host only at the chain's ends (``upload`` / ``download``).
* Each session runs on its own CUDA stream, so ORT's end-of-run synchronization (its default) is what orders one
  block after the previous one. Sharing one ``user_compute_stream`` among sessions would remove it; not done.
* **Construction** checks that onnxruntime-gpu provides the execution provider and that a CUDA device answers,
  each with a one-line error.

The provider lists are pure functions of :class:`GpuSettings` and the precision (:func:`providers`), unit-tested
without a GPU. Nothing here has run on a GPU yet.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.backends.onnxrt.backend import OnnxRuntimeBackend, OrtEngine
from legocompile.errors import LegoCompileError, MissingDependencyError
from legocompile.workspace import atomic_produce

PRECISION_KEY = "legocompile.precision"
PRECISIONS = ("fp32", "fp16", "int8")
EXTRA = "onnxruntime-gpu"
PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def default_trt_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "legocompile", "ort-tensorrt")


@dataclass(frozen=True)
class GpuSettings:
    """How sessions use the GPU.

    Attributes:
        device_id: CUDA device ordinal.
        cuda_graph: the CUDA EP captures each session's run as a CUDA graph (needs fixed buffers: IOBinding does that).
        trt_cache_dir: where the TensorRT EP keeps its engines and timing cache (TensorRT builds take minutes).
        trt_workspace_bytes: the TensorRT EP's builder workspace limit.
    """

    device_id: int = 0
    cuda_graph: bool = False
    trt_cache_dir: str = field(default_factory=default_trt_cache)
    trt_workspace_bytes: int = 1 << 30


def cuda_options(settings: GpuSettings) -> dict[str, str]:
    options = {"device_id": str(settings.device_id), "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if settings.cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def tensorrt_options(settings: GpuSettings, precision: str) -> dict[str, str]:
    """The TensorRT EP's options for an engine of ``precision``: fp16 kernels only for fp16 engines (an fp32 engine
    must stay fp32), int8 for the QDQ graph (explicit quantization: no calibration table)."""
    _check_precision(precision)
    return {
        "device_id": str(settings.device_id),
        "trt_max_workspace_size": str(settings.trt_workspace_bytes),
        "trt_fp16_enable": "1" if precision == "fp16" else "0",
        "trt_int8_enable": "1" if precision == "int8" else "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": settings.trt_cache_dir,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": settings.trt_cache_dir,
    }


def providers(kind: str, precision: str, settings: GpuSettings) -> list[tuple[str, dict[str, str]]]:
    """Execution providers in priority order; nodes an earlier one cannot run go to the next (TensorRT -> CUDA -> CPU)."""
    if kind not in PROVIDER:
        raise LegoCompileError(f"unknown ORT GPU provider kind {kind!r}; choose one of {', '.join(PROVIDER)}")
    chain: list[tuple[str, dict[str, str]]] = []
    if kind == "tensorrt":
        chain.append((PROVIDER["tensorrt"], tensorrt_options(settings, precision)))
    chain.append((PROVIDER["cuda"], cuda_options(settings)))
    chain.append(("CPUExecutionProvider", {}))
    return chain


def missing_provider_error(backend: str, kind: str, available: list[str]) -> MissingDependencyError | None:
    """The error for a backend whose execution provider this onnxruntime lacks (the CPU wheel), else None."""
    if PROVIDER[kind] in available:
        return None
    return MissingDependencyError(EXTRA, f"the {backend} backend ({PROVIDER[kind]})", extra=EXTRA)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise LegoCompileError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def precision_of(model: Any) -> str:
    """The precision stamped into an engine (an ``onnx.ModelProto``) at build time."""
    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY:
            _check_precision(prop.value)
            return prop.value
    raise LegoCompileError("this ONNX was not built by a legocompile ORT GPU backend (no precision stamp); rebuild it")


@dataclass
class DeviceBuffer:
    """A float32 tensor in GPU memory (an ``OrtValue`` on ``cuda``)."""

    value: Any

    def numpy(self) -> np.ndarray:
        out: np.ndarray = self.value.numpy()  # a host copy
        return out

    def upload(self, x: np.ndarray) -> None:
        self.value.update_inplace(np.ascontiguousarray(x, dtype=np.float32))

    def download(self) -> np.ndarray:
        return self.numpy()


class GpuEngine(OrtEngine):
    """A session on the GPU providers; ``bind`` (OrtEngine's) binds device buffers' OrtValues once (IOBinding)."""

    def __init__(self, model: bytes | Path, backend: "_OrtGpuBackend") -> None:
        import onnx

        from legocompile.backends.onnxrt.session import create_session

        data = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else Path(model).read_bytes()
        self.precision = precision_of(onnx.load_from_string(data))
        try:
            self.session = create_session(data, providers=providers(backend.kind, self.precision, backend.settings))
        except LegoCompileError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LegoCompileError(f"{backend.name}: could not create a session: {first}") from None
        self.path = None if isinstance(model, (bytes, bytearray, memoryview)) else Path(model)
        self.outputs = [o.name for o in self.session.get_outputs()]  # what OrtEngine.bind and run bind, in order


class _OrtGpuBackend:
    name = ""
    kind = ""
    engine_suffix = ".onnx"

    def __init__(self, settings: GpuSettings | None = None) -> None:
        import onnxruntime as ort

        self.settings = settings or GpuSettings()
        missing = missing_provider_error(self.name, self.kind, list(ort.get_available_providers()))
        if missing is not None:
            raise missing
        try:  # the provider is compiled in; is there a device it can use?
            ort.OrtValue.ortvalue_from_shape_and_type([1], np.float32, "cuda", self.settings.device_id)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LegoCompileError(f"{self.name}: no usable CUDA device {self.settings.device_id}: {first}") from None
        self._cpu = OnnxRuntimeBackend()

    def fingerprint(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "onnxruntime": ort.__version__,
                "providers": [p for p, _ in providers(self.kind, "fp32", self.settings)],
                "device_id": self.settings.device_id}

    def build(self, onnx_path: Path, precision: str, out_path: Path, *, ranges: Any = None, recipe: Any = None) -> None:
        """The precision's ONNX (see the module docstring), stamped with its precision, written atomically."""
        _check_precision(precision)
        from calibration.recipe import TENSORRT_RECIPE

        with tempfile.TemporaryDirectory(prefix="legocompile-ortgpu-build-") as tmp:
            graph = Path(onnx_path)
            if precision != "fp32":
                graph = Path(tmp) / f"{precision}.onnx"
                self._cpu.build(Path(onnx_path), precision, graph, ranges=ranges,
                                recipe=TENSORRT_RECIPE if precision == "int8" else None)
            atomic_produce(out_path, lambda out: _stamp(graph, out, precision))

    def load(self, engine: bytes | Path) -> GpuEngine:
        return GpuEngine(engine, self)

    def allocate(self, shape: tuple[int, ...]) -> DeviceBuffer:
        import onnxruntime as ort

        return DeviceBuffer(ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda",
                                                                       self.settings.device_id))

    def configure(self, *, threads: int | None = None, shared: bool | None = None) -> bool:
        """ORT's CPU threading (nodes that fall back to the CPU provider), as the CPU backend sets it up."""
        return self._cpu.configure(threads=threads, shared=shared)

    def preload(self) -> None:
        self._cpu.preload()


class OrtCudaBackend(_OrtGpuBackend):
    """``onnxruntime-cuda``: onnxruntime-gpu's CUDA execution provider."""

    name = "onnxruntime-cuda"
    kind = "cuda"


class OrtTensorRTBackend(_OrtGpuBackend):
    """``onnxruntime-trt``: onnxruntime-gpu's TensorRT execution provider (CUDA, then CPU, for what it cannot run)."""

    name = "onnxruntime-trt"
    kind = "tensorrt"


def _stamp(src: Path, out: Path, precision: str) -> None:
    import onnx

    model = onnx.load(str(src))
    for prop in list(model.metadata_props):
        if prop.key == PRECISION_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=PRECISION_KEY, value=precision)
    onnx.save(model, str(out))
