"""C++ runtime: per-call overhead over the sum of its engines' times, against the Python runtime and one whole-model
ORT session, in one run; and warm / cold switch times.

Builds the built-in example at 8 blocks (fp32 + int8; profiles measured in this run) unless ``--bundle`` names one,
exports the whole model to one ONNX, then at batch 1, with the same intra-op thread count everywhere:

* **C++ chain, inside the library** (``lc_measure``, no Python in the loop): the time of one ``lc_run`` call, each
  engine's time inside the chain, and the runtime's own overhead per call = call time - the sum of that call's
  engine times (median over calls; it includes the clock reads around each engine, ~20 ns each). Target: <= 10 us.
* **Interleaved, from Python** (``_common.interleaved``, so machine drift hits all alike): the C++ chain through
  ctypes (``CppRuntime.__call__``), the Python runtime (``Runtime.__call__``) and one ORT session of the whole model
  (the Runtime's session settings, IOBinding); the Python runtime's extra cost per call over the C++ one is the
  difference of their medians in that run. One bare ctypes call is timed too (what any Python caller adds).
* **Switching**: ``select`` between two explicit selections whose engines stay loaded (``keep_warm_mb``): the warm
  switch (no engine loads); and with ``keep_warm_mb=0`` (each switch loads the engines it needs from the bundle).

Timings are interleaved in rounds (``_common.interleaved``) so machine drift hits every variant alike.

    python benchmarks/bench_cpp.py --out benchmarks/results/cpp.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import interleaved, machine_info, write_json


def _ctypes_call_us(cc, calls: int = 20000) -> float:
    """One bare ctypes call into the library (lc_engine_loads), in microseconds."""
    import ctypes

    fn, h, out = cc._lib.lc_engine_loads, cc._handle(), ctypes.c_int64()
    ref = ctypes.byref(out)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(h, ref)
    return (time.perf_counter() - t0) / calls * 1e6


def _switch_us(rt, a, b, rounds: int) -> float:
    samples = []
    for k in range(rounds):
        t0 = time.perf_counter()
        rt.select(selection=a if k % 2 else b)
        samples.append((time.perf_counter() - t0) * 1e6)
    return float(np.median(samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/cpp.json")
    ap.add_argument("--runs", type=int, default=2000, help="timed calls per measurement")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per engine (all variants)")
    ap.add_argument("--max-blocks", type=int, default=8)
    ap.add_argument("--bundle", help="the example's bundle: reused when it exists, else built there (kept)")
    args = ap.parse_args()

    import torch

    import legocompile
    from legocompile.backends.onnxrt.backend import OnnxRuntimeBackend
    from legocompile.config import ProfileConfig
    from legocompile.examples import EXAMPLE_INPUT_SHAPE, load_example_model
    from legocompile.examples.digits import dataset
    from legocompile.export.onnx_export import onnx_bytes
    from legocompile.runtime import cpp_runtime
    from legocompile.runtime.cpp_runtime import CppRuntime

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lib = cpp_runtime.library_path()
    lib_s = time.perf_counter() - t0
    model = load_example_model()
    calib, (ex, ey) = dataset()
    tmp = Path(tempfile.mkdtemp(prefix="lc-bench-cpp-"))
    try:
        t0 = time.perf_counter()
        bundle = Path(args.bundle) if args.bundle else tmp / "bundle"
        if not (bundle / "manifest.json").is_file():
            bundle = legocompile.compile(
                model, np.zeros(EXAMPLE_INPUT_SHAPE, np.float32), calibration_data=calib, eval_data=(ex, ey),
                out=bundle, work_dir=tmp / "work", precisions=("fp32", "int8"), model_name="resnet18_digits",
                profile=ProfileConfig(threads=args.threads, runs=100, warmup=20), max_blocks=args.max_blocks,
            )
        build_s = time.perf_counter() - t0
        x = np.ascontiguousarray(ex[:1], dtype=np.float32)
        whole_path = tmp / "whole.onnx"
        whole_path.write_bytes(onnx_bytes(model, torch.from_numpy(x)))
        del model

        py = legocompile.Runtime.load(bundle, threads=args.threads)
        cc = CppRuntime.load(bundle, threads=args.threads)
        n = len(py.blocks)
        be = OnnxRuntimeBackend()
        whole = be.load(whole_path)
        src, dst = be.allocate(x.shape), be.allocate(py(x).shape)
        np.copyto(src.array, x)
        run_whole = whole.bind(src, dst)

        results = {}
        for name, selection in (("all-fp32", [("s0", "fp32")] * n), ("all-int8", [("s0", "int8")] * n)):
            py.select(selection=selection)
            cc.select(selection=selection)
            np.testing.assert_allclose(cc(x), py(x), rtol=1e-4, atol=1e-4)
            inside = cc.measure(x, rounds=9, iters=max(50, args.runs // 9))
            timing = interleaved({"cpp_ctypes": lambda: cc(x), "python": lambda: py(x), "whole": run_whole},
                                 warmup=args.warmup, runs=args.runs)
            results[name] = {
                "cpp_in_library": {"chain_ms": inside["chain_ns"] / 1e6, "engines_sum_ms": sum(inside["block_ns"]) / 1e6,
                                   "overhead_us": inside["overhead_ns"] / 1e3,
                                   "engine_ms": [v / 1e6 for v in inside["block_ns"]]},
                "interleaved": timing,
                "python_minus_cpp_us": (timing["python"]["median_ms"] - timing["cpp_ctypes"]["median_ms"]) * 1e3,
                "cpp_over_whole": timing["cpp_ctypes"]["median_ms"] / timing["whole"]["median_ms"],
                "python_over_whole": timing["python"]["median_ms"] / timing["whole"]["median_ms"],
            }

        a, b = [("s0", "fp32")] * n, [("s0", "int8")] * n
        warm = CppRuntime.load(bundle, threads=args.threads, keep_warm_mb=1e4)
        warm.select(selection=a), warm(x), warm.select(selection=b), warm(x)
        loads = warm.loads
        warm_us = _switch_us(warm, a, b, 200)
        assert warm.loads == loads, "a warm switch loaded an engine"
        cold_us = _switch_us(cc, a, b, 20)
        py_warm = legocompile.Runtime.load(bundle, threads=args.threads, keep_warm_mb=1e4)
        py_warm.select(selection=a), py_warm(x), py_warm.select(selection=b), py_warm(x)
        py_warm_us = _switch_us(py_warm, a, b, 200)
        budget_us = []
        lat = py.selection.latency_ms
        for k in range(200):  # budget-driven warm switches (the solver included)
            t0 = time.perf_counter()
            warm.select(latency_ms=lat * (1.0 + 0.5 * (k % 2)))
            budget_us.append((time.perf_counter() - t0) * 1e6)

        doc = {
            "benchmark": "cpp_runtime",
            "machine": machine_info(),
            "settings": {"batch": 1, "threads": args.threads, "blocks": n, "runs": args.runs,
                         "warmup": args.warmup, "build_seconds": round(build_s, 1),
                         "library_seconds": round(lib_s, 1), "library": str(lib)},
            "per_selection": results,
            "ctypes_call_us": _ctypes_call_us(cc),
            "switch_us": {"cpp_warm_explicit": warm_us, "cpp_cold_explicit": cold_us,
                          "python_warm_explicit": py_warm_us, "cpp_warm_budget": float(np.median(budget_us))},
            "targets": {"cpp_overhead_us_max": 10.0},
        }
        write_json(args.out, doc)
        print(f"{doc['machine']['processor']}, {n} blocks, batch 1, {args.threads} thread(s), "
              f"load {doc['machine']['load_average_1m']}")
        for name, r in results.items():
            c, t = r["cpp_in_library"], r["interleaved"]
            print(f"{name}: C++ chain {c['chain_ms']:.4f} ms = engines {c['engines_sum_ms']:.4f} ms + overhead "
                  f"{c['overhead_us']:.2f} us/call | interleaved medians: C++ via ctypes {t['cpp_ctypes']['median_ms']:.4f}"
                  f" ms, Python runtime {t['python']['median_ms']:.4f} ms (+{r['python_minus_cpp_us']:.1f} us), "
                  f"whole-model session {t['whole']['median_ms']:.4f} ms")
        print(f"one bare ctypes call: {doc['ctypes_call_us']:.2f} us")
        s = doc["switch_us"]
        print(f"switch: C++ warm {s['cpp_warm_explicit']:.1f} us, budget {s['cpp_warm_budget']:.1f} us, "
              f"cold {s['cpp_cold_explicit']:.0f} us; Python warm {s['python_warm_explicit']:.1f} us")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
