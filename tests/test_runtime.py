"""The chained runtime: outputs equal to PyTorch within each precision's tolerance, switching, thread safety,
unloading engines outside the selection, lazy loading from verified bytes, and leaving other ORT users alone."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from legocompile import Runtime
from legocompile.errors import LegoCompileError
from legocompile.optimize import InfeasibleBudgetError
from legocompile.optimize.select import predicted_accuracy

# max |runtime - PyTorch| relative to max |PyTorch logits|, per precision (all blocks at that precision)
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "int8": 0.25}


@pytest.fixture(autouse=True)
def verified_reads(monkeypatch):
    """Every ``read_verified_bytes`` call the Runtime makes (through the real function once it exists)."""
    from legocompile.bundle import reader

    real = reader.read_verified_bytes
    calls: list = []

    def recording(root, rel, sha256):
        calls.append((Path(root), rel, sha256))
        return real(root, rel, sha256)

    monkeypatch.setattr(reader, "read_verified_bytes", recording, raising=False)
    return calls


def _run_script(script: str, *args: str, env: dict | None = None) -> str:
    env = dict(os.environ if env is None else env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


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
    for b in (2, 3, 5, 6, 7):  # more batch sizes than a thread keeps buffers for: old ones are dropped, not mixed
        np.testing.assert_array_equal(rt(x[:b]), full[:b])


def test_returned_array_is_not_a_live_buffer(rt, tiny_bundle):
    x = tiny_bundle["eval"][0]
    a = rt(x[:1])
    a_copy = a.copy()
    rt(x[1:2])
    np.testing.assert_array_equal(a, a_copy)


# ------------------------------------------------------------------------------------------ loading and unloading
def test_load_is_lazy_and_first_call_uses_the_original_selection(tiny_bundle, verified_reads):
    rt = Runtime.load(tiny_bundle["path"])
    assert rt.loaded_engines() == [] and verified_reads == []
    assert [(o.variant, o.precision) for o in rt.selection.options] == _all(rt, "fp32")
    x = tiny_bundle["eval"][0][:4]
    y = rt(x)
    assert rt.loaded_engines() == sorted((b.name, "s0", "fp32") for b in rt.blocks)
    with torch.no_grad():
        ref = tiny_bundle["model"](torch.tensor(x)).numpy()
    assert np.abs(y - ref).max() / np.abs(ref).max() < TOLERANCE["fp32"]


def test_engines_load_from_verified_bytes(tiny_bundle, verified_reads):
    rt = Runtime.load(tiny_bundle["path"])
    rt.select(selection=_all(rt, "int8"))
    expected = [(Path(tiny_bundle["path"]), o.engine, o.sha256) for o in rt.selection.options]
    assert verified_reads == expected


def test_an_engine_changed_after_load_is_refused(tiny_bundle, tmp_path):
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["path"], root)
    rt = Runtime.load(root)  # verified here
    target = root / rt.blocks[1].option("s0", "int8").engine
    target.write_bytes(target.read_bytes() + b"\0")  # changed after the check, before any engine is loaded
    with pytest.raises(LegoCompileError, match="checksum"):
        rt.select(selection=_all(rt, "int8"))
    rt.select(selection=_all(rt, "fp32"))  # untouched engines still load


def test_switching_unloads_engines_outside_the_selection(rt, tiny_bundle):
    x = tiny_bundle["eval"][0][:2]
    rt.select(selection=_all(rt, "fp32"))
    rt(x)
    fp32_sessions = [weakref.ref(e.engine.session) for e in rt._plan.engines]
    rt.select(selection=_all(rt, "int8"))
    rt(x)
    gc.collect()  # not needed under CPython's refcounting; makes the check independent of it
    assert rt.loaded_engines() == sorted((b.name, "s0", "int8") for b in rt.blocks)
    assert all(r() is None for r in fp32_sessions), "ORT sessions of unselected engines must be freed"
    loads = rt.loads
    rt.select(selection=_all(rt, "fp32"))
    assert rt.loads == loads + len(rt.blocks)  # keep_warm_mb=0: switching back loads again
    mixed = [("s0", "int8")] + _all(rt, "fp32")[1:]
    rt.select(selection=mixed)
    assert rt.loads == loads + len(rt.blocks) + 1  # only the block that changed loads


def test_keep_warm_set_stays_within_its_budget(tiny_bundle):
    m = Runtime.load(tiny_bundle["path"]).manifest
    int8_bytes = sum(b.option("s0", "int8").memory_bytes for b in m.blocks)
    fp32_bytes = sum(b.option("s0", "fp32").memory_bytes for b in m.blocks)
    rt = Runtime.load(tiny_bundle["path"], keep_warm_mb=max(int8_bytes, fp32_bytes) / 1e6)
    rt.select(selection=_all(rt, "fp32"))
    rt.select(selection=_all(rt, "int8"))
    loads = rt.loads
    rt.select(selection=_all(rt, "fp32"))  # warm: nothing to load
    rt.select(selection=_all(rt, "int8"))
    assert rt.loads == loads
    assert rt.warm_bytes == fp32_bytes <= rt.keep_warm_bytes
    rt.select(selection=_all(rt, "fp16"))  # int8 and fp32 cannot both stay warm: the least recent (fp32) goes
    assert rt.warm_bytes <= rt.keep_warm_bytes
    assert {p for _, _, p in rt.loaded_engines()} == {"fp16", "int8"}
    with pytest.raises(LegoCompileError, match="keep_warm_mb"):
        Runtime.load(tiny_bundle["path"], keep_warm_mb=-1)


class _GatedEngine:
    def __init__(self, inner, backend) -> None:
        self.inner, self.backend, self.session = inner, backend, inner.session

    def bind(self, src, dst):
        run, backend = self.inner.bind(src, dst), self.backend

        def gated():
            gate = backend.gate
            if gate is not None:
                backend.entered.set()
                gate.wait(30)
            run()

        return gated


class _GatedBackend:
    """Wraps the ORT backend: engines' bound runs can be held at a gate, to keep a call in flight."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, engine):
        return _GatedEngine(self.inner.load(engine), self)


def test_a_call_in_flight_finishes_on_its_plan_while_its_engines_are_unselected(rt, tiny_bundle):
    x = tiny_bundle["eval"][0][:4]
    rt.select(selection=_all(rt, "fp32"))
    ref_fp32 = rt(x)
    gated = rt._backends["onnxruntime"] = _GatedBackend(rt._backend("onnxruntime"))
    rt.select(selection=_all(rt, "int8"))
    ref_int8 = rt(x)
    rt.select(selection=_all(rt, "fp32"))  # fp32 engines loaded through the gated backend
    sessions = [weakref.ref(e.engine.session) for e in rt._plan.engines]
    out: dict = {}
    gated.gate = threading.Event()
    worker = threading.Thread(target=lambda: out.setdefault("y", rt(x)))
    worker.start()
    assert gated.entered.wait(30)  # the worker is inside block 0 of the fp32 plan
    rt.select(selection=_all(rt, "int8"))  # the switch does not wait for it
    assert all(r() is not None for r in sessions), "engines of a call in flight must stay loaded"
    assert {p for _, _, p in rt.loaded_engines()} == {"fp32", "int8"}
    gate, gated.gate = gated.gate, None
    np.testing.assert_array_equal(rt(x), ref_int8)  # other threads already run the new plan
    gate.set()
    worker.join(30)
    np.testing.assert_array_equal(out["y"], ref_fp32)  # finished on its own plan, correctly
    assert all(r() is None for r in sessions), "the last call on the old plan frees its engines"
    assert {p for _, _, p in rt.loaded_engines()} == {"int8"}


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
    calls = [0]

    def infer():
        while not stop.is_set():
            y = rt(x)
            calls[0] += 1
            if not (np.array_equal(y, ya) or np.array_equal(y, yb)):
                bad.append("mixed output")

    def switch():  # every switch unloads the other selection's engines (keep_warm_mb=0) while calls run
        for i in range(100):
            rt.select(selection=sel_a if i % 2 else sel_b)
        stop.set()

    threads = [threading.Thread(target=infer) for _ in range(3)] + [threading.Thread(target=switch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not bad and calls[0] > 0
    gc.collect()
    assert {p for _, _, p in rt.loaded_engines()} == {"fp32"}  # the last selection's engines only


# ------------------------------------------------------------------------------------------ selecting
def test_budget_selection_respects_budget_and_is_optimal(rt):
    m = rt.manifest
    overhead = m.teacher["chain_overhead_ms"]
    assert overhead >= 0
    fastest = sum(min(o.latency_ms for o in b.options) for b in m.blocks) + overhead
    slowest = sum(max(o.latency_ms for o in b.options) for b in m.blocks) + overhead
    for budget in np.linspace(fastest, slowest, 5):
        sel = rt.select(latency_ms=float(budget))
        assert sel.latency_ms <= budget + 1e-9
        best = max(
            predicted_accuracy(m.teacher["accuracy"], [o.accuracy_drop for o in combo])
            for combo in itertools.product(*[b.options for b in m.blocks])
            if sum(o.latency_ms for o in combo) + overhead <= budget
        )
        assert sel.accuracy == pytest.approx(best, abs=1e-12)
        assert rt.loaded_engines() == sorted((b.name, o.variant, o.precision) for b, o in zip(m.blocks, sel.options))


def test_infeasible_budget_names_the_minimum(rt):
    m = rt.manifest
    fastest = sum(min(o.latency_ms for o in b.options) for b in m.blocks) + m.teacher["chain_overhead_ms"]
    with pytest.raises(InfeasibleBudgetError) as e:
        rt.select(latency_ms=fastest * 0.5)
    assert e.value.min_latency_ms == pytest.approx(fastest)
    assert "\n" not in str(e.value)


def test_explicit_selection_refuses_an_excluded_option(tiny_bundle):
    rt = Runtime.load(tiny_bundle["path"])
    blocks = list(rt.manifest.blocks)
    b = blocks[1]
    options = tuple(dataclasses.replace(o, excluded="slower than fp32 on this CPU (measured)") if o.precision == "int8"
                    else o for o in b.options)
    blocks[1] = dataclasses.replace(b, options=options)
    rt.manifest = dataclasses.replace(rt.manifest, blocks=tuple(blocks))
    with pytest.raises(LegoCompileError) as e:
        rt.select(selection=_all(rt, "int8"))
    msg = str(e.value)
    assert "\n" not in msg and b.name in msg and "s0/int8" in msg and "slower than fp32 on this CPU" in msg
    assert rt.loaded_engines() == []  # refused before loading anything
    rt.select(selection={blocks[0].name: ("s0", "int8")})  # not excluded elsewhere


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


# ------------------------------------------------------------------------------------------ threads, other ORT users
def test_a_plain_ort_session_works_beside_a_runtime(tiny_bundle, tmp_path):
    """An application that also runs its own model with ORT: a plain InferenceSession after Runtime.load + select +
    call works, in a fresh process with no legocompile environment variables."""
    x = tiny_bundle["eval"][0][:4]
    np.save(tmp_path / "x.npy", x)
    engine = Runtime.load(tiny_bundle["path"]).blocks[0].option("s0", "fp32").engine
    script = """
        import sys, numpy as np, onnxruntime as ort
        from legocompile import Runtime
        from legocompile.backends.onnxrt import session
        original_options = ort.SessionOptions
        rt = Runtime.load(sys.argv[1])
        rt.select(selection=[("s0", "int8")] * len(rt.blocks))
        x = np.load(sys.argv[3])
        rt(x)
        assert ort.SessionOptions is original_options  # nothing patched
        assert session.thread_mode() == "own"
        plain = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])  # ORT's defaults
        y = plain.run(None, {"x": x})[0]
        assert y.shape[0] == 4 and np.isfinite(y).all()
        rt(x)  # and the runtime still runs
        print("ok")
        """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGOCOMPILE_")}
    out = _run_script(script, str(tiny_bundle["path"]), str(Path(tiny_bundle["path"]) / engine),
                      str(tmp_path / "x.npy"), env=env)
    assert out.strip().endswith("ok")


def test_shared_thread_pool_in_a_fresh_process(tiny_bundle, tmp_path):
    """The opt-in shared pool gives the same outputs as per-session pools."""
    x = tiny_bundle["eval"][0][:4]
    rt = Runtime.load(tiny_bundle["path"])
    ref = rt(x)
    script = """
        import sys, numpy as np
        from legocompile import Runtime
        from legocompile.backends.onnxrt import session
        rt = Runtime.load(sys.argv[2])
        assert session.thread_mode() == "shared" and rt.shared_threads
        np.save(sys.argv[1], rt(np.load(sys.argv[3])))
        """
    np.save(tmp_path / "x.npy", x)
    _run_script(script, str(tmp_path / "y.npy"), str(tiny_bundle["path"]), str(tmp_path / "x.npy"),
                env={**os.environ, "LEGOCOMPILE_SHARED_THREADPOOL": "1"})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=0, atol=1e-5)


def test_runtime_uses_an_existing_global_pool(tiny_bundle, tmp_path):
    """If the application made ORT's process-wide pool itself, the Runtime's sessions use it instead of failing."""
    script = """
        import sys, numpy as np
        import onnxruntime.capi._pybind_state as C
        C.set_global_thread_pool_sizes(2, 1)
        from legocompile import Runtime
        rt = Runtime.load(sys.argv[1])
        y = rt(np.load(sys.argv[2]))
        assert y.shape[0] == 2
        print("ok")
        """
    np.save(tmp_path / "x.npy", tiny_bundle["eval"][0][:2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGOCOMPILE_")}
    assert _run_script(script, str(tiny_bundle["path"]), str(tmp_path / "x.npy"), env=env).strip().endswith("ok")


def test_engines_loaded_from_bytes_do_not_keep_the_bytes(tiny_bundle):
    """ORT's Python session keeps a model given as bytes for its whole life (a second copy of the weights);
    legocompile hands the bytes over through a sealed in-memory file instead, where the OS has one."""
    from legocompile.backends.onnxrt.backend import OnnxRuntimeBackend
    from legocompile.backends.onnxrt.session import _sealed_memfd

    fd = _sealed_memfd(b"probe")
    if fd is None:
        pytest.skip("no memfd on this OS: ORT keeps the bytes")
    os.close(fd)
    data = (Path(tiny_bundle["path"]) / Runtime.load(tiny_bundle["path"]).blocks[0].option("s0", "fp32").engine).read_bytes()
    before = sys.getrefcount(data)
    engine = OnnxRuntimeBackend().load(data)
    assert sys.getrefcount(data) == before
    x = tiny_bundle["eval"][0][:2]
    assert engine.run(x).shape[0] == 2


def test_unknown_runtime_impl_is_a_one_line_error(tiny_bundle):
    from legocompile.errors import LegoCompileError
    from legocompile.runtime import Runtime

    with pytest.raises(LegoCompileError, match="unknown runtime impl 'rust'; choose 'python' or 'cpp'"):
        Runtime.load(tiny_bundle["path"], impl="rust")


def test_impl_cpp_gives_the_cpp_runtime_with_the_same_outputs(tiny_bundle):
    from legocompile.runtime import Runtime, cpp_runtime

    missing = cpp_runtime.missing_toolchain()
    if missing is not None:
        pytest.skip(f"C++ runtime not buildable here: {missing}")
    cpp = Runtime.load(tiny_bundle["path"], impl="cpp")
    assert isinstance(cpp, cpp_runtime.CppRuntime)
    py = Runtime.load(tiny_bundle["path"])
    x = np.ascontiguousarray(tiny_bundle["eval"][0][:3], dtype=np.float32)
    np.testing.assert_array_equal(cpp(x), py(x))
