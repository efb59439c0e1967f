"""Static int8 QDQ quantization of a block graph from cached tensor ranges, with ONNX Runtime's quantizer.

The ranges computed once by :func:`calibration.ranges.compute_ranges` are handed to ORT's QDQ quantizer instead of
calibrating again: through ``quantize_static``'s ``calibration_cache_path`` where the installed ONNX Runtime has it,
else by building ``QDQQuantizer`` with those ranges as ``quantize_static`` itself does.

The quantized graph keeps float32 input ``x`` and output ``y`` (QuantizeLinear/DequantizeLinear pairs sit inside),
so int8 blocks chain with fp32 ones. The int8 format (u8s8, u8u8 or u8s8 with reduce_range) is an
:class:`~calibration.recipe.Int8Recipe`, chosen from the CPU by :mod:`calibration.recipe`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from calibration.ranges import TensorRanges, load_onnx
from calibration.recipe import Int8Recipe, host_recipe
from legocompile.errors import LegoCompileError

logger = logging.getLogger("legocompile")

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
#: The channel axis of a normalization layer's scale. ORT's quantizer assumes axis 1 (the activation's channel axis)
#: for it, but the scale is 1-D: with per-channel weights on, every standalone BatchNormalization (those ONNX export
#: cannot fold into a conv: pre-activation DenseNet/ResNet-v2 layers) logged "Axis 1 is out-of-range for weight ..." and
#: fell back to one scale per tensor. Axis 0 quantizes the scale per channel, as the recipe asks for weights (a layer
#: norm's scale has the normalized shape: its last axis).
_NORM_SCALE_AXIS = {"BatchNormalization": 0, "InstanceNormalization": 0, "LayerNormalization": -1}
#: Part of an int8 engine's identity beyond its recipe: bump when this writer's output changes for the same inputs.
QDQ_WRITER_VERSION = 2  # 2: per-channel normalization scales


def _extra_options(recipe: Int8Recipe) -> dict[str, object]:
    """ORT quantizer options shared by both code paths."""
    return {"ActivationSymmetric": recipe.activation == "int8", "WeightSymmetric": recipe.weight == "int8",
            "QuantizeBias": recipe.quantize_bias, "QDQOpTypePerChannelSupportToAxis": dict(_NORM_SCALE_AXIS)}


def _quant_type(name: str):  # -> onnxruntime.quantization.QuantType
    from onnxruntime.quantization import QuantType  # noqa: PLC0415

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Returns the graph's (non-initializer) input names and output names."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in initializers], [vi.name for vi in model.graph.output]


def _missing_ranges(model: onnx.ModelProto, ranges: TensorRanges) -> list[str]:
    """Returns the float activation tensors of a (shape-inferred) graph that have no calibrated range."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input})
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.output})
    initializers = {init.name for init in model.graph.initializer}
    missing: list[str] = []
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            if name and name not in initializers and types.get(name) in _FLOAT_TYPES and name not in ranges.ranges:
                if name not in missing:
                    missing.append(name)
    return missing


def _tensors_data(ranges: TensorRanges):  # -> onnxruntime.quantization.calibrate.TensorsData
    """Wraps the cached ranges in ORT's ``TensorsData`` (float32 bounds, MinMax method)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData  # noqa: PLC0415

    return TensorsData(
        CalibrationMethod.MinMax,
        {name: (np.float32(low), np.float32(high)) for name, (low, high) in ranges.ranges.items()},
    )


def _quantize_from_cache_file(
    model_path: Path, out_path: Path, ranges: TensorRanges, recipe: Int8Recipe, temp_dir: Path
) -> None:
    """Quantizes through ``quantize_static(calibration_cache_path=...)``, ORT's supported way to reuse ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.calibrate import save_tensors_data  # noqa: PLC0415

    cache_path = temp_dir / "ort_calibration_cache.json"
    save_tensors_data(_tensors_data(ranges), cache_path)
    quantize_static(
        model_path,
        out_path,
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=_quant_type(recipe.activation),
        weight_type=_quant_type(recipe.weight),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=_extra_options(recipe),
        calibration_cache_path=cache_path,
    )


def _quantize_with_quantizer(model_path: Path, out_path: Path, ranges: TensorRanges, recipe: Int8Recipe) -> None:
    """Quantizes by building ORT's ``QDQQuantizer`` with the cached ranges, as ``quantize_static`` does.

    Used where ``quantize_static`` has no ``calibration_cache_path`` (ONNX Runtime before the calibration cache).
    """
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer  # noqa: PLC0415
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer  # noqa: PLC0415
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry  # noqa: PLC0415

    model = load_model_with_shape_infer(model_path)
    quantizer = QDQQuantizer(
        model,
        recipe.per_channel,
        recipe.reduce_range,
        _quant_type(recipe.weight),
        _quant_type(recipe.activation),
        _tensors_data(ranges),
        [],  # nodes_to_quantize: all
        [],  # nodes_to_exclude: none
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        _extra_options(recipe),
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out_path), False)


def _has_cache_path_api() -> bool:
    """Whether the installed ``quantize_static`` accepts precomputed ranges via ``calibration_cache_path``."""
    from onnxruntime.quantization import quantize_static  # noqa: PLC0415

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_qdq(
    onnx_in: str | os.PathLike[str],
    onnx_out: str | os.PathLike[str],
    ranges: TensorRanges,
    recipe: Int8Recipe | None = None,
) -> None:
    """Writes the static int8 QDQ version of a block graph, quantized with cached ranges (no calibration run).

    The graph first goes through ORT's ``quant_pre_process`` with shape inference only (no graph optimization, so
    tensor names, hence the cached ranges, still match), then through ORT's QDQ quantizer. The output keeps the
    input's float32 input/output names; it is written through a temporary file in the destination folder and
    ``os.replace``.

    Args:
        onnx_in: The fp32 block graph the ranges were computed on.
        onnx_out: Destination of the int8 QDQ graph (its folder is created if missing).
        ranges: Ranges of the graph's tensors, from :func:`calibration.ranges.compute_ranges`.
        recipe: The int8 format (:mod:`calibration.recipe`); default: the one that suits this CPU
            (:func:`calibration.recipe.host_recipe`).

    Raises:
        LegoCompileError: If the model is missing or unreadable, or ``ranges`` does not cover its float tensors
            (ranges computed on another graph).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    model_path = Path(onnx_in)
    out_path = Path(onnx_out)
    original = load_onnx(model_path)
    use_cache_api = _has_cache_path_api()
    recipe = recipe or host_recipe()[0]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_out_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp.onnx")
    os.close(fd)
    temp_out = Path(temp_out_name)
    try:
        with tempfile.TemporaryDirectory(prefix="legocompile-qdq-") as temp_name:
            temp_dir = Path(temp_name)
            model_copy = temp_dir / "model.onnx"
            onnx.save(original, str(model_copy))
            preprocessed = temp_dir / "preprocessed.onnx"
            quant_pre_process(str(model_copy), str(preprocessed), skip_optimization=True, skip_symbolic_shape=True)

            missing = _missing_ranges(onnx.load(str(preprocessed)), ranges)
            if missing:
                shown = ", ".join(repr(name) for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise LegoCompileError(
                    f"the cached ranges do not cover {len(missing)} tensor(s) of {model_path} ({shown}); "
                    "recompute them with compute_ranges on this model"
                )
            if use_cache_api:
                _quantize_from_cache_file(preprocessed, temp_out, ranges, recipe, temp_dir)
            else:
                _quantize_with_quantizer(preprocessed, temp_out, ranges, recipe)

        quantized = onnx.load(str(temp_out))
        if _io_names(quantized) != _io_names(original):
            raise LegoCompileError(
                f"quantizing {model_path} changed its input/output names from {_io_names(original)} "
                f"to {_io_names(quantized)}"
            )
        os.replace(temp_out, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp_out.unlink()

    op_types = [node.op_type for node in quantized.graph.node]
    counts = {op: op_types.count(op) for op in ("QuantizeLinear", "DequantizeLinear")}
    logger.info(
        "wrote int8 QDQ model %s (%d QuantizeLinear, %d DequantizeLinear, recipe %s)",
        out_path,
        counts["QuantizeLinear"],
        counts["DequantizeLinear"],
        recipe.name,
    )
