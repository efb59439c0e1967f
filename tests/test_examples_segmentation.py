"""The segmentation example: labels against a brute-force mask rule, the shipped weights against their training record,
the partitioner's cut points, and a reduced ``legocompile build --example segmentation`` whose bundle runs like
PyTorch and reports mIoU."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from legocompile.examples import segmentation as seg
from legocompile.profile.accuracy import miou


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine; tiny tensors gain nothing from more
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped():
    return seg.load_model()


def _bilinear_2x(img: np.ndarray) -> np.ndarray:
    """Brute-force bilinear up-sampling by 2 with align_corners=False (source = (dst + 0.5) / 2 - 0.5, clamped)."""
    n = img.shape[0]
    out = np.zeros((2 * n, 2 * n))
    for i in range(2 * n):
        for j in range(2 * n):
            si, sj = max((i + 0.5) / 2 - 0.5, 0.0), max((j + 0.5) / 2 - 0.5, 0.0)
            i0, j0 = int(np.floor(si)), int(np.floor(sj))
            i1, j1 = min(i0 + 1, n - 1), min(j0 + 1, n - 1)
            a, b = si - i0, sj - j0
            out[i, j] = ((1 - a) * (1 - b) * img[i0, j0] + (1 - a) * b * img[i0, j1]
                         + a * (1 - b) * img[i1, j0] + a * b * img[i1, j1])
    return out


def test_labels_follow_the_mask_rule_brute_force():
    from sklearn.datasets import load_digits

    raw = load_digits()
    s = seg.load_splits()
    assert seg.IMAGE_SIZE == 16 and s.y_test.shape == (360, 16, 16) and s.y_train.shape == (1437, 16, 16)
    for split, k in (("test", 0), ("test", 17), ("test", 359), ("train", 5), ("train", 1000)):
        index = getattr(s, f"index_{split}")[k]
        digit = int(raw.target[index])
        up = _bilinear_2x(raw.images[index] / 16.0)
        expected = np.zeros((16, 16), np.int64)
        for i in range(16):
            for j in range(16):
                if up[i, j] > seg.STROKE_THRESHOLD:
                    expected[i, j] = digit + 1
        np.testing.assert_array_equal(getattr(s, f"y_{split}")[k], expected)
        assert getattr(s, f"digits_{split}")[k] == digit
        # the input is the same up-sampled image, normalized with the training split's constants
        np.testing.assert_allclose(getattr(s, f"x_{split}")[k, 0] * s.std + s.mean, up, atol=1e-5)
    assert set(np.unique(s.y_test)) == set(range(seg.NUM_CLASSES))


def test_split_is_the_classification_examples_and_normalized_from_training_only():
    from legocompile.examples.digits import load_splits as digit_splits

    s = seg.load_splits()
    np.testing.assert_array_equal(s.digits_test, digit_splits().y_test)  # the same held-out images, same order
    assert not set(s.index_train) & set(s.index_test) and len(s.index_train) + len(s.index_test) == 1797
    pixels = s.x_train * s.std + s.mean
    assert abs(float(s.x_train.mean())) < 1e-4 and abs(float(s.x_train.std()) - 1.0) < 1e-4
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0 + 1e-6
    data = seg.dataset(32)
    np.testing.assert_array_equal(data["calibration"], s.x_train[:32])
    assert data["eval"][0].shape == (360, 1, 16, 16) and data["train"].shape == (1437, 1, 16, 16)


def test_shipped_weights_reach_their_recorded_miou(shipped):
    meta = seg.metadata()
    assert seg.WEIGHTS_PATH.stat().st_size < 1_000_000
    assert set(load_file(str(seg.WEIGHTS_PATH))) == set(seg.segnet_digits(meta["width"]).state_dict())
    assert meta["metric"] == "miou" and meta["num_eval"] == 360
    for key in ("epochs", "seed", "torch_version"):
        assert key in meta
    s = seg.load_splits()
    with torch.no_grad():
        logits = shipped(torch.from_numpy(np.array(s.x_test))).numpy()
    assert logits.shape == (360, seg.NUM_CLASSES, 16, 16)
    assert abs(miou(logits, s.y_test) - meta["eval_miou"]) <= 1e-6
    assert meta["eval_miou"] > 0.5  # far above chance: the digit's class is recognised from the whole image


def test_partitioner_finds_the_hourglass_cut_points():
    from legocompile.blocks.partition import partition, verify_partition

    model = seg.segnet_digits().eval()
    x = torch.zeros(seg.INPUT_SHAPE)
    blocks = partition(model, x, max_blocks=None)
    names = [b.name for b in blocks]
    assert len(blocks) >= 3
    for hourglass in ("hg1", "hg2", "hg3"):  # a whole block each: their skips keep anything inside from being a cut
        assert hourglass in names
    assert verify_partition(model, blocks, torch.randn(2, *seg.INPUT_SHAPE[1:])) < 1e-5


def test_reduced_example_build_runs_like_pytorch_and_reports_miou(tmp_path, monkeypatch, shipped, capsys):
    from legocompile import project
    from legocompile.bundle import read_bundle
    from legocompile.cli import main
    from legocompile.config import ProfileConfig
    from legocompile.runtime import Runtime

    s = seg.load_splits()
    ex, ey = s.x_test[:64].copy(), s.y_test[:64].copy()
    monkeypatch.setattr(seg, "dataset", lambda: {"calibration": s.x_train[:64].copy(), "eval": (ex, ey),
                                                  "train": s.x_train[:256].copy()})
    full = project.EXAMPLES["segmentation"]

    def reduced(out=None):
        cfg = full(out)
        return dataclasses.replace(
            cfg, variants=dataclasses.replace(cfg.variants, epochs=1),
            profile=ProfileConfig(warmup=2, runs=20, threads=1),
            build=dataclasses.replace(cfg.build, work_dir=tmp_path / "work"))

    monkeypatch.setitem(project.EXAMPLES, "segmentation", reduced)
    out = tmp_path / "bundle"
    assert main(["build", "--example", "segmentation", "--precision", "fp32,int8", "--out", str(out), "-q",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "miou" and doc["model"] == seg.MODEL_NAME
    m = read_bundle(out)
    assert m.teacher["metric"] == "miou"
    assert [b.name for b in m.blocks] == ["stem", "hg1", "hg2", "hg3", "head"]
    for block in doc["blocks"]:  # pruning reaches inside every block: the sparser variants have fewer parameters
        params = {o["variant"]: o["params"] for o in block["options"]}
        assert params["s0"] > max(v for k, v in params.items() if k != "s0"), block["name"]
        # stem and head have one 16-channel group, which a multiple of 8 rounds to 8 at 0.4 and 0.8 alike: the
        # 0.8 variant is left out, and the bundle says which variant stands for it
        same = block["name"] in ("stem", "head")
        assert sorted(params) == (["s0", "s0.4"] if same else ["s0", "s0.4", "s0.8"]), block["name"]
        assert (m.settings["pruning"]["blocks"][block["name"]]["s0.8"].get("same_as") == "s0.4") == same
    assert [(d["block"], d["variant"], d["same_as"]) for d in doc["same_widths"]] == [
        ("stem", "s0.8", "s0.4"), ("head", "s0.8", "s0.4")]
    with torch.no_grad():
        ref = shipped(torch.from_numpy(ex)).numpy()
    assert m.teacher["pytorch_accuracy"] == pytest.approx(miou(ref, ey), abs=1e-9)

    rt = Runtime.load(out)
    rt.select(selection=[("s0", "fp32")] * len(rt.blocks))
    y = rt(ex)
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-5
    assert abs(miou(y, ey) - m.teacher["accuracy"]) < 1e-9
    rt.select(selection=[("s0", "int8")] * len(rt.blocks))
    assert np.mean(rt(ex).argmax(1) == ref.argmax(1)) >= 0.9  # int8 changes numbers, rarely a pixel's class

    assert main(["inspect", str(out)]) == 0
    assert f"teacher mIoU {m.teacher['accuracy'] * 100:.2f}%" in capsys.readouterr().out
    assert main(["pareto", str(out), "--points", "6", "--out", str(tmp_path / "front")]) == 0
    assert "mIoU " in capsys.readouterr().out  # the frontier's summary names the metric too


def test_example_flag_refuses_a_config_too_in_one_line(tmp_path, capsys):
    from legocompile.cli import main

    assert main(["build", "--example", "segmentation", "--config", str(tmp_path / "legocompile.toml"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--example and --config exclude each other" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["build", "--example", "detection"])
