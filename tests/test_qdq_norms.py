"""int8 QDQ of normalization layers: their 1-D scales are quantized per channel on axis 0, so ORT's quantizer no
longer warns "Axis 1 is out-of-range for weight ..." once per norm layer (about 60 times for a DenseNet)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import zoo


class PreActNet(nn.Module):
    """DenseNet-style pre-activation (BN-ReLU-conv, BN after a concatenation): BatchNorms no conv absorbs on export."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        c = torch.cat([s, s * 0.5], 1)
        y = self.conv1(torch.relu(self.bn1(c)))
        z = self.conv2(torch.relu(self.bn2(torch.cat([c, y], 1))))
        return self.head(z.mean((2, 3)))


def test_compiling_norm_layers_to_int8_prints_no_axis_warning(tmp_path, caplog, capfd):
    import legocompile
    from legocompile.bundle import read_bundle
    from legocompile.config import ProfileConfig

    torch.manual_seed(0)
    model = zoo.randomize_bn(PreActNet()).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    with caplog.at_level(logging.DEBUG):
        out = legocompile.compile(
            model, x[:1], calibration_data=x, eval_data=(x, y), out=tmp_path / "b", work_dir=tmp_path / "w",
            precisions=("fp32", "int8"), max_blocks=1, profile=ProfileConfig(warmup=2, runs=50), additivity_samples=0,
        )
    printed = capfd.readouterr()
    assert "out-of-range" not in printed.out + printed.err
    assert not [r for r in caplog.records if "out-of-range" in r.getMessage()]

    # the cause is fixed, not hidden: both BatchNorm scales are dequantized per channel, along their only axis
    m = read_bundle(out)
    qdq = onnx.load(str(out / m.blocks[0].option("s0", "int8").engine))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    norms = [n for n in qdq.graph.node if n.op_type == "BatchNormalization"]
    assert len(norms) == 2
    for bn in norms:
        dq = producers[bn.input[1]]
        assert dq.op_type == "DequantizeLinear"
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert axis == 0 and inits[dq.input[1]].shape == inits[dq.input[0]].shape  # one scale per channel
    assert m.blocks[0].option("s0", "int8").accuracy_gate["rel_l2"] < 0.05
