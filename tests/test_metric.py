"""Task metrics: top-1 and mIoU against brute-force references, custom metrics, [task] metric, and a segmentation
build whose accuracies are mIoU."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from legocompile.config import load_config
from legocompile.errors import LegoCompileError
from legocompile.profile.accuracy import bundle_metric, metric_of, miou, resolve_metric, top1


def miou_reference(logits: np.ndarray, masks: np.ndarray) -> float:
    """Brute force: per class, count pixel by pixel; average over the classes any evaluated pixel has or predicts."""
    num_classes = logits.shape[1]
    inter = [0] * num_classes
    union = [0] * num_classes
    for n in range(logits.shape[0]):
        for i in range(logits.shape[2]):
            for j in range(logits.shape[3]):
                truth = int(masks[n, i, j])
                if not 0 <= truth < num_classes:
                    continue
                pred = int(np.argmax(logits[n, :, i, j]))
                for c in range(num_classes):
                    inter[c] += pred == c and truth == c
                    union[c] += pred == c or truth == c
    ious = [inter[c] / union[c] for c in range(num_classes) if union[c]]
    return sum(ious) / len(ious)


@pytest.mark.parametrize("seed", range(4))
def test_miou_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, c, h, w = 3, 5, 6, 7
    masks = rng.integers(0, c, size=(n, h, w))
    logits = rng.normal(size=(n, c, h, w)).astype(np.float32)
    logits += 2.0 * np.eye(c, dtype=np.float32)[masks].transpose(0, 3, 1, 2)  # mostly right, not always
    masks[0, 0, :3] = 255  # ignored pixels
    masks[masks == 4] = 3  # class 4 absent from the labels (it may still be predicted)
    assert miou(logits, masks) == pytest.approx(miou_reference(logits, masks), abs=1e-12)


def test_miou_extremes():
    masks = np.array([[[0, 1], [2, 2]]])
    perfect = np.eye(3, dtype=np.float32)[masks].transpose(0, 3, 1, 2)
    assert miou(perfect, masks) == 1.0
    assert miou(-perfect, masks) == 0.0  # every pixel predicts a wrong class
    with pytest.raises(LegoCompileError, match=r"miou needs class scores \(N, C, H, W\) and integer masks"):
        miou(perfect, masks[:, 0])


def test_top1_and_its_errors():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert top1(logits, np.array([[1], [0], [1]], dtype=np.float32)) == 1.0  # class ids stored as floats
    with pytest.raises(LegoCompileError, match="top1 needs one integer class id per sample"):
        top1(logits, np.zeros((3, 4, 4), np.int64))
    with pytest.raises(LegoCompileError, match="top1 needs one output array but the model returns 2"):
        top1((logits, logits), np.array([1, 0, 0]))


def test_custom_metric_from_a_project_module(tmp_path):
    (tmp_path / "mymetric_mod.py").write_text(
        "import numpy as np\n"
        "def frac_positive(outputs, labels):\n    return float(np.mean(outputs > 0))\n"
        "def broken(outputs, labels):\n    return 2.0\n"
    )
    m = resolve_metric("mymetric_mod:frac_positive", search_path=tmp_path)
    try:
        assert m.name == "mymetric_mod:frac_positive" and not m.builtin
        assert m.identity.startswith("mymetric_mod:frac_positive@")  # the source code is part of the cache key
        assert m(np.array([1.0, -1.0, 2.0, 3.0]), None) == 0.75
        with pytest.raises(LegoCompileError, match=r"metric mymetric_mod:broken returned 2\.0; .* in \[0, 1\]"):
            resolve_metric("mymetric_mod:broken", search_path=tmp_path)(np.zeros(1), None)
        with pytest.raises(LegoCompileError, match="cannot import module 'nosuchmod_xyz'"):
            resolve_metric("nosuchmod_xyz:f")
        with pytest.raises(LegoCompileError, match="metric must be one of top1, miou or"):
            resolve_metric("top5")
    finally:
        sys.modules.pop("mymetric_mod", None)


def test_bundle_metric_never_imports_a_custom_metric():
    assert bundle_metric("miou").fn is miou
    with pytest.raises(LegoCompileError) as e:
        bundle_metric("os:system")
    assert "a bundle is data" in str(e.value) and "\n" not in str(e.value)
    assert metric_of({"accuracy": 0.9}) == "top1"  # bundles from before metrics existed


TOML = '[model]\nfactory = "m:make"\ninput_shape = [1, 1, 8, 8]\n[data]\nprovider = "m:data"\n'


def test_task_metric_in_the_project_file(tmp_path):
    p = tmp_path / "legocompile.toml"
    p.write_text(TOML)
    assert load_config(p).task.metric == "top1"
    for value in ("miou", "pkg.mod:fn"):
        p.write_text(TOML + f'[task]\nmetric = "{value}"\n')
        assert load_config(p).task.metric == value
    for bad in ('metric = "iou"', "metric = 3", 'metrics = "miou"'):
        p.write_text(TOML + f"[task]\n{bad}\n")
        with pytest.raises(LegoCompileError, match=r"\[task\]\.metric") as e:
            load_config(p)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- a build in mIoU
class TinySegNet(nn.Module):
    """Per-pixel 3-class scores (background, thin stroke, thick stroke) at the input's resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.enc(x)))


def seg_masks(x: np.ndarray) -> np.ndarray:
    """Labels from the digit images themselves: 0 background, 1 faint stroke, 2 strong stroke (N, H, W)."""
    v = x[:, 0]
    return np.where(v > 0.6, 2, np.where(v > 0.1, 1, 0)).astype(np.int64)


@pytest.fixture(scope="module")
def seg_build(tmp_path_factory, digits_small):
    import legocompile
    from legocompile.config import ProfileConfig

    torch.manual_seed(0)
    model = TinySegNet()
    calib, (ex, _) = digits_small
    ex = np.asarray(ex[:64], np.float32)
    ey = seg_masks(ex)
    opt = torch.optim.Adam(model.parameters(), 1e-2)  # a few steps: scores that mean something
    xt, yt = torch.from_numpy(np.array(calib, np.float32)), torch.from_numpy(seg_masks(np.array(calib)))
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    root = tmp_path_factory.mktemp("seg")
    out = legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=(ex, ey), out=root / "b",
        work_dir=root / "work", precisions=("fp32", "int8"), max_blocks=2, metric="miou",
        profile=ProfileConfig(warmup=2, runs=50), additivity_samples=3,
    )
    return {"out": out, "model": model, "ex": ex, "ey": ey}


def test_segmentation_build_measures_miou(seg_build):
    from legocompile.backends import get_backend
    from legocompile.bundle import read_bundle
    from legocompile.inspect import summary

    m = read_bundle(seg_build["out"])
    assert m.teacher["metric"] == "miou" and summary(m)["metric"] == "miou"
    with torch.no_grad():
        pytorch = miou(seg_build["model"](torch.from_numpy(np.array(seg_build["ex"]))).numpy(), seg_build["ey"])
    assert 0.2 < pytorch < 1.0
    assert m.teacher["pytorch_accuracy"] == pytest.approx(pytorch, abs=1e-9)
    assert abs(m.teacher["accuracy"] - pytorch) <= 1 / len(seg_build["ex"])
    # every drop is the teacher's mIoU minus the mIoU of the chain with that option: recompute one (int8 of block 0)
    be = get_backend("onnxruntime")
    engines = [be.load(seg_build["out"] / b.option("s0", "fp32").engine) for b in m.blocks]
    h = be.load(seg_build["out"] / m.blocks[0].option("s0", "int8").engine).run(seg_build["ex"])
    for e in engines[1:]:
        h = e.run(h)
    expected = m.teacher["accuracy"] - miou(h, seg_build["ey"])
    assert m.blocks[0].option("s0", "int8").accuracy_drop == pytest.approx(expected, abs=1e-9)
    assert m.additivity is not None and m.additivity["metric"] == "miou"


def test_run_evaluates_miou_and_refuses_a_custom_metric_in_one_line(seg_build, tmp_path, capsys):
    import shutil

    from legocompile.cli import main

    data = tmp_path / "eval.npz"
    np.savez(data, x=seg_build["ex"], y=seg_build["ey"])
    main(["run", str(seg_build["out"]), "--data", str(data), "--runs", "50", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "mIoU" and 0.2 < doc["measured"]["accuracy"] <= 1.0
    # the same bundle claiming a project metric: run measures latency and says in one line why it cannot evaluate
    custom = tmp_path / "custom"
    shutil.copytree(seg_build["out"], custom)
    manifest = json.loads((custom / "manifest.json").read_text())
    manifest["teacher"]["metric"] = "evil_pkg:score"
    (custom / "manifest.json").write_text(json.dumps(manifest))
    main(["run", str(custom), "--data", str(data), "--runs", "50", "--json"])
    doc = json.loads(capsys.readouterr().out)
    note = doc["measured"]["accuracy_note"]
    assert doc["measured"]["accuracy"] is None and "evil_pkg:score" in note and "\n" not in note
    assert "evil_pkg" not in sys.modules
