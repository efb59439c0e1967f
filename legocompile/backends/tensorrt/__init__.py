"""TensorRT backend (NVIDIA GPUs and Jetson).

TensorRT and the CUDA bindings (cuda-python or pycuda) are imported lazily, inside the functions that use them;
importing this package needs neither. Modules:

* :mod:`.version`: version parsing and every version-dependent decision (pure).
* :mod:`.build_plan`: :func:`plan_build` -> :class:`BuildPlan` (pure).
* :mod:`.onnx_prep`: the fp32 / fp16 / int8-QDQ ONNX a build parses.
* :mod:`.calibrator`: implicit int8 calibration from a calibration cache (8.6 / 10.x).
* :mod:`.builder`: carries a plan out with the TensorRT builder.
* :mod:`.engine_file`: the engine file's compatibility header (pure).
* :mod:`.cuda_memory`: the CUDA adapter and the buffer plan (pure).
* :mod:`.runner`: engines, shared boundary buffers, one stream, CUDA graphs.
* :mod:`.profiling`: GPU latency (CUDA events) and memory.
* :mod:`.backend`: :class:`TensorRTBackend`, the backend protocol.
* :mod:`.typecheck`: mypy over this folder against the TensorRT type stubs.
"""

from __future__ import annotations

from legocompile.backends.tensorrt.backend import TensorRTBackend
from legocompile.backends.tensorrt.build_plan import BuildPlan, plan_build

__all__ = ["BuildPlan", "TensorRTBackend", "plan_build"]
