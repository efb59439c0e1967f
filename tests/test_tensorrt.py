"""The TensorRT backend: every pure decision, the ONNX it builds from, mypy against the TensorRT stubs, and (where
a GPU and TensorRT exist) real builds and runs.

No test here fakes a TensorRT result. Tests that need TensorRT or a GPU are marked ``tensorrt`` / ``gpu`` and also
skip unless a *real* TensorRT imports: ``tensorrt-stubs`` installs a ``tensorrt`` folder holding only
``__init__.pyi``, which imports as an empty namespace package and fools a plain ``find_spec`` check.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import legocompile.backends.tensorrt as trt_backend
from legocompile.backends.tensorrt import build_plan as bp
from legocompile.backends.tensorrt import cuda_memory as cm
from legocompile.backends.tensorrt import engine_file as ef
from legocompile.backends.tensorrt import typecheck
from legocompile.backends.tensorrt import version as v
from legocompile.backends.tensorrt.builder import parse_errors, profile_shapes
from legocompile.backends.tensorrt.calibrator import CacheCalibratorCore, cache_from_ranges, cache_header_error
from legocompile.backends.tensorrt.profiling import memory_from_free, summarize_ms
from legocompile.backends.tensorrt.runner import graph_action, needs_recapture
from legocompile.errors import LegoCompileError, MissingDependencyError

BACKEND_DIR = Path(trt_backend.__file__).parent
REPO = BACKEND_DIR.parents[2]

V86, V100, V1013, V11 = (8, 6, 1), (10, 0, 0), (10, 13, 0, 35), (11, 0, 0)


def _real_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        v.ensure_tensorrt()
    except MissingDependencyError:
        return False
    return True


def _gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


needs_tensorrt = pytest.mark.skipif(not _real_tensorrt(), reason="needs TensorRT (not installed; stubs do not count)")
needs_gpu = pytest.mark.skipif(not _gpu(), reason="needs an NVIDIA GPU (none here)")


# ------------------------------------------------------------------------------------------------------ versions
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.13.0.35", (10, 13, 0, 35)),
        ("8.6.1.post1", (8, 6, 1)),
        ("8.6.1.6", (8, 6, 1, 6)),
        ("10.0.0b6", (10, 0, 0)),
        ("11.0", (11, 0, 0)),
        ("10", (10, 0, 0)),
        (" v10.3.0 ", (10, 3, 0)),
        ("10.13.0.35+cuda12", (10, 13, 0, 35)),
        ("10.13.0.35.1", (10, 13, 0, 35, 1)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert v.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "TensorRT 10", ".10", "post1"])
def test_parse_version_rejects_non_versions(text: str) -> None:
    with pytest.raises(LegoCompileError, match="cannot read TensorRT version"):
        v.parse_version(text)


def test_versions_compare_as_numbers_not_strings() -> None:
    assert "10.13" < "8.6"  # why strings are never compared
    assert v.parse_version("10.13") > v.parse_version("8.6")
    assert v.parse_version("10.13.0.35") > v.parse_version("10.2.0")
    assert v.release(v.parse_version("10.13.0.35")) == (10, 13, 0)


@pytest.mark.parametrize(
    ("version", "flags", "implicit", "strong", "strong_only", "mem_attr", "shared_scratch"),
    [
        (V86, True, True, False, False, "device_memory_size", False),
        (V100, True, True, True, False, "device_memory_size", False),
        ((10, 1, 0), True, True, True, False, "device_memory_size_v2", True),
        (V1013, True, True, True, False, "device_memory_size_v2", True),
        (V11, False, False, True, True, "device_memory_size_v2", True),
        ((11, 4, 1), False, False, True, True, "device_memory_size_v2", True),
        ((12, 0, 0), False, False, True, True, "device_memory_size_v2", True),  # newest known rules
    ],
)
def test_version_decisions(version, flags, implicit, strong, strong_only, mem_attr, shared_scratch) -> None:
    assert v.has_precision_builder_flags(version) is flags
    assert v.has_implicit_calibration(version) is implicit
    assert v.strong_typing_default(version) is strong
    assert v.strong_typing_only(version) is strong_only
    assert v.device_memory_size_attribute(version) == mem_attr
    assert v.user_managed_scratch(version) is shared_scratch
    assert v.has_execute_async_v3(version)
    assert v.unsupported_reason(version) is None


def test_context_creation() -> None:
    assert v.context_creation(V86, shared_scratch=True) == "static"
    assert v.context_creation(V100, shared_scratch=True) == "static"
    assert v.context_creation(V1013, shared_scratch=True) == "strategy"
    assert v.context_creation(V1013, shared_scratch=False) == "static"
    assert v.context_creation(V11, shared_scratch=True) == "runtime_config"


def test_network_creation_flags() -> None:
    assert v.network_creation_flags(V86, strongly_typed=False) == ("EXPLICIT_BATCH",)
    assert v.network_creation_flags(V100, strongly_typed=True) == ("STRONGLY_TYPED",)
    assert v.network_creation_flags(V1013, strongly_typed=False) == ()  # EXPLICIT_BATCH is ignored on 10: not passed
    assert v.network_creation_flags(V11, strongly_typed=True) == ()  # always strong; EXPLICIT_BATCH removed
    with pytest.raises(LegoCompileError, match="TensorRT 10 and later"):
        v.network_creation_flags(V86, strongly_typed=True)
    with pytest.raises(LegoCompileError, match="no weakly typed"):
        v.network_creation_flags(V11, strongly_typed=False)


@pytest.mark.parametrize("version", [(8, 5, 3), (8, 4, 0), (7, 2, 3)])
def test_old_versions_are_refused(version: tuple[int, ...]) -> None:
    reason = v.unsupported_reason(version)
    assert reason is not None and "8.6 or later" in reason and "\n" not in reason
    with pytest.raises(LegoCompileError, match="too old"):
        bp.plan_build(version, "fp32")


@pytest.mark.parametrize(
    ("version", "digits"),
    [((8, 6, 0), "8600"), ((8, 6, 1, 6), "8601"), ((10, 3, 0), "100300"), (V1013, "101300"), ((10, 0, 1), "100001")],
)
def test_calibration_cache_version(version: tuple[int, ...], digits: str) -> None:
    assert v.calibration_cache_version(version) == digits


def test_calibration_cache_version_on_11_is_an_error() -> None:
    with pytest.raises(LegoCompileError, match="no int8 calibrators"):
        v.calibration_cache_version(V11)


def test_version_docstring_lists_what_the_stubs_cannot_see() -> None:
    doc = v.__doc__ or ""
    for name in ("BuilderFlag.FP16", "int8_calibrator", "EXPLICIT_BATCH", "STRONGLY_TYPED", "device_memory_size",
                 "platform_has_fast_fp16"):
        assert name in doc


# --------------------------------------------------------------------------------------------------- build plans
# (version, precision, calibration) -> (onnx, strongly typed, network flags, builder flags, calibrator)
PLANS = {
    (V86, "fp32", "qdq"): ("fp32", False, ("EXPLICIT_BATCH",), (), False),
    (V86, "fp16", "qdq"): ("fp16", False, ("EXPLICIT_BATCH",), ("FP16",), False),
    (V86, "int8", "qdq"): ("int8-qdq", False, ("EXPLICIT_BATCH",), ("INT8",), False),
    (V86, "fp32", "implicit"): ("fp32", False, ("EXPLICIT_BATCH",), (), False),
    (V86, "fp16", "implicit"): ("fp16", False, ("EXPLICIT_BATCH",), ("FP16",), False),
    (V86, "int8", "implicit"): ("fp32", False, ("EXPLICIT_BATCH",), ("INT8",), True),
    (V100, "fp32", "qdq"): ("fp32", True, ("STRONGLY_TYPED",), (), False),
    (V100, "fp16", "qdq"): ("fp16", True, ("STRONGLY_TYPED",), (), False),
    (V100, "int8", "qdq"): ("int8-qdq", True, ("STRONGLY_TYPED",), (), False),
    (V100, "int8", "implicit"): ("fp32", False, (), ("INT8",), True),
    (V1013, "fp32", "qdq"): ("fp32", True, ("STRONGLY_TYPED",), (), False),
    (V1013, "fp16", "qdq"): ("fp16", True, ("STRONGLY_TYPED",), (), False),
    (V1013, "int8", "qdq"): ("int8-qdq", True, ("STRONGLY_TYPED",), (), False),
    (V1013, "fp32", "implicit"): ("fp32", True, ("STRONGLY_TYPED",), (), False),
    (V1013, "fp16", "implicit"): ("fp16", True, ("STRONGLY_TYPED",), (), False),
    (V1013, "int8", "implicit"): ("fp32", False, (), ("INT8",), True),
    (V11, "fp32", "qdq"): ("fp32", True, (), (), False),
    (V11, "fp16", "qdq"): ("fp16", True, (), (), False),
    (V11, "int8", "qdq"): ("int8-qdq", True, (), (), False),
    (V11, "fp32", "implicit"): ("fp32", True, (), (), False),
    (V11, "fp16", "implicit"): ("fp16", True, (), (), False),
}


@pytest.mark.parametrize(("version", "precision", "calibration"), list(PLANS))
def test_plan_build(version: tuple[int, ...], precision: str, calibration: str) -> None:
    plan = bp.plan_build(version, precision, calibration)
    onnx_kind, strong, network_flags, builder_flags, calibrator = PLANS[(version, precision, calibration)]
    assert (plan.onnx, plan.strongly_typed, plan.network_flags, plan.builder_flags, plan.needs_calibrator) == (
        onnx_kind, strong, network_flags, builder_flags, calibrator
    )
    assert plan.calibration == (calibration if precision == "int8" else None)
    assert plan.calibration_cache_version == (v.calibration_cache_version(version) if calibrator else None)
    assert plan.tensorrt_version == version and plan.precision == precision
    json.dumps(plan.summary())  # recorded in the engine header
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.precision = "fp16"  # type: ignore[misc]


@pytest.mark.parametrize("version", [V11, (11, 4, 1), (12, 1, 0)])
def test_implicit_calibration_on_11_is_a_one_line_error_naming_the_alternative(version: tuple[int, ...]) -> None:
    with pytest.raises(LegoCompileError) as info:
        bp.plan_build(version, "int8", "implicit")
    message = str(info.value)
    assert "\n" not in message and "removed implicit int8 calibration" in message and "calibration='qdq'" in message


def test_plan_invariants_over_every_version() -> None:
    versions = [V86, (8, 6, 0), V100, (10, 1, 0), (10, 8, 0), V1013, V11, (11, 4, 1)]
    for version in versions:
        for precision in bp.PRECISIONS:
            for calibration in bp.CALIBRATIONS:
                try:
                    plan = bp.plan_build(version, precision, calibration)
                except LegoCompileError:
                    assert version[0] >= 11 and (precision, calibration) == ("int8", "implicit")
                    continue
                if plan.strongly_typed:
                    assert plan.builder_flags == ()  # precision flags are refused on strongly typed networks
                if version[0] >= 11:
                    assert not plan.builder_flags and not plan.network_flags and not plan.needs_calibrator
                if version[0] >= 10:
                    assert "EXPLICIT_BATCH" not in plan.network_flags
                else:
                    assert plan.network_flags == ("EXPLICIT_BATCH",)
                assert plan.needs_calibrator == (precision == "int8" and calibration == "implicit")
    # one ONNX per precision feeds every version (explicit quantization)
    for precision in bp.PRECISIONS:
        assert len({bp.plan_build(version, precision).onnx for version in versions}) == 1


def test_plan_rejects_unknown_precision_and_calibration() -> None:
    with pytest.raises(LegoCompileError, match="unknown precision 'bf16'"):
        bp.plan_build(V1013, "bf16")
    with pytest.raises(LegoCompileError, match="unknown int8 calibration 'entropy'"):
        bp.plan_build(V1013, "int8", "entropy")


# ---------------------------------------------------------------------------------------------- engine header
def _facts(version=V1013, gpu="NVIDIA GeForce RTX 4090", cc=(8, 9)) -> ef.DeviceFacts:
    return ef.DeviceFacts(version, gpu, cc)


def _engine_bytes(plan: bytes = b"\x01serialized-plan\x00" * 10, facts: ef.DeviceFacts | None = None) -> bytes:
    facts = facts or _facts()
    header = ef.make_header(plan, facts, "int8", bp.plan_build(facts.tensorrt_version, "int8").summary())
    return ef.pack(header, plan)


def test_engine_file_round_trip(tmp_path: Path) -> None:
    plan = bytes(range(256)) * 7
    data = _engine_bytes(plan)
    assert data.startswith(ef.MAGIC)
    header, body = ef.unpack(data)
    assert body == plan
    assert header.device == _facts()
    assert header.engine_header_version == ef.ENGINE_HEADER_VERSION
    assert header.precision == "int8" and header.plan_bytes == len(plan)
    assert header.build["onnx"] == "int8-qdq" and header.build["tensorrt_version"] == "10.13.0.35"
    path = tmp_path / "b.engine"
    path.write_bytes(data)
    assert ef.read_header(path) == header
    raw = json.loads(data[12 : 12 + int.from_bytes(data[8:12], "little")])
    assert raw["compute_capability"] == "8.9" and raw["gpu_name"] == "NVIDIA GeForce RTX 4090"


def test_same_device_is_compatible_and_build_number_is_ignored() -> None:
    header = ef.unpack(_engine_bytes())[0]
    assert ef.compatibility_error(header, _facts()) is None
    assert ef.compatibility_error(header, _facts(version=(10, 13, 0, 36))) is None


@pytest.mark.parametrize(
    ("local", "what"),
    [
        (_facts(version=(10, 14, 1)), "TensorRT release"),
        (_facts(version=V86), "TensorRT release"),
        (_facts(gpu="Orin", cc=(8, 7)), "compute capability and GPU"),
        (_facts(gpu="NVIDIA L40S"), "GPU"),
    ],
)
def test_engine_from_elsewhere_is_refused_with_a_rebuild_hint(local: ef.DeviceFacts, what: str) -> None:
    header = ef.unpack(_engine_bytes())[0]
    message = ef.compatibility_error(header, local, "engines/s1/v0-int8.engine")
    assert message is not None and "\n" not in message
    assert message.startswith("engines/s1/v0-int8.engine was built for TensorRT 10.13.0.35 on NVIDIA GeForce RTX 4090")
    assert f"(different {what})" in message
    assert "`legocompile build --backend tensorrt`" in message


def test_corrupt_engine_files_are_refused(tmp_path: Path) -> None:
    data = _engine_bytes()
    with pytest.raises(LegoCompileError, match="not a legocompile TensorRT engine"):
        ef.unpack(b"ftrt" + data[4:], "x.engine")
    with pytest.raises(LegoCompileError, match="truncated"):
        ef.unpack(data[:10], "x.engine")
    with pytest.raises(LegoCompileError, match="truncated or corrupt engine header"):
        ef.unpack(data[:40], "x.engine")
    with pytest.raises(LegoCompileError, match="does not match its header"):
        ef.unpack(data[:-1], "x.engine")
    with pytest.raises(LegoCompileError, match="does not match its header"):
        ef.unpack(data[:-1] + bytes([data[-1] ^ 1]), "x.engine")
    with pytest.raises(LegoCompileError, match="engine file not found"):
        ef.read_header(tmp_path / "missing.engine")
    for message in ("not a legocompile", "does not match"):
        try:
            ef.unpack(b"junk" * 10 if message == "not a legocompile" else data[:-1], "x.engine")
        except LegoCompileError as error:
            assert "legocompile build --backend tensorrt" in str(error)


def test_newer_header_version_is_refused() -> None:
    plan = b"plan"
    header = dataclasses.replace(ef.make_header(plan, _facts(), "fp32"), engine_header_version=99)
    with pytest.raises(LegoCompileError, match="header version 99 is newer"):
        ef.unpack(ef.pack(header, plan), "x.engine")


def test_header_must_describe_its_plan() -> None:
    header = ef.make_header(b"plan-a", _facts(), "fp32")
    with pytest.raises(ValueError):
        ef.pack(header, b"plan-b")


# -------------------------------------------------------------------------------------------------- buffer plans
def test_plan_buffers_aligns_every_buffer() -> None:
    plan = cm.plan_buffers([((1, 3, 32, 32), "float32"), ((1, 10), "float32"), ((2, 5), np.float16), ((0, 4), "float32")])
    assert [s.nbytes for s in plan.slots] == [12288, 40, 20, 0]
    assert [s.offset for s in plan.slots] == [0, 12288, 12544, 12800]
    assert all(s.offset % 256 == 0 for s in plan.slots)
    assert plan.total_bytes == 13056 and plan.total_bytes % 256 == 0
    assert plan.slots[2].dtype == "float16" and plan.slots[0].shape == (1, 3, 32, 32)


def test_plan_buffers_other_alignment_and_empty() -> None:
    plan = cm.plan_buffers([((3,), "float32"), ((5,), "int8")], alignment=16)
    assert [s.offset for s in plan.slots] == [0, 16] and plan.total_bytes == 32
    assert cm.plan_buffers([]).total_bytes == 256
    assert cm.align_up(257, 256) == 512 and cm.align_up(0, 256) == 0


@pytest.mark.parametrize("shape", [(-1, 3, 8, 8), (1, 3.0, 8), (1, True)])
def test_plan_buffers_rejects_unresolved_shapes(shape: tuple) -> None:
    with pytest.raises(LegoCompileError, match="concrete size"):
        cm.plan_buffers([(shape, "float32")])


@pytest.mark.parametrize("alignment", [0, 3, -256, 100])
def test_plan_buffers_rejects_bad_alignment(alignment: int) -> None:
    with pytest.raises(LegoCompileError, match="power of two"):
        cm.plan_buffers([((1,), "float32")], alignment=alignment)


def test_boundary_shapes_substitute_the_batch() -> None:
    assert cm.boundary_shapes([(1, 3, 32, 32), (1, 64, 8, 8), (-1, 10)], 16) == [(16, 3, 32, 32), (16, 64, 8, 8), (16, 10)]
    with pytest.raises(LegoCompileError):
        cm.boundary_shapes([(1, 3)], 0)


def test_load_device_api_without_bindings_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_cuda(name, *args, **kwargs):
        if name.split(".")[0] in ("cuda", "pycuda"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cuda)
    with pytest.raises(MissingDependencyError) as info:
        cm.load_device_api()
    assert "cuda-python or pycuda" in str(info.value) and "legocompile[tensorrt]" in str(info.value)


# ------------------------------------------------------------------------------------------- CUDA-graph rule
def test_graph_action_sequence_over_switches_and_batches() -> None:
    captured: dict = {}
    warmed: set = set()
    failed: set = set()
    log = []

    def call(engines: tuple, batch: int) -> str:
        key = (engines, batch)
        action = graph_action(key, captured, warmed, failed)
        if action == "warmup":
            warmed.add(key)
        elif action == "capture":
            captured[key] = object()
        log.append(action)
        return action

    a, b = ("s0/fp32", "s1/fp32"), ("s0/fp32", "s1/int8")
    assert [call(a, 1), call(a, 1), call(a, 1)] == ["warmup", "capture", "launch"]
    assert [call(b, 1), call(b, 1), call(b, 1)] == ["warmup", "capture", "launch"]  # a switch: recapture
    assert call(a, 1) == "launch"  # switching back replays the cached graph
    assert [call(a, 8), call(a, 8)] == ["warmup", "capture"]  # new batch size: new buffers, new graph
    failed.add((b, 8))
    assert call(b, 8) == "eager"


def test_needs_recapture() -> None:
    old = (("s0/fp32", "s1/fp32"), 1)
    assert not needs_recapture(old, ["s0/fp32", "s1/fp32"], 1)
    assert needs_recapture(old, ["s0/fp32", "s1/int8"], 1)
    assert needs_recapture(old, ["s0/fp32", "s1/fp32"], 4)
    assert needs_recapture(None, ["s0/fp32"], 1)


# --------------------------------------------------------------------------------------- builder pure helpers
def test_profile_shapes() -> None:
    assert profile_shapes([-1, 3, 32, 32], opt_batch=4, max_batch=64) == ((1, 3, 32, 32), (4, 3, 32, 32), (64, 3, 32, 32))
    assert profile_shapes([2, 3, 8, 8], opt_batch=1, max_batch=8) == ((2, 3, 8, 8),) * 3
    with pytest.raises(LegoCompileError, match="only the batch dimension"):
        profile_shapes([-1, 3, -1, 8], opt_batch=1, max_batch=8)
    with pytest.raises(LegoCompileError, match="opt_batch"):
        profile_shapes([-1, 3], opt_batch=9, max_batch=8)


def test_parse_errors_is_one_line() -> None:
    message = parse_errors(["In node 3 (Conv):\n  UNSUPPORTED_NODE: x", "second"], "b.onnx")
    assert message == "TensorRT could not parse b.onnx: In node 3 (Conv): UNSUPPORTED_NODE: x (+1 more)"
    assert "no parser message" in parse_errors([], "b.onnx")


def test_latency_and_memory_summaries() -> None:
    stats = summarize_ms([1.0, 2.0, 3.0, 4.0, 10.0], warmup=3)
    assert stats.median_ms == 3.0 and stats.p90_ms == pytest.approx(7.6) and stats.runs == 5 and stats.warmup == 3
    with pytest.raises(ValueError):
        summarize_ms([], warmup=0)
    memory = memory_from_free(free_before=10 << 20, free_after=4 << 20, scratch_bytes=1 << 20)
    assert (memory.device_bytes, memory.scratch_bytes, memory.weights_bytes) == (6 << 20, 1 << 20, 5 << 20)
    assert memory_from_free(1, 5, 3).device_bytes == 0  # another process freed memory meanwhile
    assert memory.to_json()["memory_bytes"] == 6 << 20


# ---------------------------------------------------------------------------------------- ONNX and calibration
def _block_onnx(path: Path, seed: int = 0) -> Path:
    """A shape-preserving residual block (Conv-Relu-Conv + x), dynamic batch, opset 17: chains with itself."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    b2 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "x"], ["y"], name="add"),
    ]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4, 8, 8])  # noqa: E731
    graph = helper.make_graph(
        nodes, "block", [io("x")], [io("y")],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from calibration.ranges import CalibrationSettings, compute_ranges

    root = tmp_path_factory.mktemp("trt_block")
    path = _block_onnx(root / "block.onnx")
    x = np.random.default_rng(1).standard_normal((64, 4, 8, 8)).astype(np.float32)
    ranges = compute_ranges(path, x, CalibrationSettings(num_samples=64))
    return {"path": path, "x": x, "ranges": ranges, "root": root}


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_fp32_onnx_is_the_exported_block(block: dict, tmp_path: Path) -> None:
    from legocompile.backends.tensorrt.onnx_prep import prepare_onnx

    assert prepare_onnx(block["path"], "fp32", tmp_path) == block["path"]
    assert list(tmp_path.iterdir()) == []


def test_fp16_onnx_has_fp16_weights_and_fp32_io(block: dict, tmp_path: Path) -> None:
    from legocompile.backends.tensorrt.onnx_prep import prepare_onnx

    out = prepare_onnx(block["path"], "fp16", tmp_path)
    model = onnx.load(str(out))
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = block["x"][:8]
    np.testing.assert_allclose(_ort(out, x), _ort(block["path"], x), atol=2e-2, rtol=2e-2)


def test_int8_qdq_onnx_is_symmetric_signed_int8_with_float_biases(block: dict, tmp_path: Path) -> None:
    from legocompile.backends.tensorrt.onnx_prep import prepare_onnx, tensorrt_qdq_problems

    out = prepare_onnx(block["path"], "int8-qdq", tmp_path, ranges=block["ranges"])
    model = onnx.load(str(out))
    assert tensorrt_qdq_problems(model) == []
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero_point).any()
    conv_biases = [inits[n.input[2]] for n in model.graph.node if n.op_type == "Conv" and n.input[2] in inits]
    assert conv_biases and all(t.data_type == TensorProto.FLOAT for t in conv_biases)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    x = block["x"][:16]
    fp32, int8 = _ort(block["path"], x), _ort(out, x)
    assert float(np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32)) < 0.05


def test_ort_backend_qdq_is_not_what_tensorrt_accepts(block: dict, tmp_path: Path) -> None:
    """Why the TensorRT path has its own QDQ flavour: the ONNX Runtime one has uint8 activations."""
    from calibration.qdq import quantize_qdq
    from legocompile.backends.tensorrt.onnx_prep import tensorrt_qdq_problems

    out = tmp_path / "ort.onnx"
    quantize_qdq(block["path"], out, block["ranges"])
    problems = tensorrt_qdq_problems(onnx.load(str(out)))
    assert problems and any("uint8" in p or "int32" in p for p in problems)


def test_int8_qdq_needs_ranges(block: dict, tmp_path: Path) -> None:
    from legocompile.backends.tensorrt.onnx_prep import prepare_onnx

    with pytest.raises(LegoCompileError, match="calibration ranges"):
        prepare_onnx(block["path"], "int8-qdq", tmp_path)
    with pytest.raises(LegoCompileError, match="unknown ONNX kind"):
        prepare_onnx(block["path"], "bf16", tmp_path)  # type: ignore[arg-type]


def test_calibration_cache_round_trip_through_the_calibrator_read_path(block: dict) -> None:
    from calibration.trt_cache import trt_scales

    for version in (V86, V1013):
        cache = cache_from_ranges(block["ranges"], version)
        assert cache.startswith(f"TRT-{v.calibration_cache_version(version)}-EntropyCalibration2\n".encode())
        core = CacheCalibratorCore(cache, v.calibration_cache_version(version), "block.cache")
        assert core.read_calibration_cache() == cache
        assert core.scales == trt_scales(block["ranges"])
        assert core.get_batch_size() == 1 and core.rejection_message() is None
        core.write_calibration_cache(cache)
        assert core.written == cache
        assert core.get_batch(["x"]) == []  # TensorRT asking for data means it rejected the cache
        assert "did not accept the calibration cache block.cache" in str(core.rejection_message())


def test_calibration_cache_header_checks(block: dict, tmp_path: Path) -> None:
    cache_86 = cache_from_ranges(block["ranges"], V86)
    message = cache_header_error(cache_86, "101300", "b.cache")
    assert message is not None and "8601" in message and "101300" in message and "trt_version='101300'" in message
    with pytest.raises(LegoCompileError, match="would ignore it"):
        CacheCalibratorCore(cache_86, "101300")
    minmax = cache_86.replace(b"EntropyCalibration2", b"MinMaxCalibration", 1)
    assert "MinMaxCalibration calibrator" in str(cache_header_error(minmax, "8601"))
    assert "not a TensorRT calibration cache" in str(cache_header_error(b"hello\n", "8601"))
    with pytest.raises(LegoCompileError, match=r"b.cache:2: expected"):
        CacheCalibratorCore(b"TRT-8601-EntropyCalibration2\nx: zz\n", "8601", "b.cache")
    with pytest.raises(LegoCompileError, match="not found"):
        CacheCalibratorCore.from_file(tmp_path / "missing.cache", "8601")
    (tmp_path / "ok.cache").write_bytes(cache_86)
    assert CacheCalibratorCore.from_file(tmp_path / "ok.cache", "8601").scales


# ---------------------------------------------------------------------------------------- imports and backend
def test_every_module_imports_in_a_fresh_interpreter_without_tensorrt() -> None:
    """No module of the folder imports TensorRT, CUDA bindings or torch at import time; TensorRTBackend() says what
    to install. TensorRT, cuda and pycuda are made unimportable, so this holds with or without them installed."""
    modules = sorted(f"legocompile.backends.tensorrt.{m.name}" for m in pkgutil.iter_modules([str(BACKEND_DIR)]))
    assert {"version", "build_plan", "builder", "engine_file", "runner", "cuda_memory", "calibrator", "backend",
            "onnx_prep", "profiling", "typecheck"} <= {m.rsplit(".", 1)[1] for m in modules}
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorrt", "cuda", "pycuda"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorrt", "cuda", "pycuda", "torch"))
        assert not heavy, heavy
        from legocompile.backends.tensorrt import TensorRTBackend
        from legocompile.errors import MissingDependencyError
        try:
            TensorRTBackend()
        except MissingDependencyError as error:
            print("MISSING:", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MISSING: tensorrt is required for the tensorrt backend but is not installed " \
           "(pip install 'legocompile[tensorrt]')" in result.stdout
    assert "not implemented" not in result.stdout


def test_no_module_level_gpu_imports() -> None:
    pattern = re.compile(r"^(import|from) (tensorrt|pycuda|cuda)\b", re.MULTILINE)
    for path in sorted(BACKEND_DIR.glob("*.py")):
        assert not pattern.search(path.read_text()), path.name


@pytest.mark.skipif(_real_tensorrt(), reason="TensorRT is installed here")
def test_backend_without_tensorrt_raises_missing_dependency() -> None:
    from legocompile.backends import get_backend

    for make in (trt_backend.TensorRTBackend, lambda: get_backend("tensorrt")):
        with pytest.raises(MissingDependencyError) as info:
            make()
        assert info.value.package == "tensorrt"
        assert "pip install 'legocompile[tensorrt]'" in str(info.value)
        assert "not implemented" not in str(info.value)
    assert trt_backend.TensorRTBackend.name == "tensorrt" and trt_backend.TensorRTBackend.engine_suffix == ".engine"


# ------------------------------------------------------------------------------------------------------- mypy
def test_stub_repair_fixes_only_what_does_not_parse() -> None:
    broken = (
        "class P:\n"
        "    def get_workspace_size(self, in: list[int], out: list[int]) -> int: ...\n"
        "    def add_scale_nd(self, input: int, shift: int = None, power: int = None, channel_axis: int) -> int: ...\n"
        "    def ok(self, a: int, *, b: int = 1, c: int) -> None: ...\n"
    )
    fixed, lines = typecheck.repair_stub_source(broken)
    assert lines == [2, 3]
    assert "in_: list[int]" in fixed and "channel_axis: int = ..." in fixed
    assert "def ok(self, a: int, *, b: int = 1, c: int) -> None: ..." in fixed
    good = "def f(a: int = 1, *, b: int) -> None: ...\n"
    assert typecheck.repair_stub_source(good) == (good, [])
    with pytest.raises(SyntaxError):
        typecheck.repair_stub_source("def f(:\n")


def test_builtin_bool_is_unshadowed_in_stub_annotations() -> None:
    source = (
        "from __future__ import annotations\n"
        "__all__ = ['bool', 'DataType']\n"
        "class DataType: ...\n"
        "class C:\n"
        "    flag: bool\n"
        "    def __bool__(self) -> bool: ...\n"
        "    def f(self, x: list[bool]) -> tuple[bool, int]: ...\n"
        "bool: DataType\n"
    )
    fixed, count = typecheck.unshadow_builtin_bool(source)
    assert count == 4
    assert fixed.splitlines()[:2] == ["from __future__ import annotations", "import builtins"]
    assert "__all__ = ['bool', 'DataType']" in fixed and "\nbool: DataType\n" in fixed
    assert "def __bool__(self) -> builtins.bool" in fixed and "list[builtins.bool]" in fixed
    compile(fixed, "stub.pyi", "exec")
    assert typecheck.unshadow_builtin_bool("x: bool\n") == ("x: bool\n", 0)


_mypy_ready = typecheck.mypy_installed() and typecheck.stubs_installed() is not None
needs_mypy = pytest.mark.skipif(
    not _mypy_ready,
    reason="needs mypy and tensorrt-stubs (pip install mypy && pip install --no-deps tensorrt-stubs==10.13.0.35.1)",
)


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mypy")
    return {"stubs": typecheck.prepare_stubs(root / "stubs"), "cache": root / "cache", "root": root}


@needs_mypy
def test_mypy_over_the_backend_against_the_tensorrt_stubs(mypy_env: dict) -> None:
    result = typecheck.run_mypy(stubs_dir=mypy_env["stubs"], cache_dir=mypy_env["cache"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
    checked = int(re.search(r"in (\d+) source files", result.stdout).group(1))  # type: ignore[union-attr]
    assert checked == len(list(BACKEND_DIR.glob("*.py")))


@needs_mypy
def test_mypy_sees_real_tensorrt_types_not_any(mypy_env: dict) -> None:
    """The check is not vacuous: misuses of TensorRT's API are reported through the same config and stubs."""
    probe = mypy_env["root"] / "probe.py"
    probe.write_text(textwrap.dedent(
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import tensorrt as trt

        def misuse(context: trt.IExecutionContext, config: trt.IBuilderConfig) -> None:
            context.execute_async_v3("not a stream handle")
            config.set_flag(trt.BuilderFlag.NOT_A_FLAG)
            reveal_type(context.set_tensor_address)
        """
    ))
    result = typecheck.run_mypy([str(probe)], stubs_dir=mypy_env["stubs"], cache_dir=mypy_env["cache"])
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'Argument 1 to "execute_async_v3" of "IExecutionContext" has incompatible type "str"; expected "int"' in out
    assert 'has no attribute "NOT_A_FLAG"' in out
    # a real bool, not the unbound `bool?` the stubs' own `bool: DataType` would make it (typecheck.py repairs that)
    assert 'Revealed type is "def (name: str, memory: int) -> bool"' in out


# ------------------------------------------------------------------------------------------ TensorRT on a GPU
@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_load_and_run_a_chain_on_the_gpu(block: dict, tmp_path: Path, precision: str) -> None:
    backend = trt_backend.TensorRTBackend(max_batch=16)
    out = tmp_path / f"b-{precision}.engine"
    backend.build(block["path"], precision, out, ranges=block["ranges"])
    header = ef.read_header(out)
    assert header.device == backend.resources().device and header.precision == precision
    engine = backend.load(out.read_bytes())
    chain = backend.chain([(1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)], batch=8)
    x = block["x"][:8]
    want = _ort(block["path"], _ort(block["path"], x))
    tolerance = {"fp32": 1e-2, "fp16": 3e-2, "int8": 0.1}[precision]  # fp32 may use TF32 on Ampere and later
    for _ in range(4):  # warm-up, capture, replay (graphs with cuda-python)
        got = chain.run([engine, engine], x)
        assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < tolerance
    chain.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@needs_gpu
def test_engine_from_another_device_is_refused_on_load(block: dict, tmp_path: Path) -> None:
    backend = trt_backend.TensorRTBackend()
    out = tmp_path / "b.engine"
    backend.build(block["path"], "fp32", out)
    header, plan = ef.unpack(out.read_bytes())
    elsewhere = dataclasses.replace(header, device=dataclasses.replace(header.device, compute_capability=(5, 3)))
    with pytest.raises(LegoCompileError, match="legocompile build --backend tensorrt"):
        backend.load(ef.pack(elsewhere, plan))


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@needs_gpu
def test_implicit_calibration_builds_where_tensorrt_has_calibrators(block: dict, tmp_path: Path) -> None:
    backend = trt_backend.TensorRTBackend(calibration="implicit")
    if not v.has_implicit_calibration(backend.version):
        with pytest.raises(LegoCompileError, match="calibration='qdq'"):
            backend.build(block["path"], "int8", tmp_path / "b.engine", ranges=block["ranges"])
        return
    backend.build(block["path"], "int8", tmp_path / "b.engine", ranges=block["ranges"])
    assert ef.read_header(tmp_path / "b.engine").build["needs_calibrator"] is True


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@needs_gpu
def test_gpu_latency_and_memory_profiles(block: dict, tmp_path: Path) -> None:
    from legocompile.backends.tensorrt.profiling import measure_latency, measure_memory

    backend = trt_backend.TensorRTBackend()
    out = tmp_path / "b.engine"
    backend.build(block["path"], "fp32", out)
    resources = backend.resources()
    src, dst = backend.allocate((1, 4, 8, 8)), backend.allocate((1, 4, 8, 8))

    def make_run():
        engine = backend.load(out)
        return engine.bind(src, dst), engine.scratch_bytes

    memory, run = measure_memory(make_run, resources.api, resources.stream)
    assert memory.device_bytes > 0
    stats = measure_latency(run, resources.api, resources.stream, warmup=5, runs=50)
    assert 0 < stats.median_ms <= stats.p90_ms
