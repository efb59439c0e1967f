"""Models torch.fx cannot trace: control flow on shapes is decided at the example input's shape; control flow on
tensor values or on the batch size is refused, naming the node and the user's line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from legocompile.blocks import partition, verify_partition
from legocompile.blocks.trace import trace
from legocompile.errors import LegoCompileError

GRAY = (1, 1, 32, 32)


def shape_vgg() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.ShapeBranchVGG()).eval()


def test_fx_alone_refuses_the_model():
    with pytest.raises(Exception, match="symbolically traced variables cannot be used as inputs to control flow"):
        torch.fx.symbolic_trace(shape_vgg())


def test_shape_branches_are_decided_and_the_chain_equals_the_model_at_any_batch_size():
    model = shape_vgg()
    gm, route = trace(model, torch.randn(*GRAY))
    assert route == "fx+shapes"

    def pools(gm: torch.fx.GraphModule) -> bool:
        return any(n.op == "call_function" and n.target is torch.nn.functional.adaptive_avg_pool2d
                   for n in gm.graph.nodes)

    assert pools(gm)  # 32x32 inputs give 8x8 features: pooled to 4x4
    assert not pools(trace(model, torch.randn(1, 1, 16, 16))[0])  # 16x16 inputs already give 4x4
    assert not any(n.name.startswith(("ne", "getattr")) for n in gm.graph.nodes)  # the branch's queries are gone
    for size in (32, 16):
        blocks = partition(model, torch.randn(1, 1, size, size), max_blocks=None)
        assert len(blocks) >= 3 and all(b.macs > 0 for b in blocks)
        for batch in (1, 5):  # x.view(x.size(0), -1) stays symbolic: other batch sizes work
            assert verify_partition(model, blocks, torch.randn(batch, 1, size, size)) < 1e-5


def test_pruning_analysis_finds_the_layers_of_a_fallback_traced_block():
    from legocompile.variants.prune import prune_block

    model = shape_vgg()
    x = torch.randn(*GRAY)
    first = partition(model, x, max_blocks=1)[0]  # the whole model: pooling, view(x.size(0), -1), linears
    pruned = prune_block(first.module, x, 0.5, channel_multiple=8)
    assert pruned.report.params_after < pruned.report.params_before
    assert pruned.architecture  # at least one layer shrank
    with torch.no_grad():
        assert pruned.module(x).shape == first.module(x).shape


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (zoo.DataDependentNet(), r"cannot trace DataDependentNet with torch\.fx: symbolically traced variables .*; "
                                 r"with shapes fixed at the example input: a branch at 'gt' \(gt\(sum_1, 0\), "
                                 r"zoo\.py:\d+\) depends on tensor values"),
        (zoo.BatchBranchNet(), r"a branch at 'gt' \(gt\(getitem, 1\), zoo\.py:\d+\) depends on the batch size"),
    ],
)
def test_value_or_batch_dependent_control_flow_is_refused_naming_the_node(model, pattern):
    with pytest.raises(LegoCompileError, match=pattern) as e:
        partition(model, torch.randn(*GRAY))
    assert "\n" not in str(e.value)


def test_explicit_cut_errors_still_name_the_node_on_a_fallback_graph():
    model = shape_vgg()
    with pytest.raises(LegoCompileError, match=r"cannot cut after 'features\.2\.body\.0': 2 tensors cross the cut "
                                                r"\(features\.2\.body\.0, features\.1\)"):
        partition(model, torch.randn(*GRAY), ["features.2.body.0", "classifier"])  # inside the shape-decided skip
    blocks = partition(model, torch.randn(*GRAY), ["features.2", "classifier"])
    assert [b.name for b in blocks] == ["features.0-features.2", "features.3-classifier"]


def test_compiles_end_to_end_with_pruned_variants(tmp_path, digits_small):
    import legocompile
    from legocompile.bundle import read_bundle
    from legocompile.config import ProfileConfig
    from legocompile.runtime import Runtime
    from legocompile.variants.retrain import RetrainSettings

    model = shape_vgg()
    calib, (ex, ey) = digits_small
    out = legocompile.compile(
        model, np.zeros(GRAY, np.float32), calibration_data=calib[:64], eval_data=(ex[:64], ey[:64]),
        out=tmp_path / "b", work_dir=tmp_path / "w", precisions=("fp32",), max_blocks=2, sparsities=(0.0, 0.5),
        retrain=RetrainSettings(epochs=1), profile=ProfileConfig(warmup=2, runs=50), additivity_samples=0,
    )
    m = read_bundle(out)
    assert len(m.blocks) == 2
    assert any(o.variant == "s0.5" and o.params < b.option("s0", "fp32").params for b in m.blocks for o in b.options)
    rt = Runtime.load(out)
    x = np.array(ex[:3], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    rt.select(selection=[("s0", "fp32")] * len(m.blocks))  # the original chain: the model's outputs
    np.testing.assert_allclose(rt.predict(x), expected, rtol=1e-4, atol=1e-4)
    # pruned variants run too (a block that pruning leaves whole offers s0 alone: its s0.5 would repeat s0)
    pruned = [("s0.5" if any(o.variant == "s0.5" for o in b.options) else "s0", "fp32") for b in m.blocks]
    rt.select(selection=pruned)
    assert rt.predict(x).shape == expected.shape
