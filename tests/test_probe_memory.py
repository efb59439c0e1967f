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


def test_unsteady_memory_is_measured_again_in_a_new_process(monkeypatch):
    from legocompile.profile import probe

    unsteady = {"memory_bytes": 2_300_000, "initializer_bytes": 1, "per_engine_deltas": [1_550_000, 2_500_000] * 4}
    steady = {"memory_bytes": 1_560_000, "initializer_bytes": 1, "per_engine_deltas": [1_550_000, 1_570_000] * 4}
    monkeypatch.setattr(probe, "_memory_child", lambda *a: unsteady)  # the forked child sees this
    spawned = []
    monkeypatch.setattr(probe, "_memory_spawned", lambda args: spawned.append(args) or steady)
    engine = {"path": "e.onnx", "input_shape": [1, 2], "output_shapes": [[1, 2]]}
    (m,) = probe._measure_memory_forked([engine], 2)
    assert m["memory_bytes"] == 1_560_000 and m["attempts"] == 2 and len(spawned) == 1
    monkeypatch.setattr(probe, "_memory_child", lambda *a: steady)
    (m,) = probe._measure_memory_forked([engine], 2)
    assert m["attempts"] == 1 and len(spawned) == 1  # steady at once: no second process


def test_frame_gap_idles_before_every_timed_frame(engines):
    """With a gap, every timed chain run waits that long first (runs=50: 50 for the engine, 100 for the whole
    chain), so the probe cannot finish sooner than the gaps add up to; the sample counts stay the same."""
    import time

    d, paths = engines
    probe = [ProbeEngine(paths["pruned-more"], 0, "fp32", SHAPE, SHAPE)]
    kw = dict(threads=1, warmup=2, runs=50, contexts={"fp32": [0]}, overhead_context="fp32",
              chain_input=d / "x.npy", memory=False)
    t0 = time.perf_counter()
    hot = run_probe(probe, **kw)
    t_hot = time.perf_counter() - t0
    t0 = time.perf_counter()
    gapped = run_probe(probe, frame_gap_ms=20.0, **kw)
    t_gap = time.perf_counter() - t0
    assert t_gap >= (50 + 100) * 0.020 and t_gap > t_hot + 2.5
    assert gapped["latency"][0]["runs"] == hot["latency"][0]["runs"] == 50
