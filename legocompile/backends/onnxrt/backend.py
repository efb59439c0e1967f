"""Build, load and bind ONNX Runtime engines.

An ORT "engine" is an ONNX file ready to load: fp32 is the graph-optimized model (ORT's extended level, which stays
portable across CPUs; the layout-specific level is applied at load time), fp16 is the model converted to fp16 with
fp32 inputs/outputs so it chains with any neighbour, and int8 is a static QDQ model written by
``onnxruntime.quantization`` from the block's own calibration ranges (``calibration.qdq``).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from legocompile.backends.base import HostBuffer, bound_outputs
from legocompile.backends.onnxrt.session import configure_threads, create_session, session_options
from legocompile.errors import LegoCompileError
from legocompile.export import INPUT_NAME
from legocompile.outputs import from_outputs
from legocompile.workspace import atomic_produce


@dataclass
class OrtBuffer(HostBuffer):
    """A float32 numpy array and the OrtValue that shares its memory."""

    value: object


class OrtEngine:
    """A loaded ORT session. ``model`` is the engine's ONNX bytes (what the Runtime passes, read from the bundle
    and checked against its sha256) or a path (builds and profiling)."""

    def __init__(self, model: bytes | Path) -> None:
        self.path = None if isinstance(model, (bytes, bytearray, memoryview)) else Path(model)
        self.session = create_session(model)
        self.outputs = [o.name for o in self.session.get_outputs()]  # y (, y1, ...): the export's order

    def bind(self, src: OrtBuffer, dst: OrtBuffer | Sequence[OrtBuffer]) -> Callable[[], None]:
        """A callable that runs this engine from ``src`` into ``dst`` through ORT's public IOBinding API (``dst``: a
        sequence of buffers, one per output in order, for the last block of a model with several outputs).

        The callable holds the session, the binding and the buffers (the binding does not own the buffers'
        memory), but not this ``OrtEngine``: a cache of bindings kept on an engine creates no reference cycle.
        """
        dsts = bound_outputs(dst, len(self.outputs))
        session = self.session
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, src.value)
        for name, buffer in zip(self.outputs, dsts):
            binding.bind_ortvalue_output(name, buffer.value)

        def run(_run=session.run_with_iobinding, _binding=binding, _keep=(src, dsts)) -> None:
            _run(_binding, None)

        return run

    def run(self, x: np.ndarray):
        """Convenience (allocating) run, for checks and accuracy profiling: an array, or a tuple for several outputs."""
        return from_outputs(self.session.run(self.outputs, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}))


class OnnxRuntimeBackend:
    name = "onnxruntime"
    engine_suffix = ".onnx"

    def fingerprint(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "processor": _cpu_model(),
        }

    def build(self, onnx_path: Path, precision: str, out_path: Path, *, ranges=None, recipe=None) -> None:
        if precision == "fp32":
            atomic_produce(out_path, lambda tmp: _optimize(onnx_path, tmp))
        elif precision == "fp16":
            atomic_produce(out_path, lambda tmp: _to_fp16(onnx_path, tmp))
        elif precision == "int8":
            if ranges is None:
                raise LegoCompileError("int8 engines need calibration ranges")
            from calibration.qdq import quantize_qdq
            from calibration.recipe import host_recipe

            atomic_produce(out_path, lambda tmp: quantize_qdq(onnx_path, tmp, ranges, recipe or host_recipe()[0]))
        else:
            raise LegoCompileError(f"onnxruntime backend: unknown precision {precision!r}")

    def load(self, engine: bytes | Path) -> OrtEngine:
        """Load an engine from its bytes (the Runtime: verified bundle bytes) or from a file."""
        return OrtEngine(engine)

    def allocate(self, shape: tuple[int, ...]) -> OrtBuffer:
        import onnxruntime as ort

        array = np.zeros(shape, dtype=np.float32)
        return OrtBuffer(array, ort.OrtValue.ortvalue_from_numpy(array))

    def configure(self, *, threads: int | None = None, shared: bool | None = None) -> bool:
        """This process's ORT threading, decided once (:func:`~legocompile.backends.onnxrt.session.configure_threads`)."""
        return configure_threads(threads, shared=shared)

    def preload(self) -> None:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401


def _optimize(onnx_path: Path, out: Path) -> None:
    import onnxruntime as ort

    so = session_options(optimization="extended")
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def _to_fp16(onnx_path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
