"""Chained engines vs one whole-model ORT session, per ORT threading mode; vs PyTorch eager; predicted vs measured.

Builds the built-in example (fp32 + int8; profiles measured in this run), then, at batch 1, in one fresh process per
threading mode (ORT's threading is process-wide, so modes cannot share a process):

* ``own`` (the Runtime's default): per-session pools, spinning off;
* ``shared`` (opt-in): ORT's process-wide pool, which breaks plain ORT sessions elsewhere in the process;
* ``own-spin`` (reference): per-session pools that spin during a run and stop when it ends
  (``session.force_spinning_stop``);

it times, interleaved, the Runtime's chain and one ORT session of the whole model in the same mode (ratio
chain/whole per mode). In the default mode it also times PyTorch eager, a mixed budget-driven selection against
its prediction, and the cost of ORT's public IOBinding call (``session.run_with_iobinding``) against the private
C++ entry point the runtime used before (``session._sess.run_with_iobinding``), per call of the chain. A naive chain
(one default ORT session per block, ``session.run``) runs in its own process. Writes JSON.

    python benchmarks/bench_chain.py --out benchmarks/results/chain.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import interleaved, machine_info, write_json

MODES = ("own", "shared", "own-spin")

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


def _naive_chain(bundle: Path, whole: Path, xfile: Path, args) -> dict:
    """The naive chain (ORT defaults per block) in its own process, against the whole model in that process."""
    from legocompile.bundle import read_bundle

    m = read_bundle(bundle, verify=False)
    paths = [str(bundle / b.option("s0", "fp32").engine) for b in m.blocks]
    job = json.dumps([paths, str(whole), str(xfile), args.threads, max(50, args.runs // 10)])
    proc = subprocess.run([sys.executable, "-c", NAIVE, job], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    r["naive_over_whole"] = r["naive_chain"] / r["whole_session"]
    return r


def _private_chain(rt, x: np.ndarray):
    """The same chain as ``rt(x)`` through ORT's private C++ entry point (what the runtime did before)."""
    import onnxruntime as ort

    from legocompile.export import INPUT_NAME, OUTPUT_NAME

    bufs = [rt._backend("onnxruntime").allocate((1, *s[1:]))
            for s in [rt.manifest.blocks[0].input.shape] + [b.output.shape for b in rt.manifest.blocks]]
    runs = []
    for i, e in enumerate(rt._plan.engines):
        session = e.engine.session
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, bufs[i].value)
        binding.bind_ortvalue_output(OUTPUT_NAME, bufs[i + 1].value)
        runs.append((session._sess.run_with_iobinding, binding._iobinding, ort.RunOptions(), binding))

    def call() -> np.ndarray:  # what Runtime.__call__ does, with the private call per block
        np.copyto(bufs[0].array, x)
        for run, native, opts, _ in runs:
            run(native, opts)
        return bufs[-1].array.copy()

    return call


def worker(job: dict) -> dict:
    """One threading mode, in this (fresh) process."""
    import legocompile
    from legocompile.backends.onnxrt import session as ort_session
    from legocompile.optimize.select import select_options

    mode, threads, warmup, runs = job["mode"], job["threads"], job["warmup"], job["runs"]
    if mode == "own-spin":
        import onnxruntime as ort

        def spin(*, optimization="all", threads=None, shared=None):
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            so.intra_op_num_threads = threads or ort_session._state["threads"]
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.force_spinning_stop", "1")  # spin during a run, stop after it
            return so

        ort_session.session_options = spin  # create_session looks it up in the module at each call
    rt = legocompile.Runtime.load(job["bundle"], threads=threads, shared_threads=(mode == "shared"))
    assert ort_session.thread_mode() == ("shared" if mode == "shared" else "own")
    x = np.load(job["x"])
    be = rt._backend("onnxruntime")
    whole_engine = be.load(Path(job["whole"]))  # one ORT session of the whole model, in the same mode
    src, dst = be.allocate(x.shape), be.allocate((1, 10))
    src.numpy()[...] = x
    run_whole = whole_engine.bind(src, dst)

    results: dict = {}
    selections = {"all-fp32": [("s0", "fp32")] * len(rt.blocks), "all-int8": [("s0", "int8")] * len(rt.blocks)}
    for name, sel in selections.items():
        rt.select(selection=sel)
        fns = {"chain": lambda: rt(x), "whole": run_whole}
        if job["extras"]:
            fns["chain_private_iobinding"] = _private_chain(rt, x)
        timing = interleaved(fns, warmup=warmup, runs=runs)
        r = {"chain": timing["chain"], "whole_session": timing["whole"], "predicted_ms": rt.selection.latency_ms,
             "chain_over_whole": timing["chain"]["median_ms"] / timing["whole"]["median_ms"],
             "predicted_over_measured": rt.selection.latency_ms / timing["chain"]["median_ms"]}
        if job["extras"]:
            priv = timing["chain_private_iobinding"]
            r["chain_private_iobinding"] = priv
            r["public_minus_private_us_per_call"] = (timing["chain"]["median_ms"] - priv["median_ms"]) * 1e3
            r["public_minus_private_us_per_block"] = r["public_minus_private_us_per_call"] / len(rt.blocks)
        results[name] = r

    if job["extras"]:
        # the wrapper's cost alone: one small engine (the last block's, int8), public call vs private call
        rt.select(selection=selections["all-int8"])
        engine = rt._plan.engines[-1].engine
        b = rt.manifest.blocks[-1]
        src1, dst1 = be.allocate((1, *b.input.shape[1:])), be.allocate((1, *b.output.shape[1:]))
        public = engine.bind(src1, dst1)
        import onnxruntime as ort

        from legocompile.export import INPUT_NAME, OUTPUT_NAME

        binding = engine.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, src1.value)
        binding.bind_ortvalue_output(OUTPUT_NAME, dst1.value)
        native, opts, private_run = binding._iobinding, ort.RunOptions(), engine.session._sess.run_with_iobinding
        t = interleaved({"public": public, "private": lambda: private_run(native, opts)}, warmup=warmup,
                        runs=runs * 5)
        results["iobinding_one_engine"] = {
            "public": t["public"], "private": t["private"],
            "public_minus_private_us": (t["public"]["median_ms"] - t["private"]["median_ms"]) * 1e3}

        import torch

        from legocompile.examples import load_example_model

        torch.set_num_threads(threads)
        model = load_example_model()
        xt = torch.from_numpy(x.copy())

        def eager():
            with torch.no_grad():
                model(xt)

        # PyTorch is timed apart: after a torch call its OpenMP threads spin-wait on the cores for a while,
        # which would slow whichever ORT measurement came next in an interleaved rotation.
        for name, sel in selections.items():
            rt.select(selection=sel)
            t = interleaved({"eager": eager}, warmup=warmup, runs=runs)["eager"]
            results[name]["pytorch_eager"] = t
            results[name]["eager_over_chain"] = t["median_ms"] / results[name]["chain"]["median_ms"]
        # a budget-driven mixed selection, for the prediction check
        budget = 0.5 * (results["all-fp32"]["predicted_ms"] + results["all-int8"]["predicted_ms"])
        sel = select_options(rt.manifest, latency_ms=budget)
        rt.select(selection=[(o.variant, o.precision) for o in sel.options])
        t = interleaved({"chain": lambda: rt(x)}, warmup=warmup, runs=runs)["chain"]
        results["budget-mixed"] = {"chain": t, "predicted_ms": sel.latency_ms, "budget_ms": budget,
                                   "predicted_over_measured": sel.latency_ms / t["median_ms"]}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/chain.json")
    ap.add_argument("--runs", type=int, default=1000, help="timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-blocks", type=int, default=8)
    ap.add_argument("--modes", default=",".join(MODES), help=f"threading modes to measure (of {', '.join(MODES)})")
    ap.add_argument("--bundle", help="use this bundle of the example instead of building one (its profiles are used as built)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    import legocompile
    from legocompile.config import ProfileConfig
    from legocompile.examples import EXAMPLE_INPUT_SHAPE, load_example_model
    from legocompile.examples.digits import dataset
    from legocompile.export.onnx_export import onnx_bytes

    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown mode {sorted(unknown)[0]!r}; modes: {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    model = load_example_model()
    calib, (ex, ey) = dataset()
    tmp = Path(tempfile.mkdtemp(prefix="lc-bench-"))
    try:
        t0 = time.perf_counter()
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            bundle = legocompile.compile(
                model, np.zeros(EXAMPLE_INPUT_SHAPE, np.float32), calibration_data=calib, eval_data=(ex, ey),
                out=tmp / "bundle", work_dir=tmp / "work", precisions=("fp32", "int8"), model_name="resnet18_digits",
                profile=ProfileConfig(threads=args.threads, runs=200, warmup=50), max_blocks=args.max_blocks,
            )
        build_s = time.perf_counter() - t0
        x = np.ascontiguousarray(ex[:1])
        xfile, whole_path = tmp / "x.npy", tmp / "whole.onnx"
        np.save(xfile, x)
        whole_path.write_bytes(onnx_bytes(model, torch.from_numpy(x)))
        del model  # the workers load their own

        per_mode = {}
        for mode in modes:
            job = {"mode": mode, "bundle": str(bundle), "whole": str(whole_path), "x": str(xfile),
                   "threads": args.threads, "warmup": args.warmup, "runs": args.runs, "extras": mode == "own"}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"worker for mode {mode} failed:\n{proc.stderr[-3000:]}")
            per_mode[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        naive = _naive_chain(bundle, whole_path, xfile, args)

        default = per_mode.get("own", {})
        doc = {
            "benchmark": "chain",
            "machine": machine_info(),
            "settings": {"batch_size": 1, "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
                         "blocks": args.max_blocks, "build_seconds": round(build_s, 1), "default_mode": "own",
                         "bundle": str(args.bundle) if args.bundle else "built in this run"},
            "modes": per_mode,
            "results": default,  # the default mode, as before
            "chain_over_whole": {m: {s: r[s]["chain_over_whole"] for s in ("all-fp32", "all-int8")}
                                 for m, r in per_mode.items()},
            "targets": {"chain_over_whole_max": 1.15, "eager_over_chain_min": 2.0, "prediction_error_max": 0.10},
            "naive_chain": naive,
        }
        write_json(args.out, doc)
        for mode, res in per_mode.items():
            print(f"[{mode}]")
            for name, r in res.items():
                if name == "iobinding_one_engine":
                    print(f"  one engine: public IOBinding call {r['public']['median_ms'] * 1e3:.1f} us, private"
                          f" {r['private']['median_ms'] * 1e3:.1f} us: {r['public_minus_private_us']:+.1f} us per engine run")
                    continue
                line = f"  {name:13s} chain {r['chain']['median_ms']:.3f} ms  predicted {r['predicted_ms']:.3f} ms"
                if "whole_session" in r:
                    line += f"  whole {r['whole_session']['median_ms']:.3f} ms  chain/whole {r['chain_over_whole']:.3f}"
                if "pytorch_eager" in r:
                    line += f"  eager/chain {r['eager_over_chain']:.2f}"
                if "public_minus_private_us_per_call" in r:
                    line += f"  public-private IOBinding {r['public_minus_private_us_per_call']:+.1f} us/call"
                print(line + f"  predicted/measured {r['predicted_over_measured']:.3f}")
        print(f"naive chain (ORT defaults per block) {naive['naive_chain']:.3f} ms vs whole {naive['whole_session']:.3f} ms:"
              f" {naive['naive_over_whole']:.2f}x")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
