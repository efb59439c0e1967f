"""ORT GPU execution-provider backends (onnxruntime-cuda, onnxruntime-trt): the pure decisions, the one-line errors
where onnxruntime-gpu or a GPU is missing, and (on a GPU with onnxruntime-gpu only) a real run."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from legocompile.backends import get_backend
from legocompile.backends.onnxrt import gpu
from legocompile.errors import LegoCompileError, MissingDependencyError

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


def _names(chain):
    return [name for name, _ in chain]


def test_provider_chains_fall_back_trt_then_cuda_then_cpu():
    s = gpu.GpuSettings(device_id=1, trt_cache_dir="/cache")
    assert _names(gpu.providers("cuda", "fp32", s)) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _names(gpu.providers("tensorrt", "fp32", s)) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                             "CPUExecutionProvider"]
    for _, options in gpu.providers("tensorrt", "int8", s)[:2]:
        assert options["device_id"] == "1"
    with pytest.raises(LegoCompileError, match="unknown ORT GPU provider kind 'rocm'"):
        gpu.providers("rocm", "fp32", s)


@pytest.mark.parametrize("precision, fp16, int8", [("fp32", "0", "0"), ("fp16", "1", "0"), ("int8", "0", "1")])
def test_tensorrt_ep_precision_switches_follow_the_engine(precision, fp16, int8):
    """An fp32 engine must stay fp32 (no fp16 kernels); int8 is the QDQ graph (explicit quantization)."""
    options = gpu.tensorrt_options(gpu.GpuSettings(trt_cache_dir="/c", trt_workspace_bytes=123), precision)
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert options["trt_engine_cache_enable"] == "1" and options["trt_engine_cache_path"] == "/c"
    assert options["trt_max_workspace_size"] == "123"
    with pytest.raises(LegoCompileError, match="unknown precision 'bf16'"):
        gpu.tensorrt_options(gpu.GpuSettings(), "bf16")


def test_cuda_graph_is_opt_in():
    assert "enable_cuda_graph" not in gpu.cuda_options(gpu.GpuSettings())
    assert gpu.cuda_options(gpu.GpuSettings(cuda_graph=True))["enable_cuda_graph"] == "1"


def test_missing_provider_error_names_onnxruntime_gpu_and_the_extra():
    err = gpu.missing_provider_error("onnxruntime-trt", "tensorrt", ["CPUExecutionProvider"])
    assert isinstance(err, MissingDependencyError) and err.package == "onnxruntime-gpu"
    assert str(err) == ("onnxruntime-gpu is required for the onnxruntime-trt backend (TensorrtExecutionProvider) "
                        "but is not installed (pip install 'legocompile[onnxruntime-gpu]')")
    assert gpu.missing_provider_error("onnxruntime-cuda", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None


@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime-gpu is installed here")
@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-trt"])
def test_constructing_without_onnxruntime_gpu_is_a_one_line_error(name):
    with pytest.raises(MissingDependencyError) as info:
        get_backend(name)
    assert info.value.package == "onnxruntime-gpu" and "\n" not in str(info.value)
    assert "legocompile[onnxruntime-gpu]" in str(info.value)


def _tiny_onnx(path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _unchecked(cls):
    """A backend object without the construction-time provider and device checks (for build, which needs neither)."""
    be = object.__new__(cls)
    be.settings = gpu.GpuSettings()
    from legocompile.backends.onnxrt import OnnxRuntimeBackend

    be._cpu = OnnxRuntimeBackend()
    return be


def test_engines_carry_their_precision_stamp(tmp_path):
    src = _tiny_onnx(tmp_path / "b.onnx")
    be = _unchecked(gpu.OrtTensorRTBackend)
    be.build(src, "fp32", tmp_path / "e32.onnx")
    be.build(src, "fp16", tmp_path / "e16.onnx")
    assert gpu.precision_of(onnx.load(str(tmp_path / "e32.onnx"))) == "fp32"
    e16 = onnx.load(str(tmp_path / "e16.onnx"))
    assert gpu.precision_of(e16) == "fp16"
    assert [n.op_type for n in e16.graph.node].count("Cast") == 2  # the CPU backend's fp16 conversion (fp32 I/O)
    with pytest.raises(LegoCompileError, match="no precision stamp"):
        gpu.precision_of(onnx.load(str(src)))
    with pytest.raises(LegoCompileError, match="unknown precision"):
        be.build(src, "fp8", tmp_path / "e8.onnx")
    with pytest.raises(LegoCompileError, match="calibration ranges"):
        be.build(src, "int8", tmp_path / "e8.onnx")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EP, reason="needs onnxruntime-gpu (CUDAExecutionProvider)")
def test_cuda_backend_runs_a_block_on_device_buffers_like_the_cpu(tmp_path):
    src = _tiny_onnx(tmp_path / "b.onnx")
    be = get_backend("onnxruntime-cuda")
    be.build(src, "fp32", tmp_path / "e.onnx")
    engine = be.load((tmp_path / "e.onnx").read_bytes())
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    a, b = be.allocate((2, 4)), be.allocate((2, 4))
    run = engine.bind(a, b)
    a.upload(x)
    run()
    np.testing.assert_array_equal(b.download(), np.maximum(x, 0))
    np.testing.assert_array_equal(engine.run(x), get_backend("onnxruntime").load(src).run(x))
