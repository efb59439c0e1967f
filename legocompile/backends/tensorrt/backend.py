"""``TensorRTBackend``: build, load, allocate and bind TensorRT engines behind the backend protocol.

Construction checks that a real TensorRT imports (else :class:`~legocompile.errors.MissingDependencyError` naming
``tensorrt`` and ``pip install 'legocompile[tensorrt]'``) and that its version is supported. The CUDA adapter
(cuda-python or pycuda) is loaded on first GPU use, with its own MissingDependencyError.

``build`` prepares the ONNX the plan asks for (:mod:`~legocompile.backends.tensorrt.onnx_prep`), builds the plan
(:mod:`~legocompile.backends.tensorrt.builder`) and writes the engine file with its compatibility header
(:mod:`~legocompile.backends.tensorrt.engine_file`), atomically. ``load`` takes the file's bytes (from a verified
bundle) or its path, and refuses an engine built for another TensorRT or GPU with a one-line error saying how to
rebuild it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from legocompile.backends.tensorrt import version as v
from legocompile.backends.tensorrt.build_plan import CALIBRATIONS, BuildPlan, plan_build
from legocompile.backends.tensorrt.cuda_memory import DeviceApi, DeviceBuffer
from legocompile.backends.tensorrt.runner import ExecutionResources, TrtChain, TrtEngine
from legocompile.errors import LegoCompileError


class TensorRTBackend:
    """The ``tensorrt`` backend (NVIDIA GPUs and Jetson).

    Args:
        calibration: How int8 engines are built: ``"qdq"`` (default, every TensorRT version) or ``"implicit"``
            (TensorRT's entropy calibrator reading the block's calibration cache; 8.6 and 10.x only).
        opt_batch: Batch size the engines are tuned for.
        max_batch: Largest batch size the engines accept.
        workspace_bytes: Builder workspace limit.
        api: CUDA adapter to use (default: whichever of cuda-python / pycuda imports).

    Raises:
        MissingDependencyError: If TensorRT is not installed.
        LegoCompileError: If its version is unsupported, or ``calibration`` is unknown.
    """

    name = "tensorrt"
    engine_suffix = ".engine"

    def __init__(
        self,
        *,
        calibration: str = "qdq",
        opt_batch: int = 1,
        max_batch: int = 64,
        workspace_bytes: int = 1 << 30,
        api: DeviceApi | None = None,
    ) -> None:
        v.ensure_tensorrt()
        self.version = v.installed_version()
        v.check_supported(self.version)
        if calibration not in CALIBRATIONS:
            raise LegoCompileError(f"unknown int8 calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        self.calibration = calibration
        self.opt_batch, self.max_batch, self.workspace_bytes = opt_batch, max_batch, workspace_bytes
        self._api = api
        self._resources: ExecutionResources | None = None

    # ---------------------------------------------------------------------------------------------- resources
    def resources(self) -> ExecutionResources:
        if self._resources is None:
            self._resources = ExecutionResources(self._api)
        return self._resources

    def fingerprint(self) -> dict[str, Any]:
        device = self.resources().device
        return {
            "backend": self.name,
            "tensorrt": v.version_string(self.version),
            "gpu": device.gpu_name,
            "compute_capability": "%d.%d" % device.compute_capability,
            "int8_calibration": self.calibration,
            "max_batch": self.max_batch,
            "opt_batch": self.opt_batch,
        }

    # ---------------------------------------------------------------------------------------------- building
    def plan(self, precision: str) -> BuildPlan:
        return plan_build(self.version, precision, self.calibration)

    def build(
        self, onnx_path: Path, precision: str, out_path: Path, *, ranges: Any = None, recipe: Any = None
    ) -> None:
        """Builds the ``precision`` engine of the block ``onnx_path`` into ``out_path`` (written atomically).

        ``ranges`` (the block's :class:`calibration.ranges.TensorRanges`) are required for int8. ``recipe`` (the
        ONNX Runtime backend's int8 format) is ignored: TensorRT has one int8 format, symmetric signed int8
        (:mod:`~legocompile.backends.tensorrt.onnx_prep`).
        """
        from legocompile.backends.tensorrt.builder import build_serialized_engine
        from legocompile.backends.tensorrt.calibrator import CacheCalibratorCore, cache_from_ranges
        from legocompile.backends.tensorrt.engine_file import make_header, pack
        from legocompile.backends.tensorrt.onnx_prep import prepare_onnx
        from legocompile.workspace import atomic_write_bytes

        plan = self.plan(precision)
        if precision == "int8" and ranges is None:
            raise LegoCompileError("int8 engines need calibration ranges")
        with tempfile.TemporaryDirectory(prefix="legocompile-trt-build-") as tmp:
            onnx_file = prepare_onnx(onnx_path, plan.onnx, tmp, ranges=ranges)
            core = None
            if plan.needs_calibrator:
                core = CacheCalibratorCore(
                    cache_from_ranges(ranges, self.version), str(plan.calibration_cache_version),
                    f"calibration cache of {onnx_path}",
                )
            serialized = build_serialized_engine(
                onnx_file, plan, opt_batch=self.opt_batch, max_batch=self.max_batch,
                workspace_bytes=self.workspace_bytes, calibrator=core,
            )
        build = plan.summary() | {"opt_batch": self.opt_batch, "max_batch": self.max_batch}
        header = make_header(serialized, self.resources().device, precision, build)
        atomic_write_bytes(out_path, pack(header, serialized))

    # ---------------------------------------------------------------------------------------------- running
    def load(self, engine: bytes | Path) -> TrtEngine:
        """Loads an engine from its file's bytes (e.g. read from a verified bundle) or its path."""
        return TrtEngine(engine if isinstance(engine, bytes) else Path(engine), self.resources())

    def allocate(self, shape: tuple[int, ...]) -> DeviceBuffer:
        """A float32 device buffer for one block boundary (one per boundary, shared by every variant)."""
        resources = self.resources()
        return DeviceBuffer(resources.api, tuple(shape), "float32", stream=resources.stream)

    def configure(self, *, threads: int | None = None, shared: bool | None = None) -> bool:
        """Nothing to set up per process: engines run on the GPU, on one stream (:class:`ExecutionResources`)."""
        return False

    def preload(self) -> None:
        """Nothing imported ahead: importing TensorRT or CUDA before the probe forks is not fork-safe to rely on."""

    def chain(self, boundaries: Sequence[Sequence[int]], batch: int, *, use_graphs: bool = True) -> TrtChain:
        """A chain runner over one allocation of boundary buffers (for one thread; see :class:`TrtChain`)."""
        return TrtChain(self.resources(), boundaries, batch, use_graphs=use_graphs)
