"""Calibration for int8 engines: per-block activation capture, range methods, QDQ writing, TensorRT cache format.

Public API (imported lazily, so ``import calibration`` pulls in neither torch nor onnxruntime):

* :func:`block_inputs` (:mod:`calibration.capture`): every block's input activations over calibration data.
* :class:`CalibrationSettings`, :class:`TensorRanges`, :func:`compute_ranges` (:mod:`calibration.ranges`).
* :func:`quantize_qdq` (:mod:`calibration.qdq`): int8 QDQ ONNX model from cached ranges.
* :class:`Int8Recipe`, :func:`choose_recipe`, :func:`host_recipe` (:mod:`calibration.recipe`): the int8 format
  that suits a CPU (u8s8 saturates on x86 without VNNI).
* :func:`write_trt_cache`, :func:`read_trt_cache` (:mod:`calibration.trt_cache`): TensorRT calibration cache.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "block_inputs": "calibration.capture",
    "METHODS": "calibration.ranges",
    "CalibrationSettings": "calibration.ranges",
    "TensorRanges": "calibration.ranges",
    "compute_ranges": "calibration.ranges",
    "quantize_qdq": "calibration.qdq",
    "Int8Recipe": "calibration.recipe",
    "choose_recipe": "calibration.recipe",
    "host_recipe": "calibration.recipe",
    "write_trt_cache": "calibration.trt_cache",
    "read_trt_cache": "calibration.trt_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imports a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'calibration' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
