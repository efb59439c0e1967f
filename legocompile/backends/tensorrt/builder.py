"""Carry out a :class:`~legocompile.backends.tensorrt.build_plan.BuildPlan`: parse the ONNX, configure, serialize.

TensorRT is imported inside the functions that call it (never at module level), and under ``TYPE_CHECKING`` for
mypy, which checks every call here against the TensorRT type stubs. Enum members are looked up by explicit name
(:func:`network_flag`, :func:`builder_flag`), only for the names a plan contains, so a member TensorRT 11 removed
is never touched on 11.

Not run against a real TensorRT in this repository's CI (no GPU there): see the tests marked ``tensorrt``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from legocompile.backends.tensorrt import version as v
from legocompile.backends.tensorrt.build_plan import BuildPlan
from legocompile.backends.tensorrt.calibrator import CacheCalibratorCore, make_entropy_calibrator
from legocompile.errors import LegoCompileError

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger("legocompile")

DEFAULT_WORKSPACE_BYTES = 1 << 30


def profile_shapes(
    shape: Sequence[int], *, opt_batch: int, max_batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the optimization profile for a network input of ``shape`` (batch may be -1).

    Only the first (batch) dimension may be dynamic: every variant of a block has the same fixed boundary shape.

    Raises:
        LegoCompileError: If another dimension is dynamic, or the batch bounds are inconsistent.
    """
    dims = tuple(int(d) for d in shape)
    if not dims:
        raise LegoCompileError("a block input has no batch dimension")
    if any(d < 0 for d in dims[1:]):
        raise LegoCompileError(f"block input shape {dims}: only the batch dimension may be dynamic")
    if not 1 <= opt_batch <= max_batch:
        raise LegoCompileError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    if dims[0] >= 0:  # a fixed batch: the profile is that shape
        return dims, dims, dims
    rest = dims[1:]
    return (1, *rest), (opt_batch, *rest), (max_batch, *rest)


def parse_errors(messages: Sequence[str], onnx_path: Path | str) -> str:
    """The one-line error for a failed ONNX parse: the first parser message, and how many more there were."""
    if not messages:
        return f"TensorRT could not parse {onnx_path} (no parser message; see the TensorRT log above)"
    more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    first = " ".join(messages[0].split())
    return f"TensorRT could not parse {onnx_path}: {first}{more}"


# ------------------------------------------------------------------------------------------------ TensorRT calls
_LOGGER_LOCK = threading.Lock()
_LOGGER: trt.ILogger | None = None


def trt_logger() -> trt.ILogger:
    """One process-wide TensorRT logger (TensorRT wants a single logger), forwarding to legocompile's log."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            _LOGGER = _make_logger()
        return _LOGGER


def _make_logger() -> trt.ILogger:
    import tensorrt as trt

    severities = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised explicitly

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            logger.log(severities.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _ForwardingLogger()


def network_flag(name: str) -> trt.NetworkDefinitionCreationFlag:
    """The ``NetworkDefinitionCreationFlag`` member for a plan's flag name (looked up only when a plan names it)."""
    import tensorrt as trt

    if name == "EXPLICIT_BATCH":
        return trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    if name == "STRONGLY_TYPED":
        return trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    raise LegoCompileError(f"unknown network creation flag {name!r}")


def builder_flag(name: str) -> trt.BuilderFlag:
    """The ``BuilderFlag`` member for a plan's flag name (FP16 and INT8 do not exist on TensorRT 11)."""
    import tensorrt as trt

    if name == "FP16":
        return trt.BuilderFlag.FP16
    if name == "INT8":
        return trt.BuilderFlag.INT8
    raise LegoCompileError(f"unknown builder flag {name!r}")


def network_flags_value(names: Sequence[str]) -> int:
    """The ``create_network`` bit mask: ``1 << int(flag)`` per named flag (the enum values differ across versions)."""
    value = 0
    for name in names:
        value |= 1 << int(network_flag(name))
    return value


def build_serialized_engine(
    onnx_path: Path,
    plan: BuildPlan,
    *,
    opt_batch: int = 1,
    max_batch: int = 64,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    calibrator: CacheCalibratorCore | None = None,
) -> bytes:
    """Builds the TensorRT plan (serialized engine) for ``onnx_path`` as ``plan`` says.

    Args:
        onnx_path: The prepared ONNX for ``plan.onnx`` (:func:`legocompile.backends.tensorrt.onnx_prep.prepare_onnx`).
        plan: The build plan for the running TensorRT.
        opt_batch: Batch size TensorRT tunes kernels for.
        max_batch: Largest batch the engine accepts.
        workspace_bytes: Builder workspace memory pool limit.
        calibrator: The cache-serving calibrator core (required iff ``plan.needs_calibrator``).

    Raises:
        LegoCompileError: If the ONNX does not parse, the calibration cache is rejected, or the build fails.
    """
    v.ensure_tensorrt()
    import tensorrt as trt

    if plan.needs_calibrator != (calibrator is not None):
        raise LegoCompileError("internal: a calibrator is needed exactly when the build plan asks for one")
    log = trt_logger()
    builder = trt.Builder(log)
    network = builder.create_network(network_flags_value(plan.network_flags))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise LegoCompileError(parse_errors([str(parser.get_error(i)) for i in range(parser.num_errors)], onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(builder_flag(name))

    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = tensor.shape
        low, opt, high = profile_shapes(
            [dims[i] for i in range(len(dims))], opt_batch=opt_batch, max_batch=max_batch
        )
        profile.set_shape(tensor.name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)

    keep_alive: object = None
    if calibrator is not None:
        calibrator_object = make_entropy_calibrator(calibrator)
        config.int8_calibrator = calibrator_object
        config.set_calibration_profile(profile)  # dynamic batch: the calibrator needs a profile too
        keep_alive = calibrator_object  # TensorRT holds a raw pointer to it until the build returns

    # None on failure, which the stubs do not say.
    serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    del keep_alive
    if calibrator is not None and calibrator.rejection_message() is not None:
        raise LegoCompileError(str(calibrator.rejection_message()))
    if serialized is None:
        raise LegoCompileError(
            f"TensorRT failed to build an engine from {onnx_path} ({plan.precision}, TensorRT "
            f"{v.version_string(plan.tensorrt_version)}); the TensorRT errors are in the log above"
        )
    return bytes(memoryview(serialized))
