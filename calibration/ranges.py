"""Per-tensor activation ranges of one block's ONNX graph, computed with ONNX Runtime's calibrators.

A block is calibrated on its real input distribution (see :mod:`calibration.capture`): its input activations are
fed to ORT's ``MinMax``, ``Entropy`` or ``Percentile`` calibrator, which records the range of every float tensor of
the graph (graph input, every node's input and output). The result, :class:`TensorRanges`, is cached as JSON and
reused by :mod:`calibration.qdq` (ORT QDQ int8 model) and :mod:`calibration.trt_cache` (TensorRT calibration cache),
so calibration runs once per block.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from legocompile.errors import LegoCompileError
from legocompile.workspace import atomic_write_bytes

logger = logging.getLogger("legocompile")

METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
"""Valid values of :attr:`CalibrationSettings.method`."""

_FORMAT = "legocompile.tensor_ranges"
_FORMAT_VERSION = 1
_DYNAMIC_BATCH_SIZE = 32  # samples per ORT run when the graph's batch dimension is dynamic
_COLLECT_CHUNK_BYTES = 64 * 2**20  # input bytes handed to one collect_data() call (bounds the calibrator's memory)


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """How a block's activation ranges are computed.

    Attributes:
        method: ``"minmax"`` (observed min/max), ``"entropy"`` (KL-divergence threshold, ORT defaults: 128 bins,
            128 quantized bins) or ``"percentile"`` (histogram percentile, ORT default 2048 bins).
        num_samples: Number of calibration samples used (the first ``num_samples`` of the block inputs).
        percentile: Percentile kept by the ``"percentile"`` method, in ``(0, 100]``.
        symmetric_activations: Make every range symmetric around 0 (``[-a, a]`` with ``a = max(|min|, |max|)``),
            as TensorRT's int8 scheme assumes. When False the percentile is cut two-sided.
    """

    method: str = "minmax"
    num_samples: int = 256
    percentile: float = 99.999
    symmetric_activations: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LegoCompileError(
                f"unknown calibration method {self.method!r}; valid methods: {', '.join(METHODS)}"
            )
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise LegoCompileError(f"calibration num_samples must be an integer >= 1, got {self.num_samples!r}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise LegoCompileError(f"calibration percentile must be in (0, 100], got {self.percentile!r}")


@dataclass(frozen=True)
class TensorRanges:
    """Calibrated ``(min, max)`` range of every float tensor of one ONNX graph, keyed by tensor name.

    Attributes:
        ranges: Tensor name -> ``(min, max)``, finite floats with ``min <= max``.
        method: The calibration method that produced them (one of :data:`METHODS`).
    """

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    method: str = "minmax"

    def __post_init__(self) -> None:
        if not isinstance(self.ranges, Mapping):
            raise LegoCompileError(f"tensor ranges must be a mapping, got {type(self.ranges).__name__}")
        normalized: dict[str, tuple[float, float]] = {}
        for name, value in self.ranges.items():
            if not isinstance(name, str) or not name:
                raise LegoCompileError(f"tensor range keys must be non-empty strings, got {name!r}")
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise LegoCompileError(f"range of tensor {name!r} must be a (min, max) pair, got {value!r}") from None
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise LegoCompileError(f"range of tensor {name!r} must be finite with min <= max, got {value!r}")
            normalized[name] = (low, high)
        object.__setattr__(self, "ranges", normalized)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes the ranges as JSON, atomically (temporary file in the same folder, then ``os.replace``).

        Args:
            path: Destination file; its folder is created if missing.
        """
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "method": self.method,
            "ranges": {name: [low, high] for name, (low, high) in self.ranges.items()},
        }
        atomic_write_bytes(destination, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> TensorRanges:
        """Reads ranges written by :meth:`to_json`.

        Args:
            path: The JSON file.

        Returns:
            The ranges, bit-identical to the ones written.

        Raises:
            LegoCompileError: If the file is missing, not JSON, or not a tensor-ranges file.
        """
        source = Path(path)
        try:
            payload = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LegoCompileError(f"tensor ranges file not found: {source}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LegoCompileError(f"cannot read tensor ranges file {source}: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise LegoCompileError(f"{source} is not a legocompile tensor ranges file (format {_FORMAT!r})")
        if payload.get("version") != _FORMAT_VERSION:
            raise LegoCompileError(
                f"{source} has tensor ranges format version {payload.get('version')!r}; "
                f"this legocompile reads version {_FORMAT_VERSION} (recompute the ranges)"
            )
        ranges = payload.get("ranges")
        if not isinstance(ranges, dict):
            raise LegoCompileError(f"{source} has no 'ranges' object")
        return cls(ranges={name: tuple(value) for name, value in ranges.items()}, method=str(payload.get("method")))


class _BatchReader:
    """ORT ``CalibrationDataReader`` over consecutive batches of one input array."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: inputs[start : start + batch_size]} for start in range(0, inputs.shape[0], batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Returns the next ``{input name: batch}`` feed, or None when exhausted."""
        return next(self._batches, None)


def _graph_input(model: onnx.ModelProto, onnx_path: Path) -> tuple[str, list[int | None]]:
    """Returns the graph's single (non-initializer) input name and its dims (None where symbolic)."""
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    if len(graph_inputs) != 1:
        raise LegoCompileError(
            f"{onnx_path} has {len(graph_inputs)} inputs; a block graph must have exactly one input"
        )
    tensor_type = graph_inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise LegoCompileError(f"{onnx_path}: input {graph_inputs[0].name!r} must be float32 to be calibrated")
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    return graph_inputs[0].name, dims


def _calibration_inputs(
    inputs: np.ndarray, dims: list[int | None], settings: CalibrationSettings, onnx_path: Path
) -> tuple[np.ndarray, int]:
    """Selects, checks and batches the samples to calibrate on; returns them and the ORT batch size."""
    data = np.ascontiguousarray(inputs, dtype=np.float32)
    if data.ndim != len(dims) or data.shape[0] == 0:
        raise LegoCompileError(
            f"calibration inputs of shape {tuple(data.shape)} do not fit {onnx_path} "
            f"(input rank {len(dims)}, expected a non-empty batch)"
        )
    for axis, (size, expected) in enumerate(zip(data.shape[1:], dims[1:]), start=1):
        if expected is not None and expected > 0 and size != expected:
            raise LegoCompileError(
                f"calibration inputs of shape {tuple(data.shape)} do not fit {onnx_path}: "
                f"dimension {axis} is {size}, the graph expects {expected}"
            )
    if data.shape[0] < settings.num_samples:
        logger.info("calibrating %s on %d samples (%d asked)", onnx_path.name, data.shape[0], settings.num_samples)
    data = data[: settings.num_samples]

    fixed_batch = dims[0] if dims and dims[0] else None
    if fixed_batch is None:
        return data, min(_DYNAMIC_BATCH_SIZE, data.shape[0])
    usable = (data.shape[0] // fixed_batch) * fixed_batch
    if usable == 0:
        raise LegoCompileError(
            f"{onnx_path} has a fixed batch of {fixed_batch} but only {data.shape[0]} calibration samples were given"
        )
    if usable < data.shape[0]:
        logger.info("%s has a fixed batch of %d: calibrating on %d samples", onnx_path.name, fixed_batch, usable)
    return data[:usable], fixed_batch


def _calibrator_options(settings: CalibrationSettings) -> dict[str, object]:
    """Maps settings to ``create_calibrator``'s ``extra_options`` (other options keep ORT's defaults)."""
    options: dict[str, object] = {"symmetric": settings.symmetric_activations}
    if settings.method == "percentile":
        options["percentile"] = float(settings.percentile)
    return options


def _tensor_order(model: onnx.ModelProto) -> dict[str, int]:
    """Returns tensor name -> position in graph order (inputs, then node outputs), for a stable output order."""
    order: dict[str, int] = {}
    for name in [vi.name for vi in model.graph.input] + [out for node in model.graph.node for out in node.output]:
        order.setdefault(name, len(order))
    return order


def load_onnx(model_path: Path) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into a one-line LegoCompileError."""
    if not model_path.is_file():
        raise LegoCompileError(f"ONNX model not found: {model_path}")
    try:
        return onnx.load(str(model_path))
    except Exception as error:  # onnx raises several unrelated types for a corrupt file
        raise LegoCompileError(f"cannot load ONNX model {model_path}: {error}") from None


def compute_ranges(
    onnx_path: str | os.PathLike[str],
    inputs: np.ndarray,
    settings: CalibrationSettings = CalibrationSettings(),  # noqa: B008 (frozen, hence a safe default)
) -> TensorRanges:
    """Computes the range of every float tensor of a block graph over its calibration inputs.

    ORT's calibrator (chosen by ``settings.method``) augments a copy of the graph in a temporary folder, runs it
    over the first ``settings.num_samples`` inputs, and reduces what it saw to one ``(min, max)`` per tensor.
    Nothing is written next to the model or in the working directory.

    Args:
        onnx_path: The block's ONNX file (one float32 input).
        inputs: The block's input activations, shape ``(N, ...)`` (see :func:`calibration.capture.block_inputs`).
        settings: Calibration method and parameters.

    Returns:
        The ranges of the graph input and of every node input/output that is a float activation.

    Raises:
        LegoCompileError: If the model is missing or unreadable, has not exactly one float32 input, or the inputs do
            not fit it.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator  # noqa: PLC0415

    model_path = Path(onnx_path)
    model = load_onnx(model_path)
    input_name, dims = _graph_input(model, model_path)
    data, batch_size = _calibration_inputs(inputs, dims, settings, model_path)
    if not np.isfinite(data).all():
        raise LegoCompileError(f"calibration inputs of {model_path} contain NaN or infinite values")

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.method]
    bytes_per_sample = max(1, data[0].nbytes)
    chunk_samples = max(batch_size, (_COLLECT_CHUNK_BYTES // bytes_per_sample) // batch_size * batch_size)
    ort_stdout = io.StringIO()  # ORT's histogram calibrators print() progress; keep the library quiet
    with tempfile.TemporaryDirectory(prefix="legocompile-calib-") as temp_dir, contextlib.redirect_stdout(ort_stdout):
        model_copy = Path(temp_dir) / "model.onnx"
        onnx.save(model, str(model_copy))
        calibrator = create_calibrator(
            model_copy,
            None,  # every float tensor of every node
            augmented_model_path=str(Path(temp_dir) / "augmented.onnx"),
            calibrate_method=method,
            providers=["CPUExecutionProvider"],
            extra_options=_calibrator_options(settings),
        )
        try:
            for start in range(0, data.shape[0], chunk_samples):
                calibrator.collect_data(_BatchReader(input_name, data[start : start + chunk_samples], batch_size))
            tensors_data = calibrator.compute_data()
        finally:
            del calibrator  # release the ORT session before the folder is removed
    if ort_stdout.getvalue():
        logger.debug("onnxruntime calibrator: %s", ort_stdout.getvalue().strip())

    order = _tensor_order(model)
    ranges: dict[str, tuple[float, float]] = {}
    for name in sorted(tensors_data.keys(), key=lambda n: (order.get(n, len(order)), n)):
        low, high = (float(np.asarray(v, dtype=np.float64).reshape(())) for v in tensors_data[name].range_value)
        if settings.symmetric_activations:
            bound = max(abs(low), abs(high))
            low, high = -bound, bound
        ranges[name] = (low, high)
    logger.info(
        "calibrated %d tensors of %s with %s on %d samples", len(ranges), model_path.name, settings.method, len(data)
    )
    return TensorRanges(ranges=ranges, method=settings.method)
