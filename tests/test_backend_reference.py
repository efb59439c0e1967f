"""The backend seam, proved by a second backend: onnx's reference evaluator runs build -> profile -> bundle ->
Runtime end to end, and its outputs match PyTorch and the ONNX Runtime backend."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import legocompile
from legocompile.backends import BACKENDS, get_backend
from legocompile.bundle import read_bundle
from legocompile.config import ProfileConfig
from legocompile.errors import LegoCompileError
from legocompile.runtime import Runtime
from zoo import TinyVGG

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def ref_build(tmp_path_factory, digits_small):
    torch.manual_seed(0)
    model = TinyVGG(in_channels=1, widths=(4, 4, 8, 8)).eval()
    calib, (ex, ey) = digits_small
    calib, ex = calib[:32, :, ::2, ::2], ex[:64, :, ::2, ::2]  # 16x16: the evaluator is slow, the test should not be
    root = tmp_path_factory.mktemp("reference")
    path = legocompile.compile(
        model, np.zeros((1, 1, 16, 16), np.float32), calibration_data=calib, eval_data=(ex, ey[:64]),
        out=root / "bundle", work_dir=root / "work", precisions=PRECISIONS, backend="reference", max_blocks=2,
        profile=ProfileConfig(warmup=1, runs=5), additivity_samples=0, model_name="tiny-ref",
    )
    return {"path": path, "model": model, "x": np.ascontiguousarray(ex[:16])}


def _torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_the_bundle_is_built_profiled_and_written_by_the_reference_backend(ref_build):
    m = read_bundle(ref_build["path"])
    assert m.device["backend"] == "reference" and len(m.blocks) == 2
    for b in m.blocks:
        assert sorted(o.precision for o in b.options) == sorted(PRECISIONS)
        for o in b.options:
            assert o.backend == "reference"
            assert 0 < o.latency_ms <= o.latency_p90_ms and o.memory_bytes > 0  # measured in the probe, by this backend
        fp32 = b.option("s0", "fp32")
        engine, onnx_file = (ref_build["path"] / fp32.engine).read_bytes(), (ref_build["path"] / fp32.onnx).read_bytes()
        assert engine == onnx_file  # the fp32 "engine" is the block's ONNX itself


def test_runtime_runs_the_reference_bundle_like_pytorch_and_onnxruntime(ref_build):
    rt = Runtime.load(ref_build["path"])
    assert rt.backend_name == "reference" and rt.shared_threads is False
    x = ref_build["x"]
    y = rt(x)
    assert type(rt._buffer_set(len(x)).buffers[0]).__name__ == "HostBuffer"  # allocated by the bundle's backend
    ref = _torch(ref_build["model"], x)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    # the same fp32 ONNX files chained by the ONNX Runtime backend
    ort = get_backend("onnxruntime")
    h = x
    for b in rt.manifest.blocks:
        h = ort.load((ref_build["path"] / b.option("s0", "fp32").onnx).read_bytes()).run(h)
    np.testing.assert_allclose(y, h, rtol=0, atol=1e-5 * max(1.0, float(np.abs(h).max())))


@pytest.mark.parametrize("precision, bound", [("fp16", 0.01), ("int8", 0.15)])
def test_reduced_precisions_run_within_bounds(ref_build, precision, bound):
    """The ORT backend's fp16 and QDQ graphs, run by the reference evaluator: close to PyTorch, and really reduced."""
    rt = Runtime.load(ref_build["path"])
    x = ref_build["x"]
    rt.select(selection=[("s0", "fp32")] * len(rt.blocks))
    y32 = rt(x)
    rt.select(selection=[("s0", precision)] * len(rt.blocks))
    y = rt(x)
    scale = float(np.abs(y32).max())
    err = float(np.abs(y - _torch(ref_build["model"], x)).max())
    assert 0 < err < bound * scale, (precision, err, scale)


def test_fp32_build_copies_the_onnx_and_unknown_precisions_are_refused(ref_build, tmp_path):
    be = get_backend("reference")
    m = read_bundle(ref_build["path"])
    src = ref_build["path"] / m.blocks[0].option("s0", "fp32").onnx
    be.build(src, "fp32", tmp_path / "e.onnx")
    assert hashlib.sha256((tmp_path / "e.onnx").read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(LegoCompileError, match="unknown precision 'bf16'"):
        be.build(src, "bf16", tmp_path / "f.onnx")
    with pytest.raises(LegoCompileError, match="cannot load this engine"):
        be.load(b"not an onnx model")


def test_topological_sort_orders_a_graph_that_lists_consumers_first():
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from legocompile.backends.reference.backend import topological_sort

    relu = helper.make_node("Relu", ["t"], ["y"])
    neg = helper.make_node("Neg", ["x"], ["t"])
    graph = helper.make_graph([relu, neg], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    topological_sort(graph)
    assert [n.op_type for n in graph.node] == ["Neg", "Relu"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    out = ReferenceEvaluator(model).run(None, {"x": np.array([1.0, -2.0], np.float32)})[0]
    np.testing.assert_array_equal(out, [0.0, 2.0])
    cyclic = helper.make_graph([helper.make_node("Neg", ["a"], ["b"]), helper.make_node("Neg", ["b"], ["a"])], "c",
                               [], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])])
    with pytest.raises(LegoCompileError, match="cycle"):
        topological_sort(cyclic)


# ------------------------------------------------------------------------------------------ the registry
def test_the_registry_drives_the_cli_choices_config_and_the_unknown_name_error(tmp_path):
    from legocompile.cli import build_parser
    from legocompile.config import load_config

    parser = build_parser()
    build = parser._subparsers._group_actions[0].choices["build"]  # type: ignore[union-attr]
    (backend_action,) = [a for a in build._actions if "--backend" in a.option_strings]
    assert sorted(backend_action.choices) == sorted(BACKENDS)
    assert {"onnxruntime", "reference", "tensorrt", "onnxruntime-cuda", "onnxruntime-trt"} <= set(BACKENDS)
    assert parser.parse_args(["build", "--backend", "reference"]).backend == "reference"
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "--backend", "tvm"])
    with pytest.raises(LegoCompileError) as info:
        get_backend("tvm")
    assert str(info.value) == f"unknown backend 'tvm'; available: {', '.join(BACKENDS)}"
    assert "\n" not in str(info.value)
    cfg = tmp_path / "legocompile.toml"
    cfg.write_text('[model]\nfactory = "m:make"\ninput_shape = [1, 1, 32, 32]\n[data]\nprovider = "m:data"\n'
                   '[build]\nbackend = "reference"\n')
    assert load_config(cfg).build.backend == "reference"  # config validation accepts every registered name


def test_a_bundle_mixing_backends_is_refused(ref_build):
    import dataclasses

    from legocompile.runtime.executor import bundle_backend

    m = read_bundle(ref_build["path"])
    assert bundle_backend(m) == "reference"
    b0 = m.blocks[0]
    mixed = dataclasses.replace(b0, options=(dataclasses.replace(b0.options[0], backend="onnxruntime"), *b0.options[1:]))
    with pytest.raises(LegoCompileError, match="one backend; this one names onnxruntime, reference"):
        bundle_backend(dataclasses.replace(m, blocks=(mixed, *m.blocks[1:])))
