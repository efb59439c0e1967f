"""End-to-end build on the tiny model: export bounds, int8 bounds, profiles, cache hits, the manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import legocompile
from legocompile.blocks import partition
from legocompile.bundle import SCHEMA_VERSION, Manifest, read_bundle
from legocompile.config import ProfileConfig
from legocompile.errors import LegoCompileError
from legocompile.pipeline import BuildReport


def test_bundle_layout_and_options(tiny_bundle):
    m = read_bundle(tiny_bundle["path"])
    assert m.schema_version == SCHEMA_VERSION == 2 and m.model == "tiny"
    assert len(m.blocks) == 4
    for b in m.blocks:
        assert [(o.variant, o.precision) for o in b.options] == [("s0", "fp32"), ("s0", "fp16"), ("s0", "int8")]
        for o in b.options:
            assert (tiny_bundle["path"] / o.engine).is_file()
            assert (tiny_bundle["path"] / o.onnx).is_file()
            onnx.checker.check_model(str(tiny_bundle["path"] / o.onnx))
    # consecutive blocks chain: block i's output is block i+1's input
    for a, b in zip(m.blocks, m.blocks[1:]):
        assert a.output.shape == b.input.shape


def test_export_error_is_tiny(tiny_bundle):
    m = read_bundle(tiny_bundle["path"])
    for b in m.blocks:
        for o in b.options:
            assert 0 <= o.export_max_abs_err < 1e-4, (b.name, o.export_max_abs_err)


def test_int8_and_fp16_error_bounds(tiny_bundle):
    """Per block, on real block inputs: fp16 within 1% and int8 within 15% of the block's output range."""
    m = read_bundle(tiny_bundle["path"])
    model, calib = tiny_bundle["model"], tiny_bundle["calib"]
    blocks = partition(model, torch.zeros(1, 1, 32, 32), "auto", max_blocks=4)
    h = torch.tensor(calib[:64])
    for b, entry in zip(blocks, m.blocks):
        with torch.no_grad():
            out = b.module(h)
        scale = float(out.abs().max())
        fp16 = entry.option("s0", "fp16").output_max_abs_err
        int8 = entry.option("s0", "int8").output_max_abs_err
        assert fp16 < 0.01 * scale, (entry.name, fp16, scale)
        assert int8 < 0.15 * scale, (entry.name, int8, scale)
        assert int8 > 0  # quantization really happened
        h = out


def test_every_engine_passed_or_failed_the_gate_on_record(tiny_bundle):
    """Each engine was compared with its fp32 ONNX on held-out inputs; excluded exactly when beyond tolerance."""
    m = read_bundle(tiny_bundle["path"])
    assert m.settings["int8"]["recipe"]["name"] in ("u8s8", "u8u8", "u8s8-reduce-range")
    for b in m.blocks:
        for o in b.options:
            g = o.accuracy_gate
            assert g["samples"] > 0 and g["tolerance"] == m.settings["tolerance"][o.precision]
            assert (o.excluded is not None) == (g["rel_l2"] > g["tolerance"] or g["export_relative_err"] > g["export_tolerance"])
        assert b.option("s0", "fp32").accuracy_gate["rel_l2"] < 1e-4
        assert b.option("s0", "fp16").accuracy_gate["rel_l2"] < 1e-2
        # with the CPU's recipe, no int8 block saturates: every one is selectable (u8s8 without VNNI failed this)
        assert b.option("s0", "int8").excluded is None, (b.name, b.option("s0", "int8").accuracy_gate)


def test_profiles_are_measured(tiny_bundle):
    m = read_bundle(tiny_bundle["path"])
    assert 0 < m.teacher["accuracy"] <= 1
    assert m.teacher["latency_ms"] > 0
    assert abs(m.teacher["accuracy"] - m.teacher["pytorch_accuracy"]) <= 1 / m.teacher["num_eval"] + 1e-9
    for b in m.blocks:
        for o in b.options:
            assert 0 < o.latency_ms <= o.latency_p90_ms
            assert o.memory_bytes > 0
            assert -1 <= o.accuracy_drop <= 1
        assert b.option("s0", "fp32").accuracy_drop == 0.0  # the reference chain itself


def test_accuracy_drop_matches_a_direct_measurement(tiny_bundle):
    """Replace one block's engine by its int8 engine in the fp32 chain, by hand, and compare with the profile."""
    from legocompile.backends.onnxrt import create_session
    from legocompile.profile import top1

    root = tiny_bundle["path"]
    m = read_bundle(root)
    ex, ey = tiny_bundle["eval"]
    k = 1
    h = ex
    for i, b in enumerate(m.blocks):
        o = b.option("s0", "int8" if i == k else "fp32")
        h = create_session(root / o.engine).run(["y"], {"x": h})[0]
    measured = m.teacher["accuracy"] - top1(h, ey)
    assert measured == pytest.approx(m.blocks[k].option("s0", "int8").accuracy_drop, abs=1e-12)


def test_rebuild_with_nothing_changed_builds_nothing(tiny_bundle, tmp_path):
    calib, eval_data = tiny_bundle["calib"], tiny_bundle["eval"]
    report = BuildReport(bundle=tmp_path / "b2")
    legocompile.compile(
        tiny_bundle["model"], np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=eval_data,
        out=tmp_path / "b2", work_dir=tiny_bundle["work"], precisions=("fp32", "fp16", "int8"), max_blocks=4,
        profile=ProfileConfig(warmup=3, runs=50), model_name="tiny", report=report,
    )
    assert report.built == {}
    assert report.cached["engine"] == 12 and report.cached["export"] == 4
    a = json.loads((tiny_bundle["path"] / "manifest.json").read_text())
    b = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    assert a["blocks"] == b["blocks"]


def test_changed_weights_rebuild_only_what_changed(tiny_bundle, tmp_path):
    """Perturb the last block only: the first blocks' exports stay cached."""
    import copy

    model = copy.deepcopy(tiny_bundle["model"])
    with torch.no_grad():
        model.fc.bias += 0.5
    report = BuildReport(bundle=tmp_path / "b3")
    legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=tiny_bundle["calib"],
        eval_data=tiny_bundle["eval"], out=tmp_path / "b3", work_dir=tiny_bundle["work"], precisions=("fp32",),
        max_blocks=4, profile=ProfileConfig(warmup=3, runs=50), report=report, until="engines",
    )
    assert report.built == {"export": 1, "engine": 1}
    assert report.cached["export"] == 3
    assert not (tmp_path / "b3").exists()  # stopping before the bundle writes none


def test_manifest_round_trip(tiny_bundle):
    m = read_bundle(tiny_bundle["path"])
    again = Manifest.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m


def test_compile_leaves_the_model_alone(tiny_model, digits_small, tmp_path):
    model = tiny_model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        legocompile.compile(
            model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=digits_small[0][:16],
            eval_data=(digits_small[1][0][:16], digits_small[1][1][:16]), out=tmp_path / "b", work_dir=tmp_path / "w",
            precisions=("fp32",), max_blocks=2, profile=ProfileConfig(warmup=1, runs=50), until="export",
        )
        assert model.training
        assert all(m.training for m in model.modules())
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    finally:
        model.eval()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precisions": ("fp64",)}, "unknown precision 'fp64'"),
        ({"calibration_data": np.zeros((4, 1, 32, 32), np.int64)}, "calibration_data must be a float array"),
        ({"eval_data": (np.zeros((4, 1, 32, 32), np.float32), np.zeros(3))}, "4 inputs but 3 labels"),
        ({"blocks": ["nonexistent"]}, "nonexistent"),
        ({"until": "deploy"}, "unknown stage 'deploy'"),
    ],
)
def test_bad_input_gives_clear_errors(tiny_model, digits_small, tmp_path, kwargs, message):
    args = dict(
        calibration_data=digits_small[0][:8], eval_data=(digits_small[1][0][:8], digits_small[1][1][:8]),
        out=tmp_path / "b", work_dir=tmp_path / "w", precisions=("fp32",), until="export",
    )
    args.update(kwargs)
    with pytest.raises(LegoCompileError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        legocompile.compile(tiny_model, np.zeros((1, 1, 32, 32), np.float32), **args)
    assert "\n" not in str(e.value)
