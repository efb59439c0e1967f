"""Variants through the whole pipeline: derive → retrain → export → engines → profiles → bundle, plus BYO and pareto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import legocompile
from legocompile.blocks import partition
from legocompile.bundle import read_bundle
from legocompile.config import ProfileConfig
from legocompile.errors import LegoCompileError
from legocompile.pipeline import BuildReport
from legocompile.variants.retrain import RetrainSettings
from legocompile.variants.stage import ExternalVariant

RETRAIN = RetrainSettings(epochs=2, batch_size=64)
PROFILE = ProfileConfig(warmup=2, runs=50)


def build(model, data, tmp, *, out="bundle", report=None, **kw):
    calib, eval_data, train = data
    return legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=eval_data, train_data=train,
        out=tmp / out, work_dir=tmp / "work", precisions=("fp32", "int8"), max_blocks=4, profile=PROFILE,
        sparsities=(0.0, 0.5), retrain=RETRAIN, additivity_samples=20, report=report, **kw,
    )


@pytest.fixture(scope="module")
def data(digits_small):
    from legocompile.examples.digits import load_splits

    calib, eval_data = digits_small
    return calib, eval_data, load_splits().x_train[:512]


@pytest.fixture(scope="module")
def variant_bundle(tmp_path_factory, tiny_model, data):
    tmp = tmp_path_factory.mktemp("variants")
    report = BuildReport(bundle=tmp / "bundle")
    path = build(tiny_model, data, tmp, report=report)
    return {"path": path, "tmp": tmp, "report": report}


def test_every_block_offers_variants_times_precisions(variant_bundle):
    m = read_bundle(variant_bundle["path"])
    for b in m.blocks:
        keys = {(o.variant, o.precision) for o in b.options}
        assert keys == {("s0", "fp32"), ("s0", "int8"), ("s0.5", "fp32"), ("s0.5", "int8")}
        s0, s5 = b.option("s0", "fp32"), b.option("s0.5", "fp32")
        assert s5.sparsity == 0.5 and s0.sparsity == 0.0
        assert s5.params < s0.params  # every block of this ResNet has a prunable conv pair
        assert s5.export_max_abs_err < 1e-4
        pruned = m.settings["pruning"]["blocks"][b.name]["s0.5"]  # what pruning reached, next to what was asked
        assert pruned["sparsity"] == 0.5 and (pruned["params_before"], pruned["params_after"]) == (s0.params, s5.params)
        assert pruned["param_sparsity"] == pytest.approx(1 - s5.params / s0.params)
        for before, after in pruned["channels"]:
            assert after < before and (after % 8 == 0 or before <= 8)
    assert m.settings["pruning"]["channel_multiple"] == 8


def test_retrained_variants_beat_untrained_ones(variant_bundle, tiny_model, data):
    """Retraining on teacher features must reduce each descendant's error against the teacher block."""
    from legocompile.variants import prune_block
    from legocompile.variants.store import load_variant

    work = variant_bundle["tmp"] / "work"
    blocks = partition(tiny_model, torch.zeros(1, 1, 32, 32), "auto", max_blocks=4)
    stems = sorted(p.with_suffix("") for p in (work / "variants").glob("*.json"))
    assert len(stems) == len(blocks)
    x = torch.from_numpy(np.array(data[1][0][:64]))
    improved = 0
    for b in blocks:
        with torch.no_grad():
            target = b.module(x)
        untrained = prune_block(b.module, x[:1], 0.5).module.eval()
        trained = [t for t in (_try_load(load_variant, s, b.module) for s in stems) if t is not None and _fits(t, x)]
        with torch.no_grad():
            e_untrained = torch.mean((untrained(x) - target) ** 2).item()
            e_trained = min(torch.mean((t(x) - target) ** 2).item() for t in trained)
        improved += e_trained < e_untrained
        x = target
    assert improved == len(blocks)


def _try_load(load_variant, stem, block):
    try:
        return load_variant(stem, block)[0]
    except LegoCompileError:  # a variant of another block
        return None


def _fits(module, x) -> bool:
    try:
        with torch.no_grad():
            module(x)
        return True
    except RuntimeError:
        return False


def test_additivity_is_measured(variant_bundle):
    m = read_bundle(variant_bundle["path"])
    a = m.additivity
    assert a["num_selections"] == 20 == len(a["samples"])
    errors = [abs(s["predicted"] - s["measured"]) for s in a["samples"]]
    assert a["mean_abs_error"] == pytest.approx(np.mean(errors))
    # each sample's predictions are the two accuracy models applied to the manifest's drops
    drops = {(b_i, o.variant, o.precision): o.accuracy_drop for b_i, b in enumerate(m.blocks) for o in b.options}
    t = m.teacher["accuracy"]
    for s in a["samples"]:
        d = [drops[(i, v, p)] for i, (v, p) in enumerate(s["selection"])]
        assert s["predicted_additive"] == pytest.approx(t - sum(d))
        assert s["predicted"] == pytest.approx(min(1.0, t * np.prod([1 - x / t for x in d])))
    assert a["additive_mean_abs_error"] == pytest.approx(
        np.mean([abs(s["predicted_additive"] - s["measured"]) for s in a["samples"]]))


def test_measured_selection_accuracy_matches_runtime(variant_bundle, data):
    """The additivity samples' 'measured' accuracies are what the Runtime really gets for that selection."""
    from legocompile.profile import top1

    m = read_bundle(variant_bundle["path"])
    rt = legocompile.Runtime.load(variant_bundle["path"])
    ex, ey = data[1]
    for s in m.additivity["samples"][:3]:
        rt.select(selection=[tuple(x) for x in s["selection"]])
        assert top1(rt.predict(np.asarray(ex)), ey) == pytest.approx(s["measured"])


def test_rebuild_reuses_derived_and_retrained(variant_bundle, tiny_model, data):
    report = BuildReport(bundle=None)
    build(tiny_model, data, variant_bundle["tmp"], out="again", report=report)
    assert report.built == {}
    assert report.cached["derive"] == 4 and report.cached["retrain"] == 4


def test_derive_stage_stops_before_retraining(tiny_model, data, tmp_path):
    report = BuildReport(bundle=None)
    build(tiny_model, data, tmp_path, report=report, until="derive")
    assert report.built == {"derive": 4}
    assert len(report.unprunable) >= 4  # at least one residual-tied conv per block
    assert not (tmp_path / "work" / "variants").exists()


MODULE = '''
import torch.nn as nn
from legocompile.examples.resnet import BasicBlock

def make():
    return nn.Sequential(BasicBlock(4, 4, 1))
'''


def test_bring_your_own_variant(variant_bundle, tiny_model, data, tmp_path):
    (tmp_path / "byo_variants.py").write_text(MODULE)
    block = tiny_model.layer1[1]
    state = {f"0.{k}": v.clone().contiguous() for k, v in block.state_dict().items()}
    save_file(state, str(tmp_path / "byo.safetensors"))
    first = read_bundle(variant_bundle["path"]).blocks[0].name
    ext = ExternalVariant(block=first, name="legodnn-copy", factory="byo_variants:make",
                          weights=tmp_path / "byo.safetensors", search_path=tmp_path)
    # block 0 takes the 1-channel image; a 4-channel BasicBlock cannot stand in for it:
    with pytest.raises(LegoCompileError, match="legodnn-copy|external variant"):
        build(tiny_model, data, variant_bundle["tmp"], out="byo", external_variants=[ext])


def test_bring_your_own_variant_compiles(variant_bundle, tiny_model, data, tmp_path):
    """A user-made block (a copy of the teacher's block 1 built by their own factory) becomes an option."""
    blocks = partition(tiny_model, torch.zeros(1, 1, 32, 32), "auto", max_blocks=4)
    target = blocks[1]
    # a user factory that rebuilds the block by re-partitioning their own copy of the architecture
    (tmp_path / "byo_copy.py").write_text(
        "import torch\nfrom legocompile.blocks import partition\nfrom legocompile.examples.resnet import resnet18_digits\n"
        "def make():\n    m = resnet18_digits(width=4).eval()\n"
        "    return partition(m, torch.zeros(1, 1, 32, 32), 'auto', max_blocks=4)[1].module\n"
    )
    save_file({k: v.contiguous() for k, v in target.module.state_dict().items()}, str(tmp_path / "copy.safetensors"))
    ext = ExternalVariant(block=target.name, name="mine", factory="byo_copy:make", weights=tmp_path / "copy.safetensors",
                          search_path=tmp_path)
    path = build(tiny_model, data, variant_bundle["tmp"], out="byo2", external_variants=[ext])
    m = read_bundle(path)
    mine = m.blocks[1].option("mine", "int8")
    assert mine.sparsity is None
    assert m.blocks[1].option("mine", "fp32").accuracy_drop == pytest.approx(0.0)  # identical weights


def test_pareto_writes_json_and_png_outside_the_bundle(variant_bundle, capsys, tmp_path, monkeypatch):
    from legocompile.bundle import verify_bundle
    from legocompile.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pareto", str(variant_bundle["path"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_selections"] >= 50
    assert Path(doc["png"]).resolve().parent == tmp_path.resolve()
    assert Path(doc["png"]).stat().st_size > 1000
    assert not (variant_bundle["path"] / "pareto.png").exists() and verify_bundle(variant_bundle["path"]) == []
    frontier = doc["frontier"]
    assert frontier == sorted(frontier, key=lambda e: (e["latency_ms"], e["memory_bytes"], -e["accuracy"]))
    for a in frontier:  # no point dominates another
        for b in frontier:
            if a is not b:
                assert not (a["latency_ms"] <= b["latency_ms"] and a["memory_bytes"] <= b["memory_bytes"]
                            and a["accuracy"] >= b["accuracy"] and a != b
                            and (a["latency_ms"], a["memory_bytes"], a["accuracy"]) != (b["latency_ms"], b["memory_bytes"], b["accuracy"]))


def test_pareto_says_why_a_frontier_with_no_accuracy_drop_trades_only_latency_and_memory(variant_bundle):
    import dataclasses

    from legocompile.bundle import read_bundle
    from legocompile.inspect import flat_accuracy_note, summary

    m = read_bundle(variant_bundle["path"], verify=False)

    def with_drops(drop):
        blocks = [dataclasses.replace(b, options=tuple(dataclasses.replace(o, accuracy_drop=drop(i, j))
                                                       for j, o in enumerate(b.options)))
                  for i, b in enumerate(m.blocks)]
        return dataclasses.replace(m, blocks=tuple(blocks))

    flat = flat_accuracy_note(with_drops(lambda i, j: 0.0))
    assert flat is not None and "every accuracy drop is 0" in flat and "latency against memory only" in flat
    assert f"{m.teacher['num_eval']} evaluation samples" in flat
    # one option of one block that costs accuracy is enough for the frontier to trade it: no note
    assert flat_accuracy_note(with_drops(lambda i, j: 0.01 if (i, j) == (1, 1) else 0.0)) is None
    drops = [o.accuracy_drop for b in m.blocks for o in b.options if o.excluded is None]
    assert (flat_accuracy_note(m) is None) == any(d != 0 for d in drops)
    assert summary(with_drops(lambda i, j: 0.0))["flat_accuracy"] == flat  # what build and inspect print


class _RoundsAlike(torch.nn.Module):
    """Block ``a``: a 16-channel group, which a multiple of 8 rounds to 8 channels at 0.4 and at 0.8 alike.
    Block ``b``: a 1x1 conv whose channels are the model's output, so nothing in it can be pruned."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                     torch.nn.Conv2d(16, 8, 3, padding=1), torch.nn.ReLU())
        self.b = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 10, 1), torch.nn.Flatten())

    def forward(self, x):
        return self.b(self.a(x))


def test_sparsities_that_round_to_the_same_widths_are_built_once(data, tmp_path):
    torch.manual_seed(0)
    model = _RoundsAlike().eval()
    calib, eval_data, train = data
    report = BuildReport(bundle=tmp_path / "bundle")
    path = legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=eval_data, train_data=train,
        out=tmp_path / "bundle", work_dir=tmp_path / "work", blocks=["a", "b"], precisions=("fp32",),
        profile=PROFILE, sparsities=(0.0, 0.4, 0.8), retrain=RetrainSettings(epochs=1, batch_size=64),
        additivity_samples=0, report=report,
    )
    assert [(d["block"], d["variant"], d["same_as"]) for d in report.same_widths] == [
        ("a", "s0.8", "s0.4"), ("b", "s0.4", "s0"), ("b", "s0.8", "s0")]
    assert report.built["derive"] == 4 and report.built["retrain"] == 1  # only a's 0.4 student is trained
    m = read_bundle(path)
    assert [sorted(o.variant for o in b.options) for b in m.blocks] == [["s0", "s0.4"], ["s0"]]
    assert [b.name for b in m.blocks] == ["a", "b"]
    assert m.blocks[0].option("s0.4", "fp32").params < m.blocks[0].option("s0", "fp32").params
    pruning = m.settings["pruning"]["blocks"]
    assert pruning["a"]["s0.8"] == {"sparsity": 0.8, "same_as": "s0.4"}
    assert pruning["a"]["s0.4"]["channels"] == [[16, 8]]
    assert pruning["b"] == {"s0.4": {"sparsity": 0.4, "same_as": "s0"}, "s0.8": {"sparsity": 0.8, "same_as": "s0"}}
    # a rebuild finds everything in the cache and reports the same
    again = BuildReport(bundle=path)
    legocompile.compile(
        model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=calib, eval_data=eval_data, train_data=train,
        out=path, work_dir=tmp_path / "work", blocks=["a", "b"], precisions=("fp32",), profile=PROFILE,
        sparsities=(0.0, 0.4, 0.8), retrain=RetrainSettings(epochs=1, batch_size=64), additivity_samples=0,
        report=again,
    )
    assert again.built == {} and again.same_widths == report.same_widths
