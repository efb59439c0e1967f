"""Chained engines vs one whole-model ORT session vs PyTorch eager, and predicted vs measured chain latency.

Builds the built-in example (fp32 + int8; profiles measured in this run), then times, interleaved, at batch 1:
the Runtime's chain, one ORT session of the whole model, a naive chain (one default ORT session per block,
``session.run``), and PyTorch eager. Writes ratios to JSON.

    python benchmarks/bench_chain.py --out benchmarks/results/chain.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import interleaved, machine_info, write_json


NAIVE = """
import json, sys, time, numpy as np, onnxruntime as ort
paths, whole, xfile, threads, runs = json.loads(sys.argv[1])
x = np.load(xfile)
def session(p):  # ORT's defaults apart from the thread count: per-session pool, spinning on
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
chain = [session(p) for p in paths]; w = session(whole)
def run_chain():
    h = x
    for s in chain: h = s.run(None, {"x": h})[0]
def run_whole(): w.run(None, {"x": x})
out = {}
for name, fn in (("naive_chain", run_chain), ("whole_session", run_whole)):
    for _ in range(20): fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter(); fn(); t.append((time.perf_counter() - t0) * 1e3)
    out[name] = float(np.median(t))
print(json.dumps(out))
"""


def _naive_chain(bundle: Path, whole: Path, x: np.ndarray, args) -> dict:
    """The naive chain (ORT defaults per block) in its own process, against the whole model in that process."""
    import json
    import subprocess
    import sys

    from legocompile.bundle import read_bundle

    m = read_bundle(bundle, verify=False)
    paths = [str(bundle / b.option("s0", "fp32").engine) for b in m.blocks]
    xfile = whole.with_suffix(".npy")
    np.save(xfile, x)
    job = json.dumps([paths, str(whole), str(xfile), args.threads, max(50, args.runs // 10)])
    proc = subprocess.run([sys.executable, "-c", NAIVE, job], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    r["naive_over_whole"] = r["naive_chain"] / r["whole_session"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/chain.json")
    ap.add_argument("--runs", type=int, default=1000, help="timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-blocks", type=int, default=8)
    args = ap.parse_args()

    import torch

    import legocompile
    from legocompile.config import ProfileConfig
    from legocompile.examples import EXAMPLE_INPUT_SHAPE, load_example_model
    from legocompile.examples.digits import dataset
    from legocompile.export.onnx_export import onnx_bytes
    from legocompile.optimize.select import select_options

    torch.set_num_threads(args.threads)
    model = load_example_model()
    calib, (ex, ey) = dataset()
    tmp = Path(tempfile.mkdtemp(prefix="lc-bench-"))
    try:
        t0 = time.perf_counter()
        bundle = legocompile.compile(
            model, np.zeros(EXAMPLE_INPUT_SHAPE, np.float32), calibration_data=calib, eval_data=(ex, ey),
            out=tmp / "bundle", work_dir=tmp / "work", precisions=("fp32", "int8"), model_name="resnet18_digits",
            profile=ProfileConfig(threads=args.threads, runs=200, warmup=50), max_blocks=args.max_blocks,
        )
        build_s = time.perf_counter() - t0

        rt = legocompile.Runtime.load(bundle, threads=args.threads)
        x = np.ascontiguousarray(ex[:1])

        # one ORT session of the whole model, same thread count and the same IOBinding machinery
        whole_path = tmp / "whole.onnx"
        whole_path.write_bytes(onnx_bytes(model, torch.from_numpy(x)))
        be = rt._backends["onnxruntime"]
        whole_engine = be.load(whole_path)
        src, dst = be.allocate(x.shape), be.allocate((1, 10))
        src.numpy()[...] = x
        run_whole = whole_engine.bind(src, dst)

        naive = _naive_chain(bundle, whole_path, x, args)

        xt = torch.from_numpy(x.copy())

        def eager():
            with torch.no_grad():
                model(xt)

        results = {}
        selections = {"all-fp32": [("s0", "fp32")] * len(rt.blocks), "all-int8": [("s0", "int8")] * len(rt.blocks)}
        for name, sel in selections.items():
            rt.select(selection=sel)
            # PyTorch is timed apart: after a torch call its OpenMP threads spin-wait on the cores for a while,
            # which would slow whichever ORT measurement came next in an interleaved rotation.
            timing = interleaved({"chain": lambda: rt(x), "whole": run_whole}, warmup=args.warmup, runs=args.runs)
            timing |= interleaved({"eager": eager}, warmup=args.warmup, runs=args.runs)
            results[name] = {
                "chain": timing["chain"], "whole_session": timing["whole"], "pytorch_eager": timing["eager"],
                "predicted_ms": rt.selection.latency_ms,
                "chain_over_whole": timing["chain"]["median_ms"] / timing["whole"]["median_ms"],
                "eager_over_chain": timing["eager"]["median_ms"] / timing["chain"]["median_ms"],
                "predicted_over_measured": rt.selection.latency_ms / timing["chain"]["median_ms"],
            }
        # a budget-driven mixed selection, for the prediction check
        budget = 0.5 * (results["all-fp32"]["predicted_ms"] + results["all-int8"]["predicted_ms"])
        sel = select_options(rt.manifest, latency_ms=budget)
        rt.select(selection=[(o.variant, o.precision) for o in sel.options])
        t = interleaved({"chain": lambda: rt(x)}, warmup=args.warmup, runs=args.runs)["chain"]
        results["budget-mixed"] = {"chain": t, "predicted_ms": sel.latency_ms, "budget_ms": budget,
                                   "predicted_over_measured": sel.latency_ms / t["median_ms"]}

        doc = {
            "benchmark": "chain",
            "machine": machine_info(),
            "settings": {"batch_size": 1, "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
                         "blocks": len(rt.blocks), "shared_thread_pool": True, "build_seconds": round(build_s, 1)},
            "results": results,
            "targets": {"chain_over_whole_max": 1.15, "eager_over_chain_min": 2.0, "prediction_error_max": 0.10},
            "naive_chain": naive,
        }
        write_json(args.out, doc)
        for name, r in results.items():
            line = f"{name:13s} chain {r['chain']['median_ms']:.3f} ms  predicted {r['predicted_ms']:.3f} ms"
            if "whole_session" in r:
                line += (f"  whole {r['whole_session']['median_ms']:.3f} ms  eager {r['pytorch_eager']['median_ms']:.3f} ms"
                         f"  chain/whole {r['chain_over_whole']:.3f}  eager/chain {r['eager_over_chain']:.2f}")
            print(line + f"  predicted/measured {r['predicted_over_measured']:.3f}")
        print(f"naive chain (ORT defaults per block) {naive['naive_chain']:.3f} ms vs whole {naive['whole_session']:.3f} ms:"
              f" {naive['naive_over_whole']:.2f}x")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
