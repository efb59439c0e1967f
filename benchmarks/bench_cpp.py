"""C++ runtime: per-call overhead over the sum of its engines' times, against the Python runtime and one whole-model
ORT session, in one run; and warm / cold switch times.

Builds the built-in example at 8 blocks (fp32 + int8; profiles measured in this run) unless ``--bundle`` names one,
exports the whole model to one ONNX, then at batch 1, with the same intra-op thread count everywhere:

* **C++ chain, inside the library** (``lc_measure``, no Python in the loop): the time of one ``lc_run`` call, each
  engine's time inside the chain, and the runtime's own overhead per call = call time - the sum of that call's
  engine times (median over calls; it includes the clock reads around each engine, ~20 ns each). Target: <= 10 us.
* **C++ chain from Python** (``CppRuntime.__call__``, ctypes): its time per call minus the same engine sum.
* **Python runtime** (``Runtime.__call__``): its time per call minus its engines' sum, measured the same way (each
  bound engine timed inside a chain loop).
* **Whole model**: one ORT session of the whole model (the Runtime's session settings, IOBinding), per call.
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


def _python_engine_ns(rt, x: np.ndarray, calls: int) -> list[float]:
    """Median time (ns) of each bound engine of the Python runtime's current plan, timed inside a chain loop."""
    rt(x)  # binds this thread's buffers
    bufs = rt._buffer_set(x.shape[0])
    runs = rt._plan.runs_for(bufs)
    samples = [[] for _ in runs]
    clock = time.perf_counter_ns
    for _ in range(calls):
        for i, run in enumerate(runs):
            t0 = clock()
            run()
            samples[i].append(clock() - t0)
    return [float(np.median(s)) for s in samples]


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
    ap.add_argument("--bundle", help="use this bundle of the example instead of building one")
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
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            bundle = legocompile.compile(
                model, np.zeros(EXAMPLE_INPUT_SHAPE, np.float32), calibration_data=calib, eval_data=(ex, ey),
                out=tmp / "bundle", work_dir=tmp / "work", precisions=("fp32", "int8"), model_name="resnet18_digits",
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
            py_engines = _python_engine_ns(py, x, args.runs)
            timing = interleaved({"cpp_ctypes": lambda: cc(x), "python": lambda: py(x), "whole": run_whole},
                                 warmup=args.warmup, runs=args.runs)
            cpp_engines_ms = sum(inside["block_ns"]) / 1e6
            results[name] = {
                "cpp_in_library": {"chain_ms": inside["chain_ns"] / 1e6, "engines_sum_ms": cpp_engines_ms,
                                   "overhead_us": inside["overhead_ns"] / 1e3,
                                   "engine_ms": [v / 1e6 for v in inside["block_ns"]]},
                "cpp_from_python": {**timing["cpp_ctypes"],
                                    "overhead_us": (timing["cpp_ctypes"]["median_ms"] - cpp_engines_ms) * 1e3},
                "python_runtime": {**timing["python"], "engines_sum_ms": sum(py_engines) / 1e6,
                                   "overhead_us": (timing["python"]["median_ms"] - sum(py_engines) / 1e6) * 1e3},
                "whole_session": timing["whole"],
                "cpp_chain_over_whole": inside["chain_ns"] / 1e6 / timing["whole"]["median_ms"],
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
            "switch_us": {"cpp_warm_explicit": warm_us, "cpp_cold_explicit": cold_us,
                          "python_warm_explicit": py_warm_us, "cpp_warm_budget": float(np.median(budget_us))},
            "targets": {"cpp_overhead_us_max": 10.0},
        }
        write_json(args.out, doc)
        print(f"{doc['machine']['processor']}, {n} blocks, batch 1, {args.threads} thread(s), "
              f"load {doc['machine']['load_average_1m']}")
        for name, r in results.items():
            print(f"{name}: C++ chain {r['cpp_in_library']['chain_ms']:.4f} ms = engines "
                  f"{r['cpp_in_library']['engines_sum_ms']:.4f} ms + overhead {r['cpp_in_library']['overhead_us']:.2f} us"
                  f" | from Python {r['cpp_from_python']['median_ms']:.4f} ms (+{r['cpp_from_python']['overhead_us']:.1f} us)"
                  f" | Python runtime {r['python_runtime']['median_ms']:.4f} ms (+{r['python_runtime']['overhead_us']:.1f} us)"
                  f" | whole session {r['whole_session']['median_ms']:.4f} ms")
        s = doc["switch_us"]
        print(f"switch: C++ warm {s['cpp_warm_explicit']:.1f} us, budget {s['cpp_warm_budget']:.1f} us, "
              f"cold {s['cpp_cold_explicit']:.0f} us; Python warm {s['python_warm_explicit']:.1f} us")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
