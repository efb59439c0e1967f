"""Tests for the built-in example: models, dataset adapter and shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx
from safetensors.torch import load_file
from torch import nn

from legocompile.errors import LegoCompileError
from legocompile.examples import (
    EXAMPLE_INPUT_SHAPE,
    WEIGHTS_PATH,
    example_metadata,
    load_example_model,
)
from legocompile.examples.digits import dataset, load_splits
from legocompile.examples.resnet import (
    BasicBlock,
    BottleneckBlock,
    resnet18_digits,
    resnet_bottleneck_tiny,
)

MAX_WEIGHTS_BYTES = 12 * 1000 * 1000


@pytest.fixture(scope="module")
def example_model() -> nn.Module:
    return load_example_model()


def test_resnet18_structure_and_shapes() -> None:
    model = resnet18_digits(width=8, num_classes=7).eval()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 7)
    for name in ("conv1", "bn1", "relu", "avgpool", "fc"):
        assert hasattr(model, name)
    assert isinstance(model.relu, nn.ReLU)
    for i, (planes, stride) in enumerate([(8, 1), (16, 2), (32, 2), (64, 2)], start=1):
        layer = getattr(model, f"layer{i}")
        assert isinstance(layer, nn.Sequential) and len(layer) == 2
        first, second = layer
        assert isinstance(first, BasicBlock) and isinstance(second, BasicBlock)
        assert first.conv1.stride == (stride, stride)
        assert first.conv2.out_channels == planes
        assert len(second.shortcut) == 0  # identity
        assert len(first.shortcut) == (0 if i == 1 else 2)
    assert model.fc.in_features == 64


def test_resnet18_default_width_shapes() -> None:
    model = resnet18_digits().eval()
    with torch.no_grad():
        assert model(torch.zeros(EXAMPLE_INPUT_SHAPE)).shape == (1, 10)
    assert model.layer4[1].conv2.out_channels == 256


def test_bottleneck_tiny_shapes() -> None:
    model = resnet_bottleneck_tiny().eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert not hasattr(model, "layer4")
    assert all(isinstance(b, BottleneckBlock) for b in model.layer3)
    assert model.layer3[1].conv3.out_channels == 8 * 4 * 4
    assert model.fc.in_features == 8 * 4 * 4


@pytest.mark.parametrize("factory", [resnet18_digits, resnet_bottleneck_tiny])
def test_models_are_fx_traceable(factory) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_weights_file_size() -> None:
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size <= MAX_WEIGHTS_BYTES


def test_weights_include_bn_running_stats() -> None:
    state = load_file(str(WEIGHTS_PATH))
    assert "bn1.running_mean" in state and "layer4.1.bn2.running_var" in state
    assert set(state) == set(resnet18_digits(example_metadata()["width"]).state_dict())


def test_metadata_fields() -> None:
    meta = example_metadata()
    assert meta["model"] == "resnet18_digits"
    assert meta["width"] == 32
    assert meta["num_test"] == 360
    assert 0.97 <= meta["test_accuracy"] <= 1.0
    for key in ("epochs", "seed", "torch_version"):
        assert key in meta


def test_shipped_model_reproduces_recorded_accuracy(example_model: nn.Module) -> None:
    assert not example_model.training
    _, (x_eval, y_eval) = dataset()
    with torch.no_grad():
        preds = example_model(torch.from_numpy(x_eval)).argmax(1).numpy()
    accuracy = float((preds == y_eval).mean())
    assert abs(accuracy - example_metadata()["test_accuracy"]) <= 0.005


def test_split_sizes_and_dtypes() -> None:
    s = load_splits()
    assert s.x_train.shape == (1437, 1, 32, 32) and s.y_train.shape == (1437,)
    assert s.x_test.shape == (360, 1, 32, 32) and s.y_test.shape == (360,)
    assert s.x_train.dtype == np.float32 and s.y_test.dtype == np.int64
    assert set(np.unique(s.y_test)) == set(range(10))
    # Normalization: training pixels are roughly zero-mean, unit-variance.
    assert abs(float(s.x_train.mean())) < 0.01
    assert abs(float(s.x_train.std()) - 1.0) < 0.01


def test_dataset_provider_contract() -> None:
    calib, (x_eval, y_eval) = dataset(num_calibration=64)
    assert calib.shape == (64, 1, 32, 32) and calib.dtype == np.float32
    assert x_eval.shape == (360, 1, 32, 32) and x_eval.dtype == np.float32
    assert y_eval.shape == (360,) and y_eval.dtype == np.int64
    assert dataset()[0].shape == (256, 1, 32, 32)


def test_dataset_is_deterministic() -> None:
    load_splits.cache_clear()
    calib1, (x1, y1) = dataset(32)
    load_splits.cache_clear()
    calib2, (x2, y2) = dataset(32)
    np.testing.assert_array_equal(calib1, calib2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(calib1, load_splits().x_train[:32])


def test_calibration_and_eval_do_not_overlap() -> None:
    calib, (x_eval, _) = dataset(num_calibration=1437)
    calib_rows = {row.tobytes() for row in calib.reshape(len(calib), -1)}
    eval_rows = {row.tobytes() for row in x_eval.reshape(len(x_eval), -1)}
    assert not calib_rows & eval_rows


def test_dataset_rejects_bad_calibration_size() -> None:
    with pytest.raises(LegoCompileError):
        dataset(num_calibration=0)
    with pytest.raises(LegoCompileError):
        dataset(num_calibration=10_000)
