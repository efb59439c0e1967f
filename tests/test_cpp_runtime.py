"""The C++ runtime against the Python one: the same selections, outputs and one-line errors; threads; the example
app built against the installed CMake package; C++ unit tests under AddressSanitizer + UBSan.

Everything that needs the C++ toolchain (cmake, a compiler, nlohmann-json, OpenSSL, ONNX Runtime's C headers from
``legocompile/runtime/cpp/install_deps.sh``) is skipped, with the missing piece named, where it is absent. The
library is built once per sources (cached across sessions, see ``cpp_runtime.build``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from test_bundle_damage import DAMAGES

from legocompile.bundle import BlockEntry, Manifest, OptionEntry, TensorSpec, read_bundle, write_bundle
from legocompile.errors import LegoCompileError
from legocompile.optimize.problem import InfeasibleBudgetError
from legocompile.optimize.select import boundary_bytes
from legocompile.runtime import Runtime
from legocompile.runtime import cpp_runtime
from legocompile.runtime.cpp_runtime import CppRuntime

MISSING = cpp_runtime.missing_toolchain()
needs_cpp = pytest.mark.skipif(MISSING is not None, reason=f"C++ runtime not buildable here: {MISSING}")


@pytest.fixture(scope="session")
def cpp_lib():
    """The release build (library + example app), built once per sources."""
    return cpp_runtime.build()


def _keys(selection) -> list[tuple[str, str]]:
    return [(o.variant, o.precision) for o in selection.options]


# ------------------------------------------------------------------------------------------------ bundles
def synthetic_bundle(root: Path, seed: int, *, blocks: int, variants: int, precisions=("fp32", "int8"),
                     coarse: bool = False, excluded: float = 0.15, overhead: float = 0.0,
                     negative: bool = False, drops: str | None = None) -> Path:
    """A bundle with fake engine bytes and random profiles (the optimizer never loads an engine).

    ``coarse`` draws latencies, memory and drops from small grids, so that many selections tie exactly.
    ``drops="zero"``, ``"q360"`` or ``"anti"``: the optimizer benchmark's adversarial families (latency rising as
    memory falls within each block; drops all zero, random multiples of 1/360 (ties on drop everywhere) or continuous
    and independent of latency and memory).
    """
    rng = np.random.default_rng(seed)
    src = root.parent / f"{root.name}-src"
    src.mkdir(parents=True)
    files: dict[str, Path] = {}
    entries = []
    for b in range(blocks):
        name = f"b{b}"
        options = []
        for v in range(variants):
            variant = "s0" if v == 0 else f"s0.{v}"
            onnx_rel = f"onnx/{name}/{variant}.onnx"
            (src / f"{name}-{variant}.onnx").write_bytes(f"onnx {seed} {name} {variant}".encode())
            files[onnx_rel] = src / f"{name}-{variant}.onnx"
            for p in precisions:
                rel = f"engines/{name}/{variant}-{p}.onnx"
                data = f"engine {seed} {name} {variant} {p}".encode()
                (src / f"{name}-{variant}-{p}").write_bytes(data)
                files[rel] = src / f"{name}-{variant}-{p}"
                original = v == 0 and p == "fp32"
                if drops is not None:
                    k = v * len(precisions) + precisions.index(p)
                    lat = 0.05 + 0.1 * k + float(rng.uniform(0, 0.05))
                    mem = 8_000_000 - 500_000 * k - int(rng.integers(0, 100_000))
                    drop = (0.0 if original or drops == "zero" else int(rng.integers(0, 4)) / 360 if drops == "q360"
                            else float(rng.uniform(0.0, 0.02)))
                elif coarse:
                    lat = 0.25 * int(rng.integers(1, 9))
                    mem = 1000 * int(rng.integers(1, 7))
                    drop = 0.0 if original else 0.005 * int(rng.integers(0, 6))
                else:
                    lat = float(rng.uniform(0.01, 1.0))
                    mem = int(rng.integers(10_000, 5_000_000))
                    drop = 0.0 if original else float(rng.uniform(-0.01 if negative else 0.0, 0.2))
                reason = None if original or rng.random() >= excluded else "accuracy gate: rel_l2 0.2 > 0.05"
                options.append(OptionEntry(
                    variant=variant, sparsity=v / 10, precision=p, backend="onnxruntime", engine=rel,
                    sha256=hashlib.sha256(data).hexdigest(), onnx=onnx_rel, params=100, export_max_abs_err=1e-6,
                    latency_ms=lat, latency_p90_ms=lat * 1.1, memory_bytes=mem, accuracy_drop=drop, excluded=reason))
        spec = TensorSpec(name="x", shape=(1, 4))
        entries.append(BlockEntry(name=name, input=spec, output=spec, options=tuple(options)))
    manifest = Manifest(
        schema_version=2, model=f"synthetic-{seed}", input=TensorSpec(name="x", shape=(1, 4)), blocks=tuple(entries),
        teacher={"accuracy": 0.9, "latency_ms": 2.0, "num_eval": 10, "chain_overhead_ms": overhead},
        device={}, tools={}, settings={})
    write_bundle(root, manifest, files)
    return root


def variant_like_bundle(tiny: Path, out: Path) -> Path:
    """The tiny bundle plus a "s0.5" copy of every option (same engine, cheaper and less accurate profile), one of
    them excluded: real engines, six options per block, for output parity across variants."""
    m = read_bundle(tiny)
    files = {rel: tiny / rel for rel in m.files}
    blocks = []
    for k, b in enumerate(m.blocks):
        extra = []
        for j, o in enumerate(b.options):
            extra.append(OptionEntry(**{
                **o.__dict__, "variant": "s0.5", "sparsity": 0.5, "latency_ms": o.latency_ms * 0.6,
                "latency_p90_ms": o.latency_p90_ms * 0.6, "memory_bytes": o.memory_bytes // 2,
                "accuracy_drop": o.accuracy_drop + 0.01 * (k + 1),
                "excluded": "accuracy gate: rel_l2 0.3 > 0.05" if j == 1 and k == 0 else o.excluded}))
        blocks.append(BlockEntry(name=b.name, input=b.input, output=b.output, options=b.options + tuple(extra)))
    teacher = {**m.teacher, "chain_overhead_ms": 0.01}
    manifest = Manifest(**{**m.__dict__, "blocks": tuple(blocks), "teacher": teacher, "files": {}})
    write_bundle(out, manifest, files)
    return out


# ------------------------------------------------------------------------------------------------ selection parity
def _budgets(manifest: Manifest, rng: np.random.Generator, count: int):
    overhead = float(manifest.teacher.get("chain_overhead_ms", 0.0))
    sel = [[o for o in b.options if o.excluded is None] for b in manifest.blocks]
    lo_l = sum(min(o.latency_ms for o in s) for s in sel) + overhead
    hi_l = sum(max(o.latency_ms for o in s) for s in sel) + overhead
    buffers = boundary_bytes(manifest)
    lo_m = (sum(min(o.memory_bytes for o in s) for s in sel) + buffers) / 1e6
    hi_m = (sum(max(o.memory_bytes for o in s) for s in sel) + buffers) / 1e6
    for k in range(count):
        lat = float(rng.uniform(0.85 * lo_l, 1.05 * hi_l))
        mem = float(rng.uniform(0.85 * lo_m, 1.05 * hi_m))
        yield [(lat, None), (None, mem), (lat, mem)][k % 3]


def _selection_budgets(manifest: Manifest, rng: np.random.Generator, count: int):
    """Tight budgets: the exact totals of random selections (no chain overhead; memory with the boundary buffers),
    mostly both at once (where the optimizers' drop-level staircases decide), some a hair below them."""
    sel = [[o for o in b.options if o.excluded is None] for b in manifest.blocks]
    for k in range(count):
        chosen = [s[int(rng.integers(len(s)))] for s in sel]
        lat = math.fsum(o.latency_ms for o in chosen)
        mem = sum(o.memory_bytes for o in chosen) + boundary_bytes(manifest)
        if k % 5 == 3:
            lat = math.nextafter(lat, 0.0)
        if k % 5 == 4:
            mem -= 1
        yield [(lat, mem / 1e6), (lat, mem / 1e6), (lat, mem / 1e6), (lat, None), (None, mem / 1e6)][k % 5]


def _parity(path: Path, count: int, seed: int, budgets=_budgets) -> dict:
    py = Runtime.load(path)
    cc = CppRuntime.load(path)
    counts = {"same": 0, "infeasible": 0}
    for lat, mem in budgets(py.manifest, np.random.default_rng(seed), count):
        try:
            want = py.plan(latency_ms=lat, memory_mb=mem)
        except InfeasibleBudgetError as e:
            with pytest.raises(InfeasibleBudgetError) as got:
                cc.plan(latency_ms=lat, memory_mb=mem)
            assert str(got.value) == str(e), (lat, mem)
            assert (got.value.min_latency_ms, got.value.min_memory_bytes) == (e.min_latency_ms, e.min_memory_bytes)
            counts["infeasible"] += 1
            continue
        got = cc.plan(latency_ms=lat, memory_mb=mem)
        assert _keys(got) == _keys(want), (lat, mem)
        assert cc.last_predicted == {"latency_ms": want.latency_ms, "memory_bytes": want.memory_bytes,
                                     "accuracy": want.accuracy}, (lat, mem)
        counts["same"] += 1
    cc.close()
    return counts


@needs_cpp
@pytest.mark.parametrize("kind", ["random", "ties", "negative-drops", "large", "zero-drops", "q360-drops"])
def test_same_selection_as_python_on_random_budgets(cpp_lib, tmp_path, kind):
    """1000 budgets over the six tables (latency only, memory only, both); infeasible ones raise the same
    InfeasibleBudgetError with the same message."""
    shapes = {"random": dict(blocks=8, variants=3, overhead=0.05),
              "ties": dict(blocks=6, variants=3, coarse=True, precisions=("fp32", "fp16", "int8")),
              "negative-drops": dict(blocks=5, variants=2, negative=True, excluded=0.3),
              "large": dict(blocks=12, variants=5, precisions=("fp32", "fp16", "int8"), overhead=0.02),
              "zero-drops": dict(blocks=10, variants=4, drops="zero", excluded=0.0),
              "q360-drops": dict(blocks=10, variants=4, drops="q360", excluded=0.0)}
    path = synthetic_bundle(tmp_path / "bundle", seed=len(kind), **shapes[kind])
    budgets = {"random": 250, "ties": 250, "negative-drops": 150, "large": 150, "zero-drops": 100, "q360-drops": 100}
    counts = _parity(path, budgets[kind], seed=7)
    assert counts["same"] >= budgets[kind] // 2 and counts["infeasible"] >= 1, counts


@needs_cpp
@pytest.mark.parametrize("drops", ["q360", "anti"])
def test_same_selection_as_python_at_selection_totals(cpp_lib, tmp_path, drops):
    """16 blocks x 10 options of the optimizer benchmark's adversarial families, 200 budgets at random selections'
    exact totals (the hardest both-budget case: drop levels on a 1/360 grid, or continuous drops)."""
    path = synthetic_bundle(tmp_path / "bundle", seed=16, blocks=16, variants=5, drops=drops, excluded=0.0)
    counts = _parity(path, 200, seed=3, budgets=_selection_budgets)
    assert counts["same"] >= 150, counts


@needs_cpp
def test_same_selection_as_python_on_the_tiny_bundles(cpp_lib, tiny_bundle, tmp_path):
    counts = _parity(tiny_bundle["path"], 100, seed=1)
    more = _parity(variant_like_bundle(tiny_bundle["path"], tmp_path / "variants"), 100, seed=2)
    assert counts["same"] >= 60 and more["same"] >= 60 and counts["infeasible"] and more["infeasible"], (counts, more)


@needs_cpp
def test_predictions_and_explicit_selection_errors_match_python(cpp_lib, tiny_bundle, tmp_path):
    path = variant_like_bundle(tiny_bundle["path"], tmp_path / "variants")
    py, cc = Runtime.load(path), CppRuntime.load(path)
    assert _keys(cc.selection) == _keys(py.selection) == [("s0", "fp32")] * len(py.blocks)
    assert cc.predicted() == {"latency_ms": py.selection.latency_ms, "memory_bytes": py.selection.memory_bytes,
                              "accuracy": py.selection.accuracy}
    bad = [
        [("s0", "fp32")] * (len(py.blocks) - 1),                       # wrong count
        [("s9", "fp32")] + [("s0", "fp32")] * (len(py.blocks) - 1),    # no such option
        [("s0.5", "fp16")] + [("s0", "fp32")] * (len(py.blocks) - 1),  # excluded (see variant_like_bundle)
        {"nope": ("s0", "fp32")},                                      # unknown block
    ]
    for selection in bad:
        with pytest.raises(LegoCompileError) as want:
            py.select(selection=selection)
        with pytest.raises(LegoCompileError) as got:
            cc.select(selection=selection)
        assert str(got.value) == str(want.value)
    for lat, mem in [(0, None), (-1.0, None), (float("nan"), None), (None, 0.0), (1.0, -2)]:
        with pytest.raises(LegoCompileError) as want:
            py.plan(latency_ms=lat, memory_mb=mem)
        with pytest.raises(LegoCompileError) as got:
            cc.plan(latency_ms=lat, memory_mb=mem)
        assert str(got.value) == str(want.value)
    cc.close()


# ------------------------------------------------------------------------------------------------ outputs
@needs_cpp
def test_outputs_equal_python_for_random_selections(cpp_lib, tiny_bundle, tmp_path):
    from legocompile.backends.onnxrt import session

    path = variant_like_bundle(tiny_bundle["path"], tmp_path / "variants")
    py = Runtime.load(path)
    cc = CppRuntime.load(path, threads=session._state["threads"])  # the count this process's ORT sessions use
    rng = np.random.default_rng(3)
    blocks = py.manifest.blocks
    exact = 0
    for k in range(24):
        choice = [[(o.variant, o.precision) for o in b.options if o.excluded is None] for b in blocks]
        selection = [c[rng.integers(len(c))] for c in choice]
        assert _keys(cc.select(selection=selection)) == _keys(py.select(selection=selection)) == selection
        x = rng.standard_normal((1 + k % 5, 1, 32, 32)).astype(np.float32)  # batch sizes 1..5
        want, got = py(x), cc(x)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        exact += bool(np.array_equal(got, want))
    assert exact >= 20  # same ORT kernels and threads: bit-identical in practice
    x = rng.standard_normal((130, 1, 32, 32))  # float64 input, cast as Python casts it; predict in batches
    np.testing.assert_allclose(cc.predict(x), py.predict(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LegoCompileError, match=re.escape("input shape (2, 3) does not match the bundle's (N, 1, 32, 32)")):
        cc(np.zeros((2, 3), np.float32))
    assert cc.loads == py.loads  # the same engines unloaded and loaded again on the same switches
    cc.close()
    with pytest.raises(LegoCompileError, match="closed"):
        cc(x)


@needs_cpp
def test_concurrent_calls_never_mix_two_selections(cpp_lib, tiny_bundle):
    cc = CppRuntime.load(tiny_bundle["path"])
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 32)).astype(np.float32)
    a = [("s0", "fp32")] * len(cc.blocks)
    b = [("s0", "int8")] * len(cc.blocks)
    cc.select(selection=a)
    ref_a = cc(x)
    cc.select(selection=b)
    ref_b = cc(x)
    assert not np.array_equal(ref_a, ref_b)
    stop, bad, runs = threading.Event(), [], [0]

    def worker():
        while not stop.is_set():
            y = cc(x)
            if not (np.array_equal(y, ref_a) or np.array_equal(y, ref_b)):
                bad.append(y)
            runs[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(60):
        cc.select(selection=a if k % 2 else b)
    stop.set()
    for t in threads:
        t.join()
    assert not bad and runs[0] > 0
    assert cc.loads == 2 * len(cc.blocks) or cc.loads > 2 * len(cc.blocks)  # engines reloaded after unloading
    cc.close()


@needs_cpp
def test_keep_warm_switches_back_without_loading(cpp_lib, tiny_bundle):
    n = len(read_bundle(tiny_bundle["path"], verify=False).blocks)
    cc = CppRuntime.load(tiny_bundle["path"], keep_warm_mb=1e3)
    x = np.zeros((1, 1, 32, 32), np.float32)
    for _ in range(3):
        cc.select(selection=[("s0", "fp32")] * n)
        cc(x)
        cc.select(selection=[("s0", "int8")] * n)
        cc(x)
    assert cc.loads == 2 * n
    cold = CppRuntime.load(tiny_bundle["path"])
    for _ in range(2):
        cold.select(selection=[("s0", "fp32")] * n)
        cold.select(selection=[("s0", "int8")] * n)
    assert cold.loads == 4 * n  # keep_warm_mb=0: every switch back loads again


# ------------------------------------------------------------------------------------------------ damaged bundles
def _messages(root: Path) -> tuple[str, str]:
    with pytest.raises(LegoCompileError) as want:
        Runtime.load(root)
    with pytest.raises(LegoCompileError) as got:
        CppRuntime.load(root)
    return str(want.value), str(got.value)


@needs_cpp
@pytest.mark.parametrize("d", DAMAGES, ids=[d.name for d in DAMAGES])
def test_damaged_bundle_gives_the_python_message(cpp_lib, tmp_path, d):
    root = tmp_path / "bundle"
    make_bundle(root, tmp_path / "src")
    d.damage(root)
    want, got = _messages(root)
    expected = d.message.format(root=root)
    assert "\n" not in got
    if d.prefix:
        assert got.startswith(expected) and want.startswith(expected), (got, want)
    else:
        assert got == want == expected


def _edit(root: Path, change) -> None:
    doc = json.loads((root / "manifest.json").read_text())
    change(doc)
    (root / "manifest.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _set(*path, value):
    def change(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return change


def _loop(root: Path) -> None:
    target = root / "engines/b0/s0-int8.onnx"
    target.unlink()
    target.symlink_to(target)


def _manifest_outside(root: Path) -> None:
    outside = root.parent / "elsewhere.json"
    shutil.move(root / "manifest.json", outside)
    (root / "manifest.json").symlink_to(outside)


MORE_DAMAGES = {
    "schema version 2.0": lambda r: _edit(r, _set("schema_version", value=2.0)),
    "schema version '2'": lambda r: _edit(r, _set("schema_version", value="2")),
    "schema version true": lambda r: _edit(r, _set("schema_version", value=True)),
    "float in a shape": lambda r: _edit(r, _set("input", "shape", 0, value=1.5)),
    "long list as teacher": lambda r: _edit(r, _set("teacher", value=list(range(40)))),
    "unicode unknown key": lambda r: _edit(r, _set("blocks", 0, "clé\u00a0", value=1)),
    "control character in a path": lambda r: _edit(r, lambda d: (
        d["files"].__setitem__("engines/\x01.onnx", d["files"].pop("engines/b0/s0-int8.onnx")),
        d["blocks"][0]["options"][1].__setitem__("engine", "engines/\x01.onnx"))),
    "quote in a string value": lambda r: _edit(r, _set("blocks", 0, "options", 0, "params", value="it's")),
    "not a sha256": lambda r: _edit(r, _set("files", "onnx/b0/s0.onnx", value="XYZ")),
    "symlink loop": _loop,
    "manifest symlinked out": _manifest_outside,
    "no s0/fp32": lambda r: _edit(r, _set("blocks", 1, "options", 0, "variant", value="s1")),
    "every option of a block excluded": lambda r: _edit(r, lambda d: [
        o.__setitem__("excluded", "gate") for o in d["blocks"][1]["options"]]),
    "negative latency": lambda r: _edit(r, _set("blocks", 0, "options", 1, "latency_ms", value=-1)),
    "negative memory": lambda r: _edit(r, _set("blocks", 0, "options", 1, "memory_bytes", value=-5)),
    "invalid utf-8": lambda r: (r / "manifest.json").write_bytes(b'{"schema_version": 2, "model": "\xff"}'),
    "BOM": lambda r: (r / "manifest.json").write_bytes(b"\xef\xbb\xbf" + (r / "manifest.json").read_bytes()),
}


@needs_cpp
@pytest.mark.parametrize("name", list(MORE_DAMAGES))
def test_more_damage_gives_the_python_message(cpp_lib, tmp_path, name):
    root = tmp_path / "bundle"
    make_bundle(root, tmp_path / "src")
    MORE_DAMAGES[name](root)
    want, got = _messages(root)
    if "not valid JSON" in want:
        assert got.split("(")[0] == want.split("(")[0]  # the parser's detail differs
    else:
        assert got == want


@needs_cpp
def test_bundle_paths_are_named_as_python_names_them(cpp_lib, tmp_path, monkeypatch):
    make_bundle(tmp_path / "b", tmp_path / "src")
    (tmp_path / "b" / "engines/b1/s0-fp32.onnx").unlink()
    monkeypatch.chdir(tmp_path)
    for spelling in ("b", "./b/", "b//", str(tmp_path / "b") + "/."):
        want, got = _messages(Path(spelling) if spelling == "b" else spelling)
        assert got == want
    want, got = _messages("nope")
    assert got == want == "bundle not found: nope"


# ------------------------------------------------------------------------------------------------ example app
def _run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@needs_cpp
def test_example_app_against_the_installed_package(cpp_lib, tiny_bundle, tmp_path):
    """Install the library, build examples/ on its own with find_package(legocompile), run it with a mid-run switch."""
    cmake = shutil.which("cmake")
    prefix = tmp_path / "prefix"
    _run([cmake, "--install", cpp_lib, "--prefix", prefix])
    assert (prefix / "lib/cmake/legocompile/legocompileConfig.cmake").is_file()
    assert (prefix / "include/legocompile/runtime.hpp").is_file()
    _run([cmake, "-S", cpp_runtime.CPP_DIR / "examples", "-B", tmp_path / "ex", f"-DCMAKE_PREFIX_PATH={prefix}",
          "-DCMAKE_BUILD_TYPE=Release"])
    _run([cmake, "--build", tmp_path / "ex", "--parallel", "2"])

    path = tiny_bundle["path"]
    py = Runtime.load(path)
    x = np.random.default_rng(5).standard_normal((3, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    first_ms = py.selection.latency_ms * 1.01
    fastest_ms = py._costs.min_latency_ms + float(py.manifest.teacher.get("chain_overhead_ms", 0.0))
    second_ms = fastest_ms + 0.3 * (first_ms - fastest_ms)
    out = _run([tmp_path / "ex" / "lc_run", path, "--input", tmp_path / "x.npy", "--latency-ms", first_ms,
                "-n", 40, "--switch-latency-ms", second_ms]).stdout
    selections = re.findall(r"^selection: (.*)$", out, re.M)
    expect = [py.plan(latency_ms=first_ms), py.plan(latency_ms=second_ms)]
    assert selections == [" ".join(f"{b}={o.variant}/{o.precision}" for b, o in zip(s.block_names, s.options))
                          for s in expect], out
    assert "switched at call 20" in out and re.search(r"latency_us: p50=[\d.]+ p90=[\d.]+ p99=[\d.]+", out)
    fnv, total = re.search(r"sum=(\S+) fnv1a64=([0-9a-f]{16})", out).group(2, 1)
    cc = CppRuntime.load(path)
    cc.select(latency_ms=second_ms)
    y = cc(x)
    h = 1469598103934665603
    for byte in y.tobytes():
        h = ((h ^ byte) * 1099511628211) % 2**64
    assert fnv == f"{h:016x}"
    py.select(latency_ms=second_ms)
    np.testing.assert_allclose(float(total), float(py(x).astype(np.float64).sum()), rtol=1e-5, atol=1e-4)
    cc.close()


# ------------------------------------------------------------------------------------------------ sanitizers
@needs_cpp
def test_cpp_unit_tests_under_asan_and_ubsan(tiny_bundle):
    """The C++ unit tests (text formatting, fsum, the solver against enumeration, the runtime with threads switching
    selections while others run) in a separate AddressSanitizer + UBSan build."""
    folder = cpp_runtime.build(sanitize=True, tests=True)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    done = subprocess.run([str(folder / "lc_unit_tests"), str(tiny_bundle["path"])], capture_output=True, text=True,
                          env=env, timeout=300)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "AddressSanitizer" not in report and "runtime error:" not in report, report
    assert re.search(r"^\d+ passed, 0 failed$", done.stdout, re.M), report


# ------------------------------------------------------------------------------------------------ no toolchain
def test_a_missing_toolchain_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv(cpp_runtime.LIBRARY_ENV, raising=False)
    real_which = shutil.which
    monkeypatch.setattr(cpp_runtime.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    reason = cpp_runtime.missing_toolchain()
    assert reason is not None and "cmake" in reason and "install_deps.sh" in reason and "\n" not in reason
    with pytest.raises(cpp_runtime.CppToolchainMissing, match="cmake"):
        cpp_runtime.build()
    monkeypatch.setattr(cpp_runtime.shutil, "which", real_which)
    monkeypatch.setattr(cpp_runtime, "ort_headers", lambda: None)
    if shutil.which("cmake") and cpp_runtime._compiler() and cpp_runtime._header("nlohmann/json.hpp") \
            and cpp_runtime._header("openssl/evp.h"):
        assert "onnxruntime_c_api.h" in cpp_runtime.missing_toolchain()


def test_sources_hash_covers_every_source():
    files = {p.relative_to(cpp_runtime.CPP_DIR).as_posix() for p in cpp_runtime.CPP_DIR.rglob("*") if p.is_file()}
    assert {"CMakeLists.txt", "install_deps.sh", "include/legocompile/runtime.h", "src/solver.cpp",
            "examples/lc_run.cpp"} <= files
    assert len(cpp_runtime.sources_hash()) == 64
