"""The probe's memory figures: repeatable, explainable (weights as the floor), and ordered as pruning orders them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from legocompile.export.onnx_export import onnx_bytes
from legocompile.profile.probe import MEMORY_METHOD, ProbeEngine, run_probe

SHAPE = (1, 32, 16, 16)


def _block(width: int) -> nn.Module:
    """A residual-style block whose inner width pruning shrinks; boundary shapes stay (N, 32, 16, 16)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 32, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    x = torch.zeros(SHAPE)
    paths = {}
    for name, width in (("original", 256), ("pruned", 128), ("pruned-more", 32)):
        paths[name] = d / f"{name}.onnx"
        paths[name].write_bytes(onnx_bytes(_block(width), x))
    np.save(d / "x.npy", np.zeros(SHAPE, np.float32))
    return d, paths


def _memory(engines) -> dict[str, dict]:
    d, paths = engines
    names = list(paths)
    probe = [ProbeEngine(paths[n], 0, "fp32", SHAPE, SHAPE) for n in names]
    r = run_probe(probe, threads=2, warmup=1, runs=1, contexts={"fp32": [0]}, overhead_context="fp32",
                  chain_input=d / "x.npy", latency=False)
    assert r["memory_method"] == MEMORY_METHOD
    return {n: {"memory_bytes": m, **detail} for n, m, detail in zip(names, r["memory_bytes"], r["memory_detail"])}


def test_memory_is_repeatable_and_ordered_by_pruning(engines):
    first, second = _memory(engines), _memory(engines)
    for name in first:
        a, b = first[name]["memory_bytes"], second[name]["memory_bytes"]
        assert abs(a - b) <= 0.05 * max(a, b), (name, a, b)
        # the weights are the floor: everything ORT keeps besides them comes on top
        assert a >= first[name]["initializer_bytes"] > 0
    for run in (first, second):
        assert run["original"]["memory_bytes"] > run["pruned"]["memory_bytes"] > run["pruned-more"]["memory_bytes"]
