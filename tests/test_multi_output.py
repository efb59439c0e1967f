"""Models whose forward returns several tensors (detection and pose heads): the last block carries the tuple.

The model is ``zoo.TwoHeadNet`` fitted briefly to real targets from the digits: the class, the bounding box of the
ink (normalised to [0, 1]) and an 8x8 ink heatmap. Its metric is this file's :func:`detection_score`, passed to
``compile`` as a function. Everything is compared with PyTorch, with the ONNX Runtime engines run by hand, or with
brute force.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo

import legocompile
from legocompile.blocks import partition, verify_partition
from legocompile.bundle import read_bundle
from legocompile.config import ProfileConfig
from legocompile.errors import LegoCompileError
from legocompile.outputs import as_outputs
from legocompile.runtime import Runtime

NUM_OUTPUTS = 3


def ink_targets(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the ink's bounding box ``(x0, y0, x1, y1)`` in [0, 1] and the ink averaged over 4x4 cells."""
    img = x[:, 0]
    ink = img > img.reshape(len(img), -1).min(axis=1)[:, None, None] + 0.5 * np.ptp(img.reshape(len(img), -1), axis=1)[:, None, None]
    h, w = img.shape[1:]
    boxes = np.zeros((len(img), 4), np.float32)
    for k, m in enumerate(ink):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[k] = (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)
    heat = ink.reshape(len(img), 1, h // 4, 4, w // 4, 4).mean(axis=(3, 5)).astype(np.float32)
    return boxes, heat


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda r: np.prod(np.clip(r[:, 2:] - r[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def detection_score(outputs, labels) -> float:
    """Fraction of images whose class is right and whose box overlaps the ink's with IoU >= 0.5.

    labels: ``(N, 5)``: the class id, then the box."""
    logits, boxes, _heat = outputs
    labels = np.asarray(labels)
    right = np.argmax(logits, axis=1) == labels[:, 0].astype(np.int64)
    return float(np.mean(right & (box_iou(boxes, labels[:, 1:]) >= 0.5)))


@pytest.fixture(scope="module")
def detector():
    """TwoHeadNet after 3 epochs on the digits' training split (class CE + box MSE + heatmap MSE)."""
    from legocompile.examples.digits import load_splits

    s = load_splits()
    torch.manual_seed(0)
    model = zoo.TwoHeadNet()
    x = torch.tensor(s.x_train)
    boxes, heat = (torch.tensor(a) for a in ink_targets(s.x_train))
    y = torch.tensor(s.y_train).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            logits, box, hm = model(x[idx])
            loss = F.cross_entropy(logits, y[idx]) + 10 * F.mse_loss(box, boxes[idx]) + F.mse_loss(hm, heat[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ex = np.array(s.x_test[:240])  # a writable copy
    eb, _ = ink_targets(ex)
    labels = np.concatenate([s.y_test[:240, None].astype(np.float32), eb], axis=1)
    return {"model": model, "calib": np.ascontiguousarray(s.x_train[:128]), "eval": (ex, labels)}


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory, detector):
    root = tmp_path_factory.mktemp("multi")
    path = legocompile.compile(
        detector["model"], np.zeros((1, 1, 32, 32), np.float32), calibration_data=detector["calib"],
        eval_data=detector["eval"], out=root / "bundle", work_dir=root / "work", precisions=("fp32", "int8"),
        sparsities=(0.5,), max_blocks=3, profile=ProfileConfig(warmup=3, runs=30), model_name="twohead",
        metric=detection_score,
    )
    return path


# ------------------------------------------------------------------------------------------------ partition
def test_the_last_block_returns_the_models_tuple():
    model = zoo.randomize_bn(zoo.TwoHeadNet()).eval()
    x = torch.randn(1, 1, 32, 32)
    blocks = partition(model, x)
    assert len(blocks) > 2
    assert all(b.num_outputs == 1 for b in blocks[:-1])
    with torch.no_grad():
        expected = model(x)
    assert blocks[-1].output_shapes == tuple(tuple(t.shape) for t in expected)
    assert verify_partition(model, blocks, torch.randn(5, 1, 32, 32)) < 1e-5
    y = torch.randn(3, *blocks[-1].input_shape[1:])
    assert isinstance(blocks[-1].module(y), tuple) and len(blocks[-1].module(y)) == NUM_OUTPUTS


def test_a_cut_that_would_carry_two_tensors_is_refused_and_says_so():
    model, x = zoo.EarlyOutputNet().eval(), torch.randn(1, 1, 32, 32)
    with pytest.raises(LegoCompileError, match=r"cannot cut after 'b' .*2 tensors cross the cut .*carries exactly one "
                                                 r"tensor \(only the model's own output may be several\)"):
        partition(model, x, ["a", "b", "c"])
    blocks = partition(model, x)  # auto: no cut where the early output is still pending
    assert verify_partition(model, blocks, torch.randn(4, 1, 32, 32)) < 1e-5
    assert blocks[-1].num_outputs == 2


@pytest.mark.parametrize("model_cls", [zoo.DictOutputNet])
def test_outputs_other_than_a_flat_tuple_are_refused(model_cls):
    with pytest.raises(LegoCompileError, match=r"forward\(\) is a dict, not a tensor .*flat tuple of tensors"):
        partition(model_cls(), torch.randn(1, 1, 32, 32))


def test_pruning_the_last_block_keeps_every_output_shape():
    from legocompile.variants import prune_block

    model = zoo.randomize_bn(zoo.TwoHeadNet()).eval()
    x = torch.randn(2, 1, 32, 32)
    last = partition(model, x[:1], max_blocks=3)[-1]  # the last block: mid's conv and the three heads
    h = torch.randn(2, *last.input_shape[1:])
    pruned = prune_block(last.module, h, 0.5)
    with torch.no_grad():
        want, got = as_outputs(last.module(h)), as_outputs(pruned.module(h))
    assert [t.shape for t in got] == [t.shape for t in want]
    assert pruned.report.params_after < pruned.report.params_before


def test_retraining_fits_every_output_of_the_last_block(detector):
    """The student's loss counts each output's MSE: retraining must reduce it on every output, not only one."""
    from legocompile.examples.digits import load_splits
    from legocompile.variants import prune_block
    from legocompile.variants.retrain import RetrainSettings, retrain_variants

    model = detector["model"]
    x = np.array(load_splits().x_train[:512])
    blocks = partition(model, torch.from_numpy(x[:1]), max_blocks=3)
    teacher = [b.module for b in blocks]
    k = len(blocks) - 1
    student = prune_block(teacher[k], torch.randn(2, *blocks[k].input_shape[1:]), 0.5).module
    h = torch.from_numpy(x)
    with torch.no_grad():
        for b in teacher[:-1]:
            h = b(h)
        want = as_outputs(teacher[-1](h))
        before = [F.mse_loss(o, t).item() for o, t in zip(as_outputs(student(h)), want)]
    result = retrain_variants(teacher, {(k, "s0.5"): student}, x,
                              RetrainSettings(epochs=6, patience=6, batch_size=64))[(k, "s0.5")]
    with torch.no_grad():
        after = [F.mse_loss(o, t).item() for o, t in zip(as_outputs(student(h)), want)]
    assert result.best_val_mse < result.initial_val_mse
    assert all(a < b for a, b in zip(after, before)), (before, after)


# ------------------------------------------------------------------------------------------------ the bundle
def test_manifest_lists_every_output_of_the_last_block_only(det_bundle):
    m = read_bundle(det_bundle)
    assert all(not b.extra_outputs for b in m.blocks[:-1])
    last = m.blocks[-1]
    assert [t.name for t in last.outputs] == ["y", "y1", "y2"]
    assert [tuple(t.shape) for t in last.outputs] == [(1, 10), (1, 4), (1, 1, 8, 8)]
    doc = json.loads((det_bundle / "manifest.json").read_text())
    assert all("extra_outputs" not in b for b in doc["blocks"][:-1])  # single-output blocks read as before
    from legocompile.inspect import summary

    assert summary(m)["blocks"][-1]["output_shapes"] == [[1, 10], [1, 4], [1, 1, 8, 8]]


def test_runtime_returns_the_tuple_and_matches_pytorch(det_bundle, detector):
    ex, _ = detector["eval"]
    rt = Runtime.load(det_bundle)
    got = rt(ex[:7])
    with torch.no_grad():
        want = [t.numpy() for t in detector["model"](torch.from_numpy(ex[:7]))]
    assert isinstance(got, tuple) and len(got) == NUM_OUTPUTS
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.max(np.abs(g - w)) <= 1e-4 * max(1.0, np.max(np.abs(w)))
    full = rt.predict(ex, batch_size=100)  # batches of 100, 100, 40 joined per output
    assert [a.shape[0] for a in full] == [len(ex)] * NUM_OUTPUTS
    assert np.array_equal(full[1][:7], rt(ex[:7])[1])


def test_int8_selection_stays_close_on_every_output(det_bundle, detector):
    """The all-int8 chain against the fp32 one, output by output: each block passed the int8 gate, so to first order
    the chain's error is at most the sum of their tolerances (a swapped or unbound output would be off by ~100%)."""
    from legocompile.config import Tolerances

    ex, _ = detector["eval"]
    rt = Runtime.load(det_bundle)
    ref = rt(ex)
    n = len(rt.manifest.blocks)
    rt.select(selection=[("s0", "int8")] * n)
    for g, r in zip(rt(ex), ref, strict=True):
        assert 0 < np.linalg.norm(g - r) / np.linalg.norm(r) < n * Tolerances().int8


def test_accuracy_drops_are_the_custom_metric_measured_by_hand(det_bundle, detector):
    """Chain the engines with plain ORT sessions, the last one returning all three outputs, and score them."""
    from legocompile.backends.onnxrt import create_session

    ex, labels = detector["eval"]
    m = read_bundle(det_bundle)
    assert m.teacher["metric"].endswith(":detection_score")

    def chain(k, variant, precision):
        h = ex
        for i, b in enumerate(m.blocks):
            o = b.option(variant, precision) if i == k else b.option("s0", "fp32")
            sess = create_session(det_bundle / o.engine)
            h = sess.run([out.name for out in sess.get_outputs()], {"x": h})
            h = h[0] if len(h) == 1 else tuple(h)
        return h

    teacher = detection_score(chain(0, "s0", "fp32"), labels)
    assert m.teacher["accuracy"] == pytest.approx(teacher, abs=1e-12)
    assert teacher >= 0.3  # the fitted detector finds most digits and their boxes
    last = len(m.blocks) - 1
    for variant, precision in (("s0", "int8"), ("s0.5", "fp32"), ("s0.5", "int8")):
        measured = teacher - detection_score(chain(last, variant, precision), labels)
        assert measured == pytest.approx(m.blocks[last].option(variant, precision).accuracy_drop, abs=1e-12)


def test_profiles_exist_for_the_last_blocks_engines(det_bundle):
    last = read_bundle(det_bundle).blocks[-1]
    for o in last.options:
        assert o.latency_ms > 0 and o.memory_bytes > 0
        assert o.accuracy_gate["rel_l2"] <= o.accuracy_gate["tolerance"] or o.excluded


def test_a_builtin_metric_on_several_outputs_is_one_clear_line(detector, tmp_path):
    with pytest.raises(LegoCompileError, match=r"^top1 needs one output array but the model returns 3; name your own "
                                               r"metric"):
        legocompile.compile(detector["model"], np.zeros((1, 1, 32, 32), np.float32),
                            calibration_data=detector["calib"], eval_data=detector["eval"], out=tmp_path / "b",
                            work_dir=tmp_path / "w", precisions=("fp32",), max_blocks=3, metric="top1")


def test_binding_the_wrong_number_of_output_buffers_is_refused(det_bundle):
    from legocompile.backends import get_backend

    be = get_backend("onnxruntime")
    last = read_bundle(det_bundle).blocks[-1]
    engine = be.load(det_bundle / last.option("s0", "fp32").engine)
    src = be.allocate((1, *last.input.shape[1:]))
    with pytest.raises(LegoCompileError, match="the engine has 3 outputs but 1 buffer was bound"):
        engine.bind(src, be.allocate((1, 10)))
    dsts = [be.allocate((1, *t.shape[1:])) for t in last.outputs]
    engine.bind(src, dsts)()
    assert np.allclose(dsts[2].numpy(), engine.run(src.numpy())[2])


def test_reference_backend_runs_the_last_block_like_onnx_runtime(det_bundle, detector):
    from legocompile.backends import get_backend

    m = read_bundle(det_bundle)
    h = detector["eval"][0][:16]
    ort = get_backend("onnxruntime")
    for b in m.blocks[:-1]:
        h = ort.load(det_bundle / b.option("s0", "fp32").engine).run(h)
    onnx_path = det_bundle / m.blocks[-1].option("s0", "fp32").onnx
    want = ort.load(onnx_path).run(h)
    got = get_backend("reference").load(onnx_path).run(h)
    assert len(got) == len(want) == NUM_OUTPUTS
    for g, w in zip(got, want):
        assert np.max(np.abs(g - w)) <= 1e-5 * max(1.0, np.max(np.abs(w)))


def test_the_cpp_runtime_returns_every_output_like_python(det_bundle, detector):
    """lc_run_outputs fills one buffer per output, equal to the Python Runtime's for the same selections; lc_run,
    which has room for one output, refuses such a bundle in one line."""
    import ctypes

    from legocompile.runtime import cpp_runtime

    missing = cpp_runtime.missing_toolchain()
    if missing is not None:
        pytest.skip(f"C++ runtime not buildable here: {missing}")
    cpp_runtime.build()
    x = detector["eval"][0][:9]
    py, cpp = Runtime.load(det_bundle), Runtime.load(det_bundle, impl="cpp")
    n = len(py.manifest.blocks)
    # a block that pruning leaves whole offers no s0.5 (it would repeat s0): the mixed selection keeps s0 there
    pruned = ["s0.5" if any(o.variant == "s0.5" for o in b.options) else "s0" for b in py.manifest.blocks]
    mixed = [(v, "int8") for v in pruned[:-1]] + [(pruned[-1], "fp32")]
    assert pruned[-1] == "s0.5" and pruned.count("s0.5") >= 2
    for selection in ([("s0", "fp32")] * n, [("s0", "int8")] * n, mixed):
        py.select(selection=selection)
        cpp.select(selection=selection)
        got, want = cpp(x), py(x)
        assert isinstance(got, tuple) and len(got) == NUM_OUTPUTS
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert [a.shape for a in cpp.predict(detector["eval"][0], batch_size=100)] == \
           [a.shape for a in py.predict(detector["eval"][0])]
    lib = cpp_runtime.library()
    out = np.empty((len(x), 10), np.float32)
    status = lib.lc_run(cpp._handle(), np.ascontiguousarray(x).ctypes.data, len(x), out.ctypes.data)
    assert status != 0
    assert lib.lc_last_error().decode() == ("this bundle's model returns 3 outputs; run it with lc_run_outputs "
                                            "(Runtime::run_outputs), one buffer per output")
    count = ctypes.c_size_t()
    assert lib.lc_num_outputs(cpp._handle(), ctypes.byref(count)) == 0 and count.value == NUM_OUTPUTS
    cpp.close()


def test_the_device_suite_composes_and_checks_the_whole_model(det_bundle, detector):
    """The Jetson suite's whole-model ONNX keeps every output, and equals the chain."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "jetson"))
    from jetsonbench.static import compose_whole_onnx

    from legocompile.backends import get_backend

    m = read_bundle(det_bundle)
    whole = get_backend("onnxruntime").load(compose_whole_onnx(m, det_bundle))
    x = detector["eval"][0][:5]
    got, want = whole.run(x), Runtime.load(det_bundle)(x)
    assert len(got) == NUM_OUTPUTS
    for g, w in zip(got, want):
        assert np.max(np.abs(g - w)) <= 1e-5 * max(1.0, np.max(np.abs(w)))


def test_retarget_keeps_every_output_and_the_measured_drops(det_bundle, detector, tmp_path):
    """Retargeting re-profiles the engines without evaluating the project's metric (a bundle names no code to
    import): the drops are the source's, the outputs are all there."""
    from legocompile.retarget import retarget

    out = retarget(det_bundle, tmp_path / "device", work_dir=tmp_path / "work")
    src, dst = read_bundle(det_bundle), read_bundle(out)
    assert [t.shape for t in dst.outputs] == [t.shape for t in src.outputs]
    for a, b in zip(src.blocks, dst.blocks):
        assert [o.accuracy_drop for o in a.options] == [o.accuracy_drop for o in b.options]
        assert all(o.latency_ms > 0 for o in b.options)
    x = detector["eval"][0][:3]
    for g, w in zip(Runtime.load(out)(x), Runtime.load(det_bundle)(x)):
        assert np.array_equal(g, w)


def test_the_example_cpp_app_prints_every_output(det_bundle, detector, tmp_path):
    """examples/lc_run.cpp, built against the installed package, runs a three-output bundle through
    Runtime::run_outputs and prints one checksum per output, equal to the Python Runtime's outputs."""
    import shutil

    from legocompile.runtime import cpp_runtime

    missing = cpp_runtime.missing_toolchain()
    if missing is not None:
        pytest.skip(f"C++ runtime not buildable here: {missing}")
    import re
    import subprocess

    def run(cmd):
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    cmake, build = shutil.which("cmake"), cpp_runtime.build()
    run([cmake, "--install", build, "--prefix", tmp_path / "prefix"])
    run([cmake, "-S", cpp_runtime.CPP_DIR / "examples", "-B", tmp_path / "ex", f"-DCMAKE_PREFIX_PATH={tmp_path / 'prefix'}",
         "-DCMAKE_BUILD_TYPE=Release"])
    run([cmake, "--build", tmp_path / "ex", "--parallel", "2"])
    x = np.array(detector["eval"][0][:4])
    np.save(tmp_path / "x.npy", x)
    out = run([tmp_path / "ex" / "lc_run", det_bundle, "--input", tmp_path / "x.npy", "-n", 5])
    found = re.findall(r"^output(?: (\d))?: elements=(\d+) sum=\S+ fnv1a64=([0-9a-f]{16})$", out, re.M)
    want = Runtime.load(det_bundle)(x)
    assert [int(k or 0) for k, _, _ in found] == list(range(NUM_OUTPUTS)), out
    for (_, elements, fnv), y in zip(found, want):
        h = 1469598103934665603
        for byte in np.ascontiguousarray(y, np.float32).tobytes():
            h = ((h ^ byte) * 1099511628211) % 2**64
        assert int(elements) == y.size and fnv == f"{h:016x}"
