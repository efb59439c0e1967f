"""One ONNX per precision, the same for every TensorRT version: :func:`prepare_onnx`.

* ``fp32``: the exported block as it is. (Not ORT's optimized copy: ORT fuses into ``com.microsoft`` operators
  that TensorRT's parser does not know.)
* ``fp16``: the fp16-typed graph with fp32 inputs and outputs, from the converter the ONNX Runtime backend uses
  (``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``), so it chains with any
  neighbour. TensorRT 10+ builds it strongly typed; 8.6 builds it with the FP16 flag.
* ``int8-qdq``: a static QDQ graph from the block's cached ranges, like ``calibration.qdq.quantize_qdq`` but in the
  scheme TensorRT's explicit quantization accepts: **signed int8, symmetric (zero point 0)** activations and
  weights (per output channel) and **float biases**. The ORT backend's QDQ graph uses asymmetric uint8
  activations and int32-quantized biases, which suit ORT's x86 kernels and which TensorRT rejects;
  :func:`tensorrt_qdq_problems` says what a QDQ graph has that TensorRT would refuse.

All three keep the input ``x`` and output ``y`` as float32, so every engine of a block reads and writes the same
fp32 boundary buffers.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from legocompile.backends.tensorrt.build_plan import OnnxKind
from legocompile.errors import LegoCompileError
from legocompile.workspace import atomic_produce

_INT8 = 3  # onnx.TensorProto.INT8


def prepare_onnx(onnx_path: str | os.PathLike[str], kind: OnnxKind, out_dir: str | os.PathLike[str], *,
                 ranges: Any = None) -> Path:
    """Returns the ONNX a TensorRT build of kind ``kind`` parses, writing it under ``out_dir`` when it is derived.

    Args:
        onnx_path: The exported fp32 block.
        kind: ``BuildPlan.onnx``: ``"fp32"``, ``"fp16"`` or ``"int8-qdq"``.
        out_dir: Folder for derived files (``<stem>.fp16.onnx``, ``<stem>.int8-qdq.onnx``), written atomically.
        ranges: The block's :class:`calibration.ranges.TensorRanges` (``"int8-qdq"`` only).

    Raises:
        LegoCompileError: On an unknown kind, missing ranges for int8, or a graph TensorRT could not quantize.
    """
    source = Path(onnx_path)
    if kind == "fp32":
        return source
    out = Path(out_dir) / f"{source.stem}.{kind}.onnx"
    if kind == "fp16":
        atomic_produce(out, lambda tmp: to_fp16(source, tmp))
        return out
    if kind == "int8-qdq":
        if ranges is None:
            raise LegoCompileError("int8 TensorRT engines need the block's calibration ranges")
        quantize_qdq_tensorrt(source, out, ranges)
        return out
    raise LegoCompileError(f"unknown ONNX kind {kind!r} for the tensorrt backend")


def to_fp16(onnx_in: Path, onnx_out: Path) -> None:
    """The fp16 graph with fp32 I/O, through the ONNX Runtime backend's own converter (one fp16 path for both)."""
    from legocompile.backends.onnxrt.backend import _to_fp16

    _to_fp16(onnx_in, onnx_out)


def quantize_qdq_tensorrt(onnx_in: str | os.PathLike[str], onnx_out: str | os.PathLike[str], ranges: Any, *,
                          per_channel: bool = True) -> None:
    """Writes the int8 QDQ graph TensorRT builds (symmetric int8, float biases) from the block's cached ranges.

    The same writer as the ONNX Runtime backend's (:func:`calibration.qdq.quantize_qdq`, with its checks: ranges
    cover every float tensor, I/O names unchanged), with :data:`calibration.recipe.TENSORRT_RECIPE`; the result is
    then checked for anything TensorRT refuses. Written atomically.

    Raises:
        LegoCompileError: If the ranges do not cover the graph, the I/O names changed, or the result still has
            something TensorRT refuses (:func:`tensorrt_qdq_problems`).
    """
    import onnx

    from calibration.qdq import quantize_qdq
    from calibration.recipe import TENSORRT_RECIPE
    def write(tmp: Path) -> None:
        quantize_qdq(onnx_in, tmp, ranges, replace(TENSORRT_RECIPE, per_channel=per_channel))
        problems = tensorrt_qdq_problems(onnx.load(str(tmp)))
        if problems:
            raise LegoCompileError(f"the int8 QDQ graph of {onnx_in} is not TensorRT-compatible: {problems[0]}")

    atomic_produce(Path(onnx_out), write)


def tensorrt_qdq_problems(model: Any) -> list[str]:
    """What in a QDQ ``onnx.ModelProto`` TensorRT's explicit int8 quantization would refuse (empty: nothing).

    Checked: every QuantizeLinear output and DequantizeLinear input is signed int8 with a zero point of 0 (TensorRT
    supports symmetric int8 only), and no DequantizeLinear reads an int32 tensor (a quantized bias).
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    constants = {out: node for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    problems: list[str] = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.op_type == "DequantizeLinear":
            data = initializers.get(node.input[0])
            if data is not None and data.data_type != _INT8:
                problems.append(f"{label} dequantizes a {_type_name(data.data_type)} tensor (TensorRT: int8 only)")
                continue
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if not zero_point:
            problems.append(f"{label} has no zero point, so its type defaults to uint8 (TensorRT: int8 only)")
            continue
        tensor = initializers.get(zero_point)
        if tensor is None and zero_point in constants:
            tensor = next((a.t for a in constants[zero_point].attribute if a.name == "value"), None)
        if tensor is None:
            problems.append(f"{label} has a computed zero point (TensorRT needs a constant 0)")
            continue
        if tensor.data_type != _INT8:
            problems.append(f"{label} is {_type_name(tensor.data_type)} (TensorRT: signed int8 only)")
        elif numpy_helper.to_array(tensor).any():
            problems.append(f"{label} has a non-zero zero point (TensorRT: symmetric quantization only)")
    return problems


def _type_name(data_type: int) -> str:
    import onnx

    return str(onnx.TensorProto.DataType.Name(data_type)).lower()
