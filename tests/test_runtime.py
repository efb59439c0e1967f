"""The chained runtime: outputs equal to PyTorch within each precision's tolerance, switching, thread safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from legocompile import Runtime
from legocompile.errors import LegoCompileError
from legocompile.optimize import InfeasibleBudgetError
from legocompile.optimize.select import predicted_accuracy

# max |runtime - PyTorch| relative to max |PyTorch logits|, per precision (all blocks at that precision)
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "int8": 0.25}


@pytest.fixture()
def rt(tiny_bundle):
    return Runtime.load(tiny_bundle["path"])


def _all(rt, precision):
    return [("s0", precision)] * len(rt.blocks)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_output_matches_pytorch(rt, tiny_bundle, precision):
    x = tiny_bundle["eval"][0][:32]
    with torch.no_grad():
        ref = tiny_bundle["model"](torch.tensor(x)).numpy()
    rt.select(selection=_all(rt, precision))
    y = rt(x)
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel < TOLERANCE[precision], rel
    if precision == "int8":  # int8 changes the numbers but keeps the decisions almost always
        assert np.mean(y.argmax(1) == ref.argmax(1)) >= 0.9


def test_batch_sizes_and_repeat_calls_are_consistent(rt, tiny_bundle):
    x = tiny_bundle["eval"][0][:8]
    full = rt(x)
    for i in range(8):
        np.testing.assert_array_equal(rt(x[i : i + 1])[0], full[i])
    np.testing.assert_array_equal(rt(x), full)  # buffers reused, same answer


def test_returned_array_is_not_a_live_buffer(rt, tiny_bundle):
    x = tiny_bundle["eval"][0]
    a = rt(x[:1])
    a_copy = a.copy()
    rt(x[1:2])
    np.testing.assert_array_equal(a, a_copy)


def test_switching_reuses_loaded_engines(rt):
    rt.select(selection=_all(rt, "int8"))
    int8_engines = rt._plan.engines
    rt.select(selection=_all(rt, "fp32"))
    rt.select(selection=_all(rt, "int8"))
    assert all(a is b for a, b in zip(rt._plan.engines, int8_engines))
    assert len(rt._engines) == 2 * len(rt.blocks)


def test_budget_selection_respects_budget_and_is_optimal(rt):
    m = rt.manifest
    overhead = m.teacher["chain_overhead_ms"]
    assert overhead >= 0
    fastest = sum(min(o.latency_ms for o in b.options) for b in m.blocks) + overhead
    slowest = sum(max(o.latency_ms for o in b.options) for b in m.blocks) + overhead
    for budget in np.linspace(fastest, slowest, 5):
        sel = rt.select(latency_ms=float(budget))
        assert sel.latency_ms <= budget + 1e-9
        # brute force over all selections
        import itertools

        best = max(
            predicted_accuracy(m.teacher["accuracy"], [o.accuracy_drop for o in combo])
            for combo in itertools.product(*[b.options for b in m.blocks])
            if sum(o.latency_ms for o in combo) + overhead <= budget
        )
        assert sel.accuracy == pytest.approx(best, abs=1e-12)


def test_infeasible_budget_names_the_minimum(rt):
    m = rt.manifest
    fastest = sum(min(o.latency_ms for o in b.options) for b in m.blocks) + m.teacher["chain_overhead_ms"]
    with pytest.raises(InfeasibleBudgetError) as e:
        rt.select(latency_ms=fastest * 0.5)
    assert e.value.min_latency_ms == pytest.approx(fastest)
    assert "\n" not in str(e.value)


def test_concurrent_calls_never_mix_selections(rt, tiny_bundle):
    x = tiny_bundle["eval"][0][:4]
    sel_a, sel_b = _all(rt, "fp32"), _all(rt, "int8")
    rt.select(selection=sel_a)
    ya = rt(x)
    rt.select(selection=sel_b)
    yb = rt(x)
    assert not np.array_equal(ya, yb)
    stop = threading.Event()
    bad: list[str] = []

    def infer():
        while not stop.is_set():
            y = rt(x)
            if not (np.array_equal(y, ya) or np.array_equal(y, yb)):
                bad.append("mixed output")

    def switch():
        for i in range(200):
            rt.select(selection=sel_a if i % 2 else sel_b)
        stop.set()

    threads = [threading.Thread(target=infer) for _ in range(3)] + [threading.Thread(target=switch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not bad


@pytest.mark.parametrize(
    "selection, message",
    [
        ([("s0", "fp32")], "selection has 1 entries"),
        ({"nope": ("s0", "fp32")}, "unknown block 'nope'"),
        (None, "no option s9/fp32"),
    ],
)
def test_bad_selections(rt, selection, message):
    if selection is None:
        selection = [("s9", "fp32")] * len(rt.blocks)
    with pytest.raises(LegoCompileError, match=message):
        rt.select(selection=selection)


def test_bad_input_shape(rt):
    with pytest.raises(LegoCompileError, match="does not match"):
        rt(np.zeros((1, 3, 32, 32), np.float32))


def test_shared_thread_pool_in_a_fresh_process(tiny_bundle):
    """The default runtime (one process-wide ORT pool) gives the same outputs as per-session pools."""
    x = tiny_bundle["eval"][0][:4]
    rt = Runtime.load(tiny_bundle["path"])
    ref = rt(x)
    script = textwrap.dedent(
        f"""
        import os, sys, numpy as np
        os.environ["LEGOCOMPILE_SHARED_THREADPOOL"] = "1"
        from legocompile import Runtime
        from legocompile.backends.onnxrt import session
        rt = Runtime.load({str(tiny_bundle['path'])!r})
        assert session._state["global"] is True
        np.save(sys.argv[1], rt(np.load(sys.argv[2])))
        """
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "x.npy", x)
        subprocess.run([sys.executable, "-c", script, str(Path(d) / "y.npy"), str(Path(d) / "x.npy")], check=True,
                       env={**__import__("os").environ, "LEGOCOMPILE_SHARED_THREADPOOL": "1"})
        y = np.load(Path(d) / "y.npy")
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
