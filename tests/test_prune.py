"""Structured L1 filter pruning of blocks: boundary shapes, layer consistency, ONNX parity, storage round trip."""

from __future__ import annotations

import copy
import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn

from legocompile.errors import LegoCompileError
from legocompile.variants import apply_architecture, count_parameters, prune_block
from legocompile.variants.prune import kept_channels
from prune_models import (
    BLOCKS,
    BasicBlock,
    ConcatBlock,
    GroupedConvBlock,
    GroupedIntoAdd,
    InvertedResidual,
    ManualHardswish,
    SharedConv,
    SqueezeExcite,
    UnknownOpBlock,
    randomize_bn,
)

SPARSITIES = (0.0, 0.2, 0.4, 0.8)
EXTRA = {
    "squeeze_excite": (SqueezeExcite, (2, 8, 8, 8)),
    "mbv2_t1": (lambda: InvertedResidual(16, 16, 1, 1), (2, 16, 8, 8)),
    "hardswish": (ManualHardswish, (2, 8, 8, 8)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (several times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = {**BLOCKS, **EXTRA}[name]
    torch.manual_seed(seed)
    block = randomize_bn(factory(), seed).eval()
    return block, torch.randn(shape)


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.eval()(x)


def check_consistent(pruned: nn.Module, report) -> None:
    """Every layer of every pruned group agrees on the group's width."""
    mods = dict(pruned.named_modules())
    for g in report.groups:
        n = g.channels_after
        assert len(g.kept) == n and list(g.kept) == sorted(set(g.kept))
        for p in g.producers:
            m = mods[p]
            assert (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) == n
        for p in g.batchnorms:
            assert mods[p].num_features == n
            assert mods[p].running_mean.shape == (n,)
        for p in g.depthwise:
            assert mods[p].groups == mods[p].in_channels == mods[p].out_channels == n
            assert mods[p].weight.shape[:2] == (n, 1)
        for p in g.consumers:
            m = mods[p]
            if isinstance(m, nn.Conv2d):
                assert m.in_channels == n and m.weight.shape[1] == n
            else:
                assert m.in_features % n == 0 and m.weight.shape[1] == m.in_features


def onnx_outputs(m: nn.Module, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m.eval(), (x,), f, opset_version=17, dynamo=False, input_names=["x"])
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_shapes_consistency_and_onnx(name: str, sparsity: float) -> None:
    block, x = make(name)
    ref = run(block, x)
    res = prune_block(block, x, sparsity, channel_multiple=1)
    y = run(res.module, x)
    assert y.shape == ref.shape
    assert json.loads(json.dumps(res.architecture)) == res.architecture
    check_consistent(res.module, res.report)
    assert res.report.params_after == count_parameters(res.module)
    if sparsity == 0.0:
        assert torch.equal(y, ref) and res.architecture == {}
    else:
        assert res.report.groups, "every test block has a prunable group"
        for g in res.report.groups:
            assert g.channels_after == max(1, round((1 - sparsity) * g.channels_before))
    np.testing.assert_allclose(onnx_outputs(res.module, x), y.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted({**BLOCKS, **EXTRA}))
def test_parameters_decrease_monotonically(name: str) -> None:
    block, x = make(name)
    counts = [prune_block(block, x, s, channel_multiple=1).report.params_after for s in SPARSITIES]
    assert counts[0] == count_parameters(block)
    if name == "mbv2_t1":  # depthwise on the block input, project to the residual: nothing prunable
        assert len(set(counts)) == 1
    else:
        assert all(a > b for a, b in zip(counts, counts[1:])), counts
    rounded = [prune_block(block, x, s, channel_multiple=8).report.params_after for s in SPARSITIES]
    assert all(a >= b for a, b in zip(rounded, rounded[1:])), rounded  # coarser steps, never growing


def test_reduction_at_08() -> None:
    """Observed parameter reduction of the 0.8 variants (see the module docstring of prune.py for why)."""
    reductions = {name: prune_block(*make(name), 0.8, channel_multiple=1).report.reduction for name in BLOCKS}
    # Width-32 CIFAR basic block: conv1 keeps 6/32 filters, conv2 keeps 6/32 inputs; BN2 and the skip stay.
    assert prune_block(*make("basic"), 0.8, channel_multiple=1).report.params_after == 6 * 32 * 9 * 2 + 2 * 6 + 2 * 32
    # Rounded to a multiple of 8 (the default), 6.4 kept channels become 8.
    report = prune_block(*make("basic"), 0.8).report
    assert report.channel_multiple == 8 and report.params_after == 8 * 32 * 9 * 2 + 2 * 8 + 2 * 32
    assert report.param_sparsity == pytest.approx(1 - report.params_after / report.params_before)
    for name in ("basic", "basic_down", "basic_pair", "bottleneck", "mbv2_res", "mbv2_s2", "vgg", "head"):
        assert reductions[name] >= 3.0, (name, reductions[name])
    assert reductions["bottleneck_down"] > 2.0  # the unprunable 64->128 projection shortcut dominates


def test_zero_sparsity_is_an_unmodified_copy() -> None:
    block, x = make("basic_down")
    res = prune_block(block, x, 0.0)
    assert res.module is not block and res.module.conv1 is not block.conv1
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), res.module.state_dict().values()))
    assert res.report.reduction == 1.0 and res.report.skipped


@pytest.mark.parametrize("name", sorted({**BLOCKS, **EXTRA}))
def test_keeping_all_channels_is_exact(name: str) -> None:
    """A sparsity that rounds to keeping every channel rebuilds the layers but computes the same function."""
    block, x = make(name, seed=3)
    res = prune_block(block, x, 0.001)
    if name != "mbv2_t1":
        assert res.architecture
    for path in res.architecture:
        assert res.module.get_submodule(path) is not block.get_submodule(path)
    assert res.report.params_after == res.report.params_before
    torch.testing.assert_close(run(res.module, x), run(block, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted({**BLOCKS, **EXTRA}))
def test_pruning_equals_masking_the_consumers(name: str) -> None:
    """Removing channels == zeroing the consumers' weights for those channels in the original block."""
    block, x = make(name, seed=5)
    res = prune_block(block, x, 0.5)
    masked = copy.deepcopy(block)
    for g in res.report.groups:
        dropped = sorted(set(range(g.channels_before)) - set(g.kept))
        for path in g.consumers:
            w = masked.get_submodule(path).weight
            factor = w.shape[1] // g.channels_before
            cols = [c * factor + i for c in dropped for i in range(factor)]
            with torch.no_grad():
                w[:, cols] = 0
    torch.testing.assert_close(run(res.module, x), run(masked, x), rtol=1e-5, atol=1e-5)


def test_l1_selection_keeps_largest_filters_in_order() -> None:
    block, x = make("basic")
    with torch.no_grad():
        scale = torch.tensor([float((7 * i) % 32 + 1) for i in range(32)])
        block.conv1.weight.copy_(torch.ones_like(block.conv1.weight) * scale[:, None, None, None])
    res = prune_block(block, x, 0.75)
    (g,) = res.report.groups
    assert list(g.kept) == sorted(torch.topk(scale, 8).indices.tolist())
    torch.testing.assert_close(res.module.conv1.weight, block.conv1.weight[list(g.kept)])
    torch.testing.assert_close(res.module.bn1.running_var, block.bn1.running_var[list(g.kept)])
    torch.testing.assert_close(res.module.conv2.weight, block.conv2.weight[:, list(g.kept)])


def test_skipped_layers_are_reported() -> None:
    def skipped(name_or_block, x=None) -> dict[str, str]:
        if isinstance(name_or_block, str):
            name_or_block, x = make(name_or_block)
        return dict(prune_block(name_or_block, x, 0.5).report.skipped)

    s = skipped("basic")
    assert set(s) == {"conv2"} and "residual add" in s["conv2"]
    s = skipped("basic_down")
    assert set(s) == {"conv2", "downsample.0"} and all("residual add" in r for r in s.values())
    s = skipped("basic_pair")
    assert set(s) == {"0.conv2", "1.conv2"}
    assert "residual add" in skipped("mbv2_res")["conv.6"]
    assert "block output" in skipped("mbv2_s2")["conv.6"]
    s = skipped("mbv2_t1")
    assert "block input" in s["conv.0"] and "residual add" in s["conv.3"]
    assert "block output" in skipped("vgg")["7"] and "block output" in skipped("head")["fc2"]
    x8 = torch.randn(2, 8, 8, 8)
    s = skipped(GroupedConvBlock(), x8)
    assert "grouped conv" in s["conv1"] and "grouped conv" in s["gconv"]
    assert "flip" in skipped(UnknownOpBlock(), x8)["conv1"]
    s = skipped(ConcatBlock(), x8)
    assert "concatenation" in s["a"] and "concatenation" in s["b"]
    s = skipped(GroupedIntoAdd(), x8)
    assert "grouped conv" in s["gconv"] and "grouped conv" in s["conv"] and "residual add" in s["conv"]
    s = prune_block(SharedConv(), x8, 0.5).report.skipped
    assert s[0] == ("conv1", "unsupported shared module 'conv1' (called at 2 sites)") and len(s) == 2


def test_squeeze_excite_group_spans_both_producers() -> None:
    block, x = make("squeeze_excite")
    groups = {g.producers: g for g in prune_block(block, x, 0.5).report.groups}
    g = groups[("conv1", "se2")]
    assert set(g.consumers) == {"se1", "conv2"} and g.channels_after == 16


@pytest.mark.parametrize("name", ["basic_down", "basic_pair", "mbv2_res", "head", "bottleneck"])
def test_architecture_safetensors_round_trip(name: str, tmp_path) -> None:
    block, x = make(name)
    res = prune_block(block, x, 0.6)
    save_file(res.module.state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "arch.json").write_text(json.dumps(res.architecture))
    rebuilt = apply_architecture(block, json.loads((tmp_path / "arch.json").read_text()))
    rebuilt.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    assert count_parameters(rebuilt) == res.report.params_after
    assert torch.equal(run(rebuilt, x), run(res.module, x))
    assert count_parameters(block) == res.report.params_before  # original untouched


def test_input_block_is_not_mutated() -> None:
    block, x = make("mbv2_res")
    block.train()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    layers = dict(block.named_modules())
    prune_block(block, x, 0.8)
    assert dict(block.named_modules()) == layers
    assert all(m.training for m in block.modules())
    after = block.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_pruned_module_keeps_training_mode_and_requires_grad() -> None:
    block, x = make("basic")
    block.train()
    res = prune_block(block, x, 0.5)
    assert all(m.training for m in res.module.modules())
    assert all(p.requires_grad for p in res.module.parameters())
    res.module(x).sum().backward()  # trainable as-is (retraining happens elsewhere)


def test_graph_module_input() -> None:
    block, x = make("basic_pair")
    gm = fx.symbolic_trace(block)
    res = prune_block(gm, x, 0.8)
    assert isinstance(res.module, fx.GraphModule)
    assert res.report.params_after == prune_block(block, x, 0.8).report.params_after
    assert run(res.module, x).shape == run(block, x).shape
    assert count_parameters(gm) == count_parameters(block)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, True, "0.5", None])
def test_invalid_sparsity(bad) -> None:
    block, x = make("basic")
    with pytest.raises(LegoCompileError, match="sparsity"):
        prune_block(block, x, bad)


def test_user_errors() -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(LegoCompileError, match="trace"):
        prune_block(Untraceable(), torch.randn(1, 4, 4, 4), 0.5)
    block, x = make("basic")
    with pytest.raises(LegoCompileError, match="example input"):
        prune_block(block, torch.randn(1, 3, 8, 8), 0.5)
    arch = prune_block(block, x, 0.5).architecture
    with pytest.raises(LegoCompileError, match="does not have"):
        apply_architecture(block, {"nope.conv": arch["conv1"]})
    with pytest.raises(LegoCompileError, match="BatchNorm2d"):
        apply_architecture(block, {"conv1": arch["bn1"]})
    with pytest.raises(LegoCompileError):
        apply_architecture(BasicBlock(32, 32), {"conv1": {"type": "Conv2d", "in_channels": 32}})


def _nearest_multiple_reference(channels: int, sparsity: float, multiple: int) -> set[int]:
    """Brute force: the multiples of ``multiple`` in 1..channels nearest to the plain kept count (ties: any of
    them), or ``channels`` when no multiple reaches it; groups no wider than one multiple keep the plain count."""
    target = (1 - sparsity) * channels
    if channels <= multiple:
        return {max(1, round(target))}
    candidates = list(range(multiple, channels + 1, multiple)) + [channels]
    best = min(abs(c - target) for c in candidates)
    nearest = {c for c in candidates if abs(c - target) <= best + 1e-9}
    # a width between the last multiple and `channels` is only reached by rounding up past `channels`
    return {c for c in nearest if c % multiple == 0} | ({channels} if channels in nearest else set())


@pytest.mark.parametrize("multiple", [1, 8, 16, 32])
def test_kept_channels_is_the_nearest_multiple(multiple: int) -> None:
    for channels in range(1, 140):
        for sparsity in (0.0, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.8, 0.9, 0.95):
            n = kept_channels(channels, sparsity, multiple)
            assert 1 <= n <= channels
            if channels > multiple and n != channels:
                assert n % multiple == 0
            if multiple == 1:
                assert n == max(1, round((1 - sparsity) * channels))
            else:
                assert n in _nearest_multiple_reference(channels, sparsity, multiple), (channels, sparsity, n)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_channel_multiple_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(LegoCompileError, match="channel_multiple must be a positive integer"):
        prune_block(*make("basic"), 0.4, channel_multiple=bad)


@pytest.mark.parametrize("name", ["basic", "basic_down", "bottleneck", "vgg", "head"])
@pytest.mark.parametrize("multiple", [8, 16])
def test_rounded_widths_are_multiples_and_still_exact(name: str, multiple: int) -> None:
    block, x = make(name)
    res = prune_block(block, x, 0.4, channel_multiple=multiple)
    check_consistent(res.module, res.report)
    for g in res.report.groups:
        assert g.channels_after % multiple == 0 or g.channels_after == g.channels_before or g.channels_before <= multiple
    assert res.report.to_dict()["channel_multiple"] == multiple
    assert res.report.to_dict()["param_sparsity"] == pytest.approx(1 - count_parameters(res.module)
                                                                    / count_parameters(block))
    np.testing.assert_allclose(onnx_outputs(res.module, x), run(res.module, x).numpy(), rtol=1e-4, atol=1e-4)
