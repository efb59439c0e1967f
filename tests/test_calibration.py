"""Tests of the calibration package: block input capture, range methods, QDQ int8, range JSON, TensorRT cache."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import calibration.qdq as qdq_module
from calibration.capture import block_inputs
from calibration.qdq import quantize_qdq
from calibration.ranges import METHODS, CalibrationSettings, TensorRanges, compute_ranges
from calibration.trt_cache import read_trt_cache, trt_scales, write_trt_cache
from legocompile.errors import LegoCompileError

CHANNELS = 4
SIZE_PX = 8
NUM_SAMPLES = 96


def _block(seed: int) -> torch.nn.Module:
    """A conv-bn-relu-conv block with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(CHANNELS, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, CHANNELS, 3, padding=1),
    )
    bn = block[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return block.eval()


def _export(block: torch.nn.Module, path: Path, *, dynamic_batch: bool = True) -> Path:
    """Exports a block as the project does (input x, output y, opset 17), optionally with a dynamic batch."""
    example = torch.randn(1, CHANNELS, SIZE_PX, SIZE_PX)
    dynamic_axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        block,
        (example,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=dynamic_axes,
    )
    return path


def _run(model_path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": inputs})[0]


@pytest.fixture(scope="module")
def chain() -> list[torch.nn.Module]:
    return [_block(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((NUM_SAMPLES, CHANNELS, SIZE_PX, SIZE_PX)).astype(np.float32)


@pytest.fixture(scope="module")
def captured(chain: list[torch.nn.Module], images: np.ndarray) -> list[np.ndarray]:
    return block_inputs(chain, images, batch_size=32)


@pytest.fixture(scope="module")
def block1_onnx(chain: list[torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(chain[1], tmp_path_factory.mktemp("onnx") / "block1.onnx")


@pytest.fixture(scope="module")
def all_ranges(block1_onnx: Path, captured: list[np.ndarray]) -> dict[str, TensorRanges]:
    return {method: compute_ranges(block1_onnx, captured[1], CalibrationSettings(method=method)) for method in METHODS}


# --- capture -----------------------------------------------------------------------------------------------------


def test_block_inputs_match_running_the_prefix(chain: list[torch.nn.Module], images: np.ndarray) -> None:
    calls = [0, 0, 0]
    hooks = [
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(chain)
    ]
    chain[1].train()  # block_inputs must evaluate in eval mode, then restore this
    try:
        inputs = block_inputs(chain, images, batch_size=7)
    finally:
        for hook in hooks:
            hook.remove()
    assert chain[1].training and not chain[0].training
    chain[1].eval()

    with torch.no_grad():
        after0 = chain[0](torch.from_numpy(images))
        after1 = chain[1](after0)
    assert len(inputs) == 3
    assert all(array.dtype == np.float32 and array.shape == images.shape for array in inputs)
    np.testing.assert_array_equal(inputs[0], images)
    np.testing.assert_allclose(inputs[1], after0.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inputs[2], after1.numpy(), rtol=1e-5, atol=1e-5)
    batches = math.ceil(NUM_SAMPLES / 7)
    assert calls == [batches, batches, 0]  # one pass; the last block's output is nobody's input


def test_block_inputs_rejects_bad_arguments(chain: list[torch.nn.Module], images: np.ndarray) -> None:
    with pytest.raises(LegoCompileError):
        block_inputs([], images)
    with pytest.raises(LegoCompileError):
        block_inputs(chain, images, batch_size=0)
    with pytest.raises(LegoCompileError):
        block_inputs(chain, images[:0])


# --- ranges ------------------------------------------------------------------------------------------------------


def test_minmax_range_of_graph_input_is_data_min_max(
    all_ranges: dict[str, TensorRanges], captured: list[np.ndarray]
) -> None:
    minmax = all_ranges["minmax"]
    assert minmax.method == "minmax"
    assert minmax.ranges["x"] == (float(captured[1].min()), float(captured[1].max()))
    assert "y" in minmax.ranges
    assert len(minmax.ranges) >= 4  # x, conv output, relu output, y (BatchNorm is folded into the first conv)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_ranges_lie_within_minmax(all_ranges: dict[str, TensorRanges], method: str) -> None:
    minmax, other = all_ranges["minmax"].ranges, all_ranges[method].ranges
    assert other.keys() == minmax.keys()
    for name, (low, high) in other.items():
        assert minmax[name][0] <= low <= high <= minmax[name][1], name


def test_percentile_clips_the_tails(all_ranges: dict[str, TensorRanges]) -> None:
    minmax, percentile = all_ranges["minmax"].ranges, all_ranges["percentile"].ranges
    assert any(percentile[name] != minmax[name] for name in minmax)


def test_symmetric_activations(block1_onnx: Path, captured: list[np.ndarray]) -> None:
    ranges = compute_ranges(block1_onnx, captured[1], CalibrationSettings(num_samples=32, symmetric_activations=True))
    for low, high in ranges.ranges.values():
        assert low == -high


def test_fixed_batch_graph_and_no_files_in_cwd(
    chain: list[torch.nn.Module], captured: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _export(chain[1], tmp_path / "fixed.onnx", dynamic_batch=False)
    work_dir = tmp_path / "cwd"
    work_dir.mkdir()
    monkeypatch.chdir(work_dir)
    settings = CalibrationSettings(method="percentile", num_samples=16)
    ranges = compute_ranges(model, captured[1], settings)
    assert ranges.ranges["x"][0] >= float(captured[1][:16].min())
    quantize_qdq(model, tmp_path / "fixed_int8.onnx", ranges)
    assert list(work_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "fixed.onnx", "fixed_int8.onnx"]


def test_compute_ranges_rejects_inputs_that_do_not_fit(block1_onnx: Path, captured: list[np.ndarray]) -> None:
    with pytest.raises(LegoCompileError, match="dimension 1"):
        compute_ranges(block1_onnx, captured[1][:, :2], CalibrationSettings())
    with pytest.raises(LegoCompileError, match="not found"):
        compute_ranges(block1_onnx.with_name("missing.onnx"), captured[1], CalibrationSettings())


def test_invalid_settings() -> None:
    with pytest.raises(LegoCompileError, match="minmax, entropy, percentile"):
        CalibrationSettings(method="kl")
    with pytest.raises(LegoCompileError):
        CalibrationSettings(num_samples=0)
    with pytest.raises(LegoCompileError):
        CalibrationSettings(percentile=0.0)
    with pytest.raises(TypeError):
        CalibrationSettings("minmax")  # type: ignore[misc]  # keyword-only


def test_ranges_json_round_trip(all_ranges: dict[str, TensorRanges], tmp_path: Path) -> None:
    for method, ranges in all_ranges.items():
        path = tmp_path / f"{method}.json"
        ranges.to_json(path)
        assert TensorRanges.from_json(path) == ranges
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{m}.json" for m in all_ranges)  # no temp files
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(LegoCompileError):
        TensorRanges.from_json(tmp_path / "bad.json")
    with pytest.raises(LegoCompileError):
        TensorRanges(ranges={"t": (1.0, -1.0)})


# --- QDQ int8 ----------------------------------------------------------------------------------------------------


def test_quantize_qdq_runs_close_to_fp32(
    block1_onnx: Path, all_ranges: dict[str, TensorRanges], captured: list[np.ndarray], tmp_path: Path
) -> None:
    int8_path = tmp_path / "block1_int8.onnx"
    quantize_qdq(block1_onnx, int8_path, all_ranges["minmax"])
    model = onnx.load(str(int8_path))
    op_types = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= op_types
    assert [vi.name for vi in model.graph.input] == ["x"] and [vi.name for vi in model.graph.output] == ["y"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    fp32 = _run(block1_onnx, captured[1])
    int8 = _run(int8_path, captured[1])
    relative_error = float(np.abs(int8 - fp32).max() / (fp32.max() - fp32.min()))
    assert relative_error < 0.05, relative_error


def test_quantize_qdq_fallback_path_matches(
    block1_onnx: Path, all_ranges: dict[str, TensorRanges], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quantize_qdq(block1_onnx, tmp_path / "cache_api.onnx", all_ranges["percentile"])
    monkeypatch.setattr(qdq_module, "_has_cache_path_api", lambda: False)
    quantize_qdq(block1_onnx, tmp_path / "quantizer.onnx", all_ranges["percentile"])
    assert onnx.load(str(tmp_path / "cache_api.onnx")).graph == onnx.load(str(tmp_path / "quantizer.onnx")).graph


def test_quantize_qdq_rejects_ranges_of_another_graph(block1_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(LegoCompileError, match="do not cover"):
        quantize_qdq(block1_onnx, tmp_path / "out.onnx", TensorRanges(ranges={"x": (-1.0, 1.0)}))
    assert not (tmp_path / "out.onnx").exists()
    assert list(tmp_path.iterdir()) == []


# --- TensorRT cache ----------------------------------------------------------------------------------------------


def test_trt_cache_round_trip(all_ranges: dict[str, TensorRanges], tmp_path: Path) -> None:
    ranges = all_ranges["entropy"]
    path = tmp_path / "block1.cache"
    write_trt_cache(ranges, path)
    scales = read_trt_cache(path)
    assert scales == trt_scales(ranges)
    assert list(scales) == list(ranges.ranges)
    for name, (low, high) in ranges.ranges.items():
        assert scales[name] == float(np.float32(max(abs(low), abs(high)) / 127))
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8600-EntropyCalibration2"
    for line in lines[1:]:
        name, hex_scale = line.rsplit(": ", 1)
        assert len(hex_scale) == 8 and struct.unpack(">f", bytes.fromhex(hex_scale))[0] == scales[name]
    assert [p.name for p in tmp_path.iterdir()] == ["block1.cache"]


def test_trt_cache_known_values(tmp_path: Path) -> None:
    ranges = TensorRanges(ranges={"input:0": (-127.0, 50.0), "/relu/Relu_output_0": (0.0, 12.7)}, method="minmax")
    path = tmp_path / "known.cache"
    write_trt_cache(ranges, path, trt_version="10030")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-10030-EntropyCalibration2"
    assert lines[1] == "input:0: 3f800000"  # scale 1.0
    assert lines[2] == f"/relu/Relu_output_0: {struct.pack('>f', np.float32(0.1)).hex()}"
    assert read_trt_cache(path) == {"input:0": 1.0, "/relu/Relu_output_0": float(np.float32(0.1))}


def test_trt_cache_errors(tmp_path: Path) -> None:
    ranges = TensorRanges(ranges={"x": (-1.0, 1.0)})
    with pytest.raises(LegoCompileError):
        write_trt_cache(ranges, tmp_path / "a.cache", trt_version="8.6")
    (tmp_path / "bad.cache").write_text("not a cache\n")
    with pytest.raises(LegoCompileError):
        read_trt_cache(tmp_path / "bad.cache")
    with pytest.raises(LegoCompileError):
        read_trt_cache(tmp_path / "missing.cache")


# --- int8 recipes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u8s8", "u8u8", "u8s8-reduce-range"])
def test_every_recipe_is_written_and_runs_close_to_fp32(
    name: str, block1_onnx: Path, all_ranges: dict[str, TensorRanges], captured: list[np.ndarray], tmp_path: Path
) -> None:
    """Each recipe is forced here, whatever this CPU would choose, so every path is exercised on every machine."""
    from calibration.recipe import RECIPES

    recipe = RECIPES[name]
    out = tmp_path / f"{name}.onnx"
    quantize_qdq(block1_onnx, out, all_ranges["minmax"], recipe)
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    weight_zero_points = [inits[n.input[2]] for n in model.graph.node
                          if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(n.input) > 2
                          and inits[n.input[0]].dims and len(inits[n.input[0]].dims) == 4]
    assert weight_zero_points, "no quantized conv weight found"
    expected = onnx.TensorProto.UINT8 if recipe.weight == "uint8" else onnx.TensorProto.INT8
    assert {z.data_type for z in weight_zero_points} == {expected}
    fp32 = _run(block1_onnx, captured[1])
    int8 = _run(out, captured[1])
    # this small block's pair sums stay below int16's limit, so even u8s8 without VNNI is close here
    assert float(np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32)) < 0.05


@pytest.mark.parametrize("name", ["u8u8", "u8s8-reduce-range"])
def test_fallback_quantizer_path_honours_the_recipe(
    name: str, block1_onnx: Path, all_ranges: dict[str, TensorRanges], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from calibration.recipe import RECIPES

    quantize_qdq(block1_onnx, tmp_path / "cache_api.onnx", all_ranges["minmax"], RECIPES[name])
    monkeypatch.setattr(qdq_module, "_has_cache_path_api", lambda: False)
    quantize_qdq(block1_onnx, tmp_path / "quantizer.onnx", all_ranges["minmax"], RECIPES[name])
    assert onnx.load(str(tmp_path / "cache_api.onnx")).graph == onnx.load(str(tmp_path / "quantizer.onnx")).graph


def test_reduce_range_keeps_weights_within_7_bits(
    block1_onnx: Path, all_ranges: dict[str, TensorRanges], tmp_path: Path
) -> None:
    from onnx import numpy_helper

    from calibration.recipe import RECIPES

    def max_weight(name: str) -> int:
        out = tmp_path / f"{name}.onnx"
        quantize_qdq(block1_onnx, out, all_ranges["minmax"], RECIPES[name])
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)

    assert max_weight("u8s8") == 127
    assert max_weight("u8s8-reduce-range") <= 64
