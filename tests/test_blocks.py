"""Tests for legocompile.blocks: cutting models into chains of single-tensor blocks."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from legocompile.blocks import Block, partition, verify_partition
from legocompile.errors import LegoCompileError
from legocompile.outputs import as_outputs

RGB = (1, 3, 32, 32)
GRAY = (1, 1, 32, 32)

ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "vgg": (zoo.TinyVGG, RGB),
    "mobilenetv2": (zoo.TinyMobileNetV2, RGB),
    "resnet_bottleneck": (zoo.resnet_bottleneck, RGB),
    "resnet18": (zoo.resnet18, RGB),
    "resnet18_gray": (lambda: zoo.resnet18(in_channels=1), GRAY),
    "input_skip": (zoo.InputSkipNet, GRAY),
    "mid_skip": (zoo.MidSkipNet, GRAY),
    "shared_weight": (zoo.SharedWeightNet, GRAY),
    "shape_branch_vgg": (zoo.ShapeBranchVGG, GRAY),  # torch.fx alone refuses it: branches on shapes
    "two_head": (zoo.TwoHeadNet, GRAY),  # returns (logits, box, heatmap): the last block carries the tuple
    "early_output": (zoo.EarlyOutputNet, GRAY),  # returns an early feature map too: no cut while it is pending
}

RESNET18_NAMES = [
    "conv1-relu",
    *(f"layer{i}.{j}" for i in range(1, 4) for j in range(2)),
    "layer4.0",
    "layer4.1-avgpool",
    "fc",
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded; intra-op threads only add contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str, batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model with non-trivial BN statistics, and a matching random input."""
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    model = zoo.randomize_bn(factory())
    return model, torch.randn(batch, *shape[1:])


def names(blocks: list[Block]) -> list[str]:
    return [b.name for b in blocks]


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Reference MACs of a model's conv/linear modules, counted with forward hooks."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * kernel
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("max_blocks", [None, 3])
def test_auto_chain_equals_model(name: str, max_blocks: int | None) -> None:
    model, x = make(name, batch=2)
    blocks = partition(model, x, max_blocks=max_blocks)
    assert 1 <= len(blocks) <= (max_blocks or len(blocks))
    assert verify_partition(model, blocks, x) < 1e-5
    assert blocks[0].input_shape == tuple(x.shape)
    for before, after in zip(blocks, blocks[1:]):
        assert before.output_shape == after.input_shape
    assert all(b.num_outputs == 1 for b in blocks[:-1])
    with torch.no_grad():
        assert blocks[-1].output_shapes == tuple(tuple(t.shape) for t in as_outputs(model.eval()(x)))
    assert len(set(names(blocks))) == len(blocks)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names(blocks))
    assert all(isinstance(b.module, torch.fx.GraphModule) and not b.module.training for b in blocks)


def test_chain_works_at_another_batch_size() -> None:
    model, x = make("resnet18")
    blocks = partition(model, x)
    assert verify_partition(model, blocks, torch.randn(5, *x.shape[1:])) < 1e-5


def test_resnet18_auto_cuts_once_per_residual_block() -> None:
    model, x = make("resnet18")
    assert names(partition(model, x, max_blocks=None)) == RESNET18_NAMES
    merged = names(partition(model, x, max_blocks=8))
    assert merged == ["conv1-layer1.0", *RESNET18_NAMES[2:8], "layer4.1-fc"]
    assert names(partition(model, x, max_blocks=1)) == ["conv1-fc"]


def test_bottleneck_resnet_cuts_between_blocks_only() -> None:
    model, x = make("resnet_bottleneck")
    assert names(partition(model, x, max_blocks=None)) == [
        "conv1-relu", "layer1.0", "layer1.1", "layer2", "layer3-avgpool", "fc"
    ]


def test_vgg_cuts_after_every_conv_and_linear_layer() -> None:
    model, x = make("vgg")
    assert names(partition(model, x, max_blocks=None)) == [
        "features.0-features.2",
        "features.3-features.6",
        "features.7-features.9",
        "features.10-pool",
        "classifier.0-classifier.1",
        "classifier.2",
    ]


def test_mobilenetv2_never_cuts_inside_a_residual_block() -> None:
    model, x = make("mobilenetv2")
    got = names(partition(model, x, max_blocks=None))
    residual = [f"features.{i}" for i, block in enumerate(model.features) if getattr(block, "use_residual", False)]
    assert residual == ["features.1", "features.3", "features.5"]
    for path in residual:
        assert path in got
        assert not any(n.startswith(path + ".") for n in got)
    # stride-2 inverted residuals have no skip: they may be cut between their convs
    assert [n for n in got if n.startswith("features.2.")] == [
        "features.2.conv.0-features.2.conv.2",
        "features.2.conv.3-features.2.conv.5",
        "features.2.conv.6-features.2.conv.7",
    ]


def test_skip_regions_form_one_block() -> None:
    model, x = make("input_skip")
    assert names(partition(model, x, max_blocks=None)) == ["down-up", "head"]
    assert names(partition(model, x, max_blocks=1)) == ["down-head"]
    model, x = make("mid_skip")
    assert names(partition(model, x, max_blocks=None)) == ["stem", "body", "head"]


def test_names_are_stable_across_calls() -> None:
    for name in ("resnet18", "mobilenetv2"):
        model, x = make(name)
        assert names(partition(model, x, max_blocks=None)) == names(partition(model, x, max_blocks=None))
        assert names(partition(model, x, max_blocks=4)) == names(partition(model, x, max_blocks=4))


@pytest.mark.parametrize("name", ["vgg", "mobilenetv2", "resnet_bottleneck", "resnet18", "shared_weight"])
def test_macs_positive_and_sum_to_model(name: str) -> None:
    model, x = make(name)
    blocks = partition(model, x, max_blocks=None)
    assert all(b.macs > 0 for b in blocks)
    if name == "shared_weight":  # functional convs: stem 1->4, then twice 4->4, all 3x3 at 32x32
        expected = 4 * 32 * 32 * 9 * (1 + 4 + 4)
    else:
        expected = conv_linear_macs(model, x)
    assert sum(b.macs for b in blocks) == expected


def test_model_left_untouched() -> None:
    model, x = make("resnet18")
    model.train()
    model.layer2.eval()  # mixed flags must survive too
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = partition(model, x)
    verify_partition(model, blocks, x)
    assert {n: m.training for n, m in model.named_modules()} == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_blocks_own_their_parameters() -> None:
    model, x = make("resnet18")
    blocks = partition(model, x)
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    block_ptrs = [{p.data_ptr() for p in b.module.parameters()} for b in blocks]
    assert all(ptrs and not ptrs & model_ptrs for ptrs in block_ptrs)
    before = model.layer1[1].conv1.weight.clone()
    with torch.no_grad():
        blocks[1].module.get_submodule("layer1.1.conv1").weight.zero_()
    assert torch.equal(model.layer1[1].conv1.weight, before)
    assert verify_partition(model, partition(model, x), x) < 1e-5


def test_shared_parameter_is_copied_into_each_block() -> None:
    model, x = make("shared_weight")
    blocks = partition(model, x, max_blocks=None)
    users = [b for b in blocks if hasattr(b.module, "weight")]
    assert len(users) == 2
    assert users[0].module.weight.data_ptr() != users[1].module.weight.data_ptr()
    with torch.no_grad():
        users[0].module.weight.zero_()
    assert model.weight.abs().sum() > 0 and users[1].module.weight.abs().sum() > 0


def test_explicit_module_list() -> None:
    model, x = make("resnet18")
    blocks = partition(model, x, ["layer1", "layer2.1", "fc"])
    assert names(blocks) == ["conv1-layer1", "layer2", "layer3-fc"]
    assert verify_partition(model, blocks, x) < 1e-5
    assert names(partition(model, x, "layer1.0, layer4, fc")) == ["conv1-layer1.0", "layer1.1-layer4", "avgpool-fc"]
    assert names(partition(model, x, ["fc"])) == ["conv1-fc"]


def test_explicit_last_module_followed_by_functional_ops_covers_the_model() -> None:
    model, x = make("shared_weight")  # functional convs and a mean follow the only module
    blocks = partition(model, x, ["stem"])
    assert names(blocks) == ["stem"]
    assert blocks[0].output_shape == (1, 4)
    assert verify_partition(model, blocks, x) < 1e-5
    model, x = make("mobilenetv2")
    with pytest.raises(LegoCompileError, match="'classifier' runs after it — the chain would not cover the model"):
        partition(model, x, ["features.3", "features"])


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (
            ["layer1.0.conv1", "fc"],
            r"cannot cut after 'layer1\.0\.conv1': 2 tensors cross the cut \(layer1\.0\.conv1, relu\) — "
            r"a block boundary inside the chain carries exactly one tensor .*; choose a boundary where exactly one "
            r"tensor crosses",
        ),
        (
            ["layer1.0.bn2", "fc"],
            r"cannot cut after 'layer1\.0\.bn2': 2 tensors cross the cut \(layer1\.0\.bn2, relu\)",
        ),
        (["layer9", "fc"], r"unknown module 'layer9' in blocks; top-level modules are: conv1, bn1, relu, layer1"),
        (["layer1", "layer2"], r"'layer3\.0\.\S+' runs after it — the chain would not cover the model"),
        (["layer2", "layer1", "fc"], r"block 'layer1' ends at or before the previous block boundary 'layer2'"),
        ([], r"blocks must be 'auto' or a list of module paths"),
    ],
)
def test_explicit_module_list_errors(spec: list[str], pattern: str) -> None:
    model, x = make("resnet18")
    with pytest.raises(LegoCompileError, match=pattern):
        partition(model, x, spec)


def test_explicit_module_never_called() -> None:
    model, x = make("resnet18")
    model.unused = nn.Linear(2, 2)
    with pytest.raises(LegoCompileError, match="module 'unused' is never called"):
        partition(model, x, ["unused"])


def test_untraceable_model_names_class_and_cause() -> None:
    with pytest.raises(LegoCompileError, match=r"cannot trace DataDependentNet with torch\.fx: .*control flow"):
        partition(zoo.DataDependentNet(), torch.randn(*GRAY))


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (zoo.DictOutputNet(), r"DictOutputNet\.forward\(\) is a dict, not a tensor"),
        (zoo.TwoInputNet(), r"TwoInputNet\.forward\(\) takes 2 inputs \(x, y\)"),
    ],
)
def test_models_without_single_tensor_io_are_rejected(model: nn.Module, pattern: str) -> None:
    with pytest.raises(LegoCompileError, match=pattern):
        partition(model, torch.randn(*GRAY))


def test_bad_arguments() -> None:
    model, x = make("vgg")
    with pytest.raises(LegoCompileError, match="max_blocks must be at least 1"):
        partition(model, x, max_blocks=0)
    with pytest.raises(LegoCompileError, match="example_input must be a torch.Tensor"):
        partition(model, x.numpy())  # type: ignore[arg-type]
    with pytest.raises(LegoCompileError, match=r"running TinyVGG on the example input of shape \(1, 1, 32, 32\)"):
        partition(model, torch.randn(*GRAY))


def test_verify_partition_detects_a_wrong_chain() -> None:
    model, x = make("resnet18")
    blocks = partition(model, x)
    torch.manual_seed(1)
    assert verify_partition(zoo.randomize_bn(zoo.resnet18(), seed=1), blocks, x) > 1e-3
    with pytest.raises(LegoCompileError, match="chain of blocks returns shape"):
        verify_partition(model, blocks[:-1], x)


def test_blocks_export_to_onnx() -> None:
    import onnx

    ort = pytest.importorskip("onnxruntime")
    model, x = make("resnet18")
    blocks = partition(model, x)
    value = x
    for block in blocks:
        buffer = io.BytesIO()
        torch.onnx.export(block.module, (value,), buffer, opset_version=17, dynamo=False)
        proto = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(proto)
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: value.numpy()})
        with torch.no_grad():
            value = block.module(value)
        assert tuple(got.shape) == block.output_shape
        np.testing.assert_allclose(got, value.numpy(), rtol=1e-4, atol=1e-5)
