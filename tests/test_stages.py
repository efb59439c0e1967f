"""Stages with declared inputs: keys derive from what a stage declares, and a change rebuilds exactly its dependents."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

import legocompile
from legocompile.bundle import read_bundle
from legocompile.config import ProfileConfig, Tolerances
from legocompile.pipeline import BuildReport, module_digest
from legocompile.stage import Stage, digest


# ---------------------------------------------------------------------------------------------------- Stage / digest
def test_stage_key_requires_exactly_the_declared_inputs():
    s = Stage("demo", inputs=("a", "b"))
    with pytest.raises(TypeError, match="missing inputs \\['b'\\]"):
        s.key(a=1)
    with pytest.raises(TypeError, match="undeclared inputs \\['c'\\]"):
        s.key(a=1, b=2, c=3)
    assert s.key(a=1, b=2) == s.key(b=2, a=1)
    assert s.key(a=1, b=2) != s.key(a=2, b=1)
    assert s.key(a=1, b=2) != Stage("demo", inputs=("a", "b"), format=2).key(a=1, b=2)
    assert s.key(a=1, b=2) != Stage("other", inputs=("a", "b")).key(a=1, b=2)


def test_stage_key_includes_tool_versions(monkeypatch):
    from legocompile import stage

    s = Stage("demo", inputs=("a",), tools=("onnx",))
    before = s.key(a=1)
    monkeypatch.setitem(stage._TOOLS, "legocompile", "999.0")
    assert s.key(a=1) != before
    monkeypatch.undo()
    monkeypatch.setitem(stage._TOOLS, "onnx", "0.0.1")
    assert s.key(a=1) != before


def test_digest_sees_dtype_shape_bytes_and_nesting():
    a = np.arange(6, dtype=np.float32)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.astype(np.float64))
    assert digest(a) != digest(a.reshape(2, 3))
    b = a.copy()
    b[3] += 1e-6
    assert digest(a) != digest(b)
    assert digest([a, 1]) != digest([a, 2])
    assert digest({"x": [a]}) != digest({"x": [b]})
    assert digest([[1, 2], 3]) != digest([1, [2, 3]])


def _net(**kw):
    act = kw.get("act", torch.nn.ReLU)
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=kw.get("stride", 1), padding=kw.get("padding", 1)),
        torch.nn.BatchNorm2d(4, eps=kw.get("eps", 1e-5)), act(),
    )


@pytest.mark.parametrize("change", [{"stride": 2}, {"padding": 0}, {"eps": 1e-3}, {"act": torch.nn.ReLU6}])
def test_module_digest_sees_hyperparameters_that_are_not_weights(change):
    assert module_digest(_net(), (1, 1, 8, 8)) != module_digest(_net(**change), (1, 1, 8, 8))
    assert module_digest(_net(), (1, 1, 8, 8)) == module_digest(_net(), (1, 1, 8, 8))


def test_retraining_key_depends_on_the_upstream_blocks():
    from legocompile.variants.stage import RETRAIN

    base = dict(derived="d", upstream=["b0"], train_inputs="t", settings="s")
    assert RETRAIN.key(**base) != RETRAIN.key(**(base | {"upstream": ["b0-changed"]}))


# ---------------------------------------------------------------------------------------------------- rebuilds
N_BLOCKS = 2


@pytest.fixture(scope="module")
def base_build(tmp_path_factory, tiny_model, digits_small):
    """A 2-block fp32+int8 build whose work dir each test copies, then rebuilds with one input changed."""
    root = tmp_path_factory.mktemp("stages")
    calib, (ex, ey) = digits_small
    report = _build(tiny_model, calib, ex, ey, root)
    return {"root": root, "model": tiny_model, "calib": calib, "ex": ex, "ey": ey, "report": report}


def _build(model, calib, ex, ey, root, **kw):
    report = BuildReport(bundle=root / "bundle")
    legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=(ex, ey),
        out=root / "bundle", work_dir=root / "work", precisions=("fp32", "int8"), max_blocks=N_BLOCKS,
        **({"profile": ProfileConfig(warmup=3, runs=50)} | kw), additivity_samples=0, report=report,
    )
    return report


def _rebuild(base, tmp_path, **changes):
    shutil.copytree(base["root"] / "work", tmp_path / "work")
    args = {k: base[k] for k in ("model", "calib", "ex", "ey")} | changes
    return _build(args.pop("model"), args.pop("calib"), args.pop("ex"), args.pop("ey"), tmp_path, **args)


def test_first_build_builds_every_stage(base_build):
    r = base_build["report"]
    assert r.built == {"export": 2, "calibrate": 2, "engine": 4, "gate": 4, "profile": 4}
    assert r.cached == {}


def test_nothing_changed_builds_nothing(base_build, tmp_path):
    r = _rebuild(base_build, tmp_path)
    assert r.built == {}
    assert r.cached == {"export": 2, "calibrate": 2, "engine": 4, "gate": 4, "profile": 4}


def test_eval_inputs_rebuild_gate_and_profiles_only(base_build, tmp_path):
    ex = base_build["ex"].copy()
    ex[:, :, :4, :4] = 0.0  # the same labels, different images
    r = _rebuild(base_build, tmp_path, ex=ex)
    assert r.built == {"gate": 4, "profile": 4}


def test_eval_labels_rebuild_profiles_only(base_build, tmp_path):
    ey = np.roll(base_build["ey"], 1)
    r = _rebuild(base_build, tmp_path, ey=ey)
    assert r.built == {"profile": 4}


def test_calibration_data_rebuilds_calibration_and_int8_only(base_build, tmp_path):
    calib = base_build["calib"][::-1].copy()[:100]
    r = _rebuild(base_build, tmp_path, calib=calib)
    # export's check against PyTorch runs on calibration inputs, so its record is rebuilt (the ONNX is identical)
    assert r.built == {"export": 2, "calibrate": 2, "engine": 2, "gate": 2, "profile": 2}
    assert r.cached == {"engine": 2, "gate": 2, "profile": 2}


def test_int8_recipe_rebuilds_int8_engines_only(base_build, tmp_path):
    from calibration.recipe import host_recipe

    other = "u8s8-reduce-range" if host_recipe()[0].name != "u8s8-reduce-range" else "u8u8"
    r = _rebuild(base_build, tmp_path, int8_format=other)
    assert r.built == {"engine": 2, "gate": 2, "profile": 2}
    m = read_bundle(tmp_path / "bundle")
    assert m.settings["int8"]["recipe"]["name"] == other


def test_legocompile_version_rebuilds_everything(base_build, tmp_path, monkeypatch):
    from legocompile import stage

    monkeypatch.setitem(stage._TOOLS, "legocompile", "999.0")
    r = _rebuild(base_build, tmp_path)
    assert r.built == {"export": 2, "calibrate": 2, "engine": 4, "gate": 4, "profile": 4}


def test_hyperparameter_of_the_last_block_rebuilds_that_block_and_dependent_profiles(base_build, tmp_path):
    model = copy.deepcopy(base_build["model"])
    last_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    last_bn.eps = 1e-2  # no weight changes
    r = _rebuild(base_build, tmp_path, model=model)
    # every drop is relative to the teacher chain, and every timing runs inside a chain of originals: all 4 redo
    assert r.built == {"export": 1, "calibrate": 1, "engine": 2, "gate": 2, "profile": 4}


def test_tolerances_change_the_decision_without_rebuilding(base_build, tmp_path):
    r = _rebuild(base_build, tmp_path, tolerance=Tolerances(int8=1e-9))
    assert r.built == {}
    m = read_bundle(tmp_path / "bundle")
    for b in m.blocks:
        assert b.option("s0", "int8").excluded and "int8 error" in b.option("s0", "int8").excluded
        assert b.option("s0", "fp32").excluded is None
    assert len(r.excluded) == N_BLOCKS


def test_retraining_rebuilds_when_an_upstream_block_changes(tiny_model, digits_small, tmp_path):
    from legocompile.variants.retrain import RetrainSettings

    calib, (ex, ey) = digits_small
    kw = dict(sparsities=(0.0, 0.5), retrain=RetrainSettings(epochs=1), until="retrain")
    _build(tiny_model, calib, ex, ey, tmp_path, **kw)
    model = copy.deepcopy(tiny_model)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.mul_(1.01)  # block 0 changes; block 1's student sees different inputs
    r = _build(model, calib, ex, ey, tmp_path, **kw)
    assert r.built == {"derive": 1, "retrain": 2}  # block 0 re-derived; both students retrained
    assert r.cached == {"derive": 1}


def test_channel_multiple_rederives_and_retrains(tiny_model, digits_small, tmp_path):
    from legocompile.variants.retrain import RetrainSettings

    calib, (ex, ey) = digits_small
    kw = dict(sparsities=(0.0, 0.5), retrain=RetrainSettings(epochs=1), until="retrain")
    _build(tiny_model, calib, ex, ey, tmp_path, **kw)
    r = _build(tiny_model, calib, ex, ey, tmp_path, channel_multiple=16, **kw)
    assert r.built == {"derive": 2, "retrain": 2} and r.cached == {}
    r = _build(tiny_model, calib, ex, ey, tmp_path, **kw)  # back to the default: everything is in the cache
    assert r.built == {} and r.cached == {"derive": 2, "retrain": 2}


def _top2(outputs, labels):
    """A custom metric for the test: the label is among the two highest scores."""
    best = np.argsort(outputs, axis=1)[:, -2:]
    return float(np.mean((best == np.asarray(labels).reshape(-1, 1)).any(axis=1)))


def test_metric_reprofiles_exactly_the_accuracy_stages(base_build, tmp_path):
    def count(stage):
        return len(list((tmp_path / "work" / stage).glob("*.json")))

    shutil.copytree(base_build["root"] / "work", tmp_path / "work")
    accuracy, timing = count("accuracy"), count("timing")
    args = {k: base_build[k] for k in ("model", "calib", "ex", "ey")}
    r = _build(args["model"], args["calib"], args["ex"], args["ey"], tmp_path, metric=_top2)
    assert r.built == {"profile": 4}  # one counter for an engine's accuracy and timing: see the folders below
    assert count("accuracy") == accuracy + 4 and count("timing") == timing  # timings all came from the cache
    m = read_bundle(tmp_path / "bundle")
    assert m.teacher["metric"].endswith(":_top2")
    assert m.teacher["accuracy"] >= read_bundle(base_build["root"] / "bundle").teacher["accuracy"]  # top-2 >= top-1


def test_excluded_engines_are_never_selected(base_build, tmp_path):
    from legocompile.optimize.select import select_options

    _rebuild(base_build, tmp_path, tolerance=Tolerances(int8=1e-9))
    m = read_bundle(tmp_path / "bundle")
    for budget in (None, 1e-3, 1e6):
        try:
            sel = select_options(m, latency_ms=budget)
        except legocompile.errors.LegoCompileError:
            continue  # an infeasible tiny budget: fp32 alone cannot meet it, and int8 is not on offer
        assert all(o.excluded is None and o.precision == "fp32" for o in sel.options)


# ---------------------------------------------------------------------------------------------------- gate decisions
def test_gate_decision_compares_each_precision_with_its_tolerance():
    from legocompile.pipeline import gate_decision

    t = Tolerances(export=1e-3, fp32=1e-3, fp16=1e-2, int8=0.05)
    assert gate_decision(0.049, "int8", 1e-5, t) is None
    assert "int8 error 5.10%" in gate_decision(0.051, "int8", 1e-5, t)
    assert gate_decision(0.009, "fp16", 0.0, t) is None
    assert "fp16 error" in gate_decision(0.02, "fp16", 0.0, t)
    assert "export error" in gate_decision(0.0, "fp32", 2e-3, t)
    assert gate_decision(float("nan"), "int8", 0.0, t) is not None  # a NaN engine never passes


def test_the_fp32_chain_must_match_pytorch_within_one_sample():
    from legocompile.errors import LegoCompileError
    from legocompile.pipeline import _check_reference_chain

    _check_reference_chain({"accuracy": 0.95, "num_eval": 100}, 0.96)  # one sample apart: fine
    with pytest.raises(LegoCompileError, match="differs from PyTorch's 97.00% by more than one of the 100"):
        _check_reference_chain({"accuracy": 0.95, "num_eval": 100}, 0.97)


def test_frame_gap_rebuilds_profiles_only_and_is_recorded(base_build, tmp_path):
    from legocompile.bundle import read_bundle

    r = _rebuild(base_build, tmp_path, profile=ProfileConfig(warmup=3, runs=50, frame_gap_ms=1.0))
    assert r.built == {"profile": 4}
    assert read_bundle(tmp_path / "bundle").settings["profile"]["frame_gap_ms"] == 1.0
    assert "frame_gap_ms" not in read_bundle(base_build["root"] / "bundle").settings["profile"]
