"""Budget switching on the built-in example: resident memory against the budget, and switch latency.

200 random budgets (latency and memory drawn uniformly between the cheapest and the dearest selection, redrawn
while infeasible) are applied with ``rt.select(latency_ms=..., memory_mb=...)``; between switches the runtime
classifies real digits. After each switch's inferences the process's resident set size (RSS) is compared with
what the profiles predict: ``base + memory(selection) + memory(keep-warm set)``.

Two bases are measured in each (fresh) process before anything is selected:

* ``base_nothing_selected``: RSS after ``Runtime.load`` (the bundle verified, no engine loaded);
* ``base_ort``: the same after one engine of each precision in the bundle was loaded, run and dropped outside the
  Runtime, which pages in ORT's code and process-wide state once. Profiles exclude that one-time cost (the probe
  measures increments), so this is the base that predictions add to. It is paid per precision: the first int8
  engine of a process costs about 0.8 MB more than the next ones (measured on the example with an AMD EPYC,
  AVX-512 VNNI; int8 kernels' process-wide state), which a base paged in with an fp32 engine alone used to count
  as a misprediction of every selection with int8 engines.

Each keep-warm setting runs in its own process, on the same budget sequence:

* ``keep_warm_mb=0`` (the default): only the current selection's engines stay loaded, so RSS follows the budget;
* ``keep_warm_mb=<all>``: enough to keep every engine ever selected (the old behaviour), so after a while switches
  load nothing: the warm switch latency.

On the example most budgets lead to one of a few selections (its accuracy drops are all 0, so the optimizer's
choice depends on little), so a third run switches among random explicit selections (one option per block, drawn
uniformly; ``keep_warm_mb=0``): nearly every switch loads and unloads engines, which is what shows a leak, if any,
as RSS drifting away from the prediction.

Switch latency is ``rt.select(...)`` (optimizer, reading and checking the engines' bytes, loading them, freeing the
old ones), split by whether it had to load an engine (cold) or not (warm), plus the first call after the switch
(bindings and arenas are made then) against a steady call.

It also checks the memory profiles themselves: every engine of the bundle is measured again in a fresh probe
process (as another build would), and the figures are compared with the bundle's; and no pruned variant may
profile above its original at the same precision. ``--second-bundle`` compares with another build's figures.

    python benchmarks/bench_switching.py [--bundle DIR] [--second-bundle DIR] [--out benchmarks/results/switching.json]

Without ``--bundle`` it builds the example as a user would (``legocompile build --precision int8 --out DIR`` run
from a scratch folder; several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import machine_info, write_json


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _budgets(manifest, n: int, seed: int) -> list[tuple[float, float]]:
    """``n`` feasible random (latency_ms, memory_mb) budgets."""
    from legocompile.optimize import InfeasibleBudgetError
    from legocompile.optimize.select import chain_overhead_ms, select_options

    blocks = manifest.blocks
    overhead = chain_overhead_ms(manifest)
    lat = [sum(f(o.latency_ms for o in b.options) for b in blocks) + overhead for f in (min, max)]
    mem = [sum(f(o.memory_bytes for o in b.options) for b in blocks) / 1e6 for f in (min, max)]
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float]] = []
    while len(out) < n:
        budget = (float(rng.uniform(*lat)), float(rng.uniform(*mem)))
        try:
            select_options(manifest, latency_ms=budget[0], memory_mb=budget[1])
        except InfeasibleBudgetError:
            continue
        out.append(budget)
    return out


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(a), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max()),
            "min": float(a.min())}


def worker(job: dict) -> dict:
    """One keep-warm setting in this fresh process."""
    import gc

    import legocompile
    from legocompile.backends import get_backend
    from legocompile.bundle import read_bundle
    from legocompile.examples.digits import dataset
    from legocompile.runtime.executor import release_free_heap

    bundle = Path(job["bundle"])
    _, (ex, _) = dataset()
    manifest = read_bundle(bundle)
    all_bytes = sum(o.memory_bytes for b in manifest.blocks for o in b.options)
    keep_warm_mb = all_bytes / 1e6 + 1 if job["keep_warm"] == "all" else float(job["keep_warm"])
    random_selections = job["workload"] == "random-selections"
    if random_selections:  # one option per block, uniformly: every switch changes engines
        pick = np.random.default_rng(job["seed"])
        budgets = [[(o.variant, o.precision) for o in (b.options[pick.integers(len(b.options))] for b in manifest.blocks)]
                   for _ in range(job["switches"])]
    else:
        budgets = _budgets(manifest, job["switches"], job["seed"])
    del manifest
    gc.collect()
    release_free_heap()

    rt = legocompile.Runtime.load(bundle, threads=job["threads"], keep_warm_mb=keep_warm_mb)
    release_free_heap()
    base_nothing = _rss()
    # ORT's one-time process state, per precision: load, run and drop one engine of each outside the Runtime
    be = get_backend("onnxruntime")
    b0 = rt.blocks[0]
    for precision in sorted({o.precision for o in b0.options}):
        o0 = b0.option("s0", precision)
        engine = be.load((bundle / o0.engine).read_bytes())
        src, dst = be.allocate((1, *b0.input.shape[1:])), be.allocate((1, *b0.output.shape[1:]))
        engine.bind(src, dst)()
        del engine, src, dst
    gc.collect()
    release_free_heap()
    base_ort = _rss()

    rng = np.random.default_rng(job["seed"] + 1)
    rows = []
    for i, budget in enumerate(budgets):
        lat, mem = (None, None) if random_selections else budget
        loads = rt.loads
        t0 = time.perf_counter()
        sel = rt.select(selection=budget) if random_selections else rt.select(latency_ms=lat, memory_mb=mem)
        switch_ms = (time.perf_counter() - t0) * 1e3
        loaded = rt.loads - loads
        x = np.ascontiguousarray(ex[rng.integers(len(ex))][None])
        t0 = time.perf_counter()
        rt(x)
        first_call_ms = (time.perf_counter() - t0) * 1e3
        calls = []
        for _ in range(job["calls"]):
            x = np.ascontiguousarray(ex[rng.integers(len(ex))][None])
            t0 = time.perf_counter()
            rt(x)
            calls.append((time.perf_counter() - t0) * 1e3)
        rss = _rss()
        predicted = base_ort + sel.memory_bytes + rt.warm_bytes
        rows.append({
            "switch": i, "latency_budget_ms": lat, "memory_budget_mb": mem, "engines_loaded": loaded,
            "switch_ms": switch_ms, "first_call_ms": first_call_ms, "steady_call_ms": float(np.median(calls)),
            "selection_memory_bytes": sel.memory_bytes, "warm_bytes": rt.warm_bytes,
            "loaded_engines": len(rt.loaded_engines()), "rss_bytes": rss, "predicted_rss_bytes": predicted,
            "over_budget_bytes": None if mem is None else rss - (base_ort + mem * 1e6 + rt.keep_warm_bytes),
        })

    cold = [r for r in rows if r["engines_loaded"]]
    warm = [r for r in rows if not r["engines_loaded"]]
    err = [(r["rss_bytes"] - r["predicted_rss_bytes"]) / 1e6 for r in rows]
    last = rows[-1]
    return {
        "keep_warm_mb": keep_warm_mb,
        "base_nothing_selected_mb": base_nothing / 1e6,
        "base_ort_mb": base_ort / 1e6,
        "workload": job["workload"],
        "final": {"rss_mb": last["rss_bytes"] / 1e6, "predicted_mb": last["predicted_rss_bytes"] / 1e6,
                  "memory_budget_mb": last["memory_budget_mb"], "selection_mb": last["selection_memory_bytes"] / 1e6,
                  "warm_mb": last["warm_bytes"] / 1e6, "loaded_engines": last["loaded_engines"],
                  "rss_minus_base_mb": (last["rss_bytes"] - base_ort) / 1e6},
        "rss_minus_predicted_mb": _stats(err),
        "rss_over_predicted": _stats([r["rss_bytes"] / r["predicted_rss_bytes"] for r in rows]),
        "switches_within_budget": (None if random_selections else
                                   sum(r["over_budget_bytes"] <= 0 for r in rows)),
        "max_over_budget_mb": None if random_selections else max(r["over_budget_bytes"] for r in rows) / 1e6,
        # a leak would make RSS drift away from the prediction as switches go on
        "rss_minus_predicted_first_quarter_mb": float(np.median(err[: max(1, len(err) // 4)])),
        "rss_minus_predicted_last_quarter_mb": float(np.median(err[-max(1, len(err) // 4):])),
        "max_rss_mb": max(r["rss_bytes"] for r in rows) / 1e6,
        "switch_ms": {"cold": _stats([r["switch_ms"] for r in cold]), "warm": _stats([r["switch_ms"] for r in warm]),
                      "cold_per_engine_loaded": _stats([r["switch_ms"] / r["engines_loaded"] for r in cold])},
        "first_call_after_switch_ms": {"cold": _stats([r["first_call_ms"] for r in cold]),
                                       "warm": _stats([r["first_call_ms"] for r in warm])},
        "steady_call_ms": _stats([r["steady_call_ms"] for r in rows]),
        "engines_loaded_total": sum(r["engines_loaded"] for r in rows),
        "switches": rows,
    }


def _pruned_above_original(figures: dict) -> list[str]:
    """Options that profile above the original (s0) of their block at the same precision."""
    out = []
    for (block, variant, precision), m in figures.items():
        s0 = figures.get((block, "s0", precision))
        if variant != "s0" and s0 is not None and m > s0:
            out.append(f"{block} {variant}/{precision}: {m} > {s0}")
    return out


def _compare(a: dict, b: dict) -> dict:
    common = sorted(set(a) & set(b))
    rel = [abs(a[k] - b[k]) / max(a[k], b[k], 1) for k in common]
    worst = common[int(np.argmax(rel))] if rel else None
    return {"engines": len(common), "max_rel_diff": float(max(rel)) if rel else None,
            "median_rel_diff": float(np.median(rel)) if rel else None, "within_5pct": sum(r <= 0.05 for r in rel),
            "worst": {"engine": "/".join(worst), "a": a[worst], "b": b[worst]} if worst else None}


def profile_check(bundle: Path, second: Path | None, threads: int) -> dict:
    """The bundle's memory figures against a fresh probe run (and another build's), and pruned <= original."""
    from legocompile.bundle import read_bundle
    from legocompile.profile.probe import ProbeEngine, run_probe

    m = read_bundle(bundle)
    keys, probe = [], []
    for i, b in enumerate(m.blocks):
        for o in b.options:
            keys.append((b.name, o.variant, o.precision))
            probe.append(ProbeEngine(bundle / o.engine, i, o.precision, (1, *b.input.shape[1:]), (1, *b.output.shape[1:])))
    t0 = time.perf_counter()
    r = run_probe(probe, threads=threads, warmup=1, runs=1, contexts={}, overhead_context="",
                  chain_input=bundle / "none.npy", latency=False)
    seconds = time.perf_counter() - t0
    built = {k: o.memory_bytes for k, o in zip(keys, (o for b in m.blocks for o in b.options))}
    again = dict(zip(keys, r["memory_bytes"]))
    out = {"bundle_vs_fresh_probe": _compare(built, again), "probe_seconds": round(seconds, 1),
           "pruned_above_original": {"bundle": _pruned_above_original(built), "fresh_probe": _pruned_above_original(again)},
           "memory_method": r.get("memory_method"),
           "per_engine": [{"engine": "/".join(k), "bundle": built[k], "fresh_probe": again[k],
                           "initializer_bytes": d["initializer_bytes"] if d else None,
                           "fresh_probe_increments": d["per_engine_deltas"] if d else None}
                          for k, d in zip(keys, r.get("memory_detail") or [None] * len(keys))]}
    if second is not None:
        m2 = read_bundle(second)
        other = {(b.name, o.variant, o.precision): o.memory_bytes for b in m2.blocks for o in b.options}
        out["bundle_vs_second_build"] = _compare(built, other)
        out["pruned_above_original"]["second_build"] = _pruned_above_original(other)
    return out


def _build_bundle(scratch: Path) -> Path:
    """The example, built the way the README tells a user to, from a scratch folder."""
    out = scratch / "bundle"
    subprocess.run([sys.executable, "-c", "import sys; from legocompile.cli import main; sys.exit(main())",
                    "build", "--precision", "int8", "--out", str(out), "-q"], cwd=scratch, check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a bundle of the example (default: build one in a scratch folder)")
    ap.add_argument("--out", default="benchmarks/results/switching.json")
    ap.add_argument("--switches", type=int, default=200)
    ap.add_argument("--calls", type=int, default=20, help="inferences after each switch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-warm", default="0,all", help="comma-separated keep_warm_mb settings ('all': every engine)")
    ap.add_argument("--second-bundle", help="another build of the example, to compare memory profiles with")
    ap.add_argument("--no-profile-check", action="store_true", help="skip re-measuring the memory profiles")
    ap.add_argument("--no-random-selections", action="store_true",
                    help="skip the second workload (random explicit selections, keep_warm_mb=0)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    scratch = None
    try:
        if args.bundle:
            bundle = Path(args.bundle).resolve()
        else:
            scratch = Path(tempfile.mkdtemp(prefix="lc-switching-"))
            t0 = time.perf_counter()
            bundle = _build_bundle(scratch)
            print(f"built the example in {time.perf_counter() - t0:.0f} s")
        from legocompile.bundle import read_bundle

        m = read_bundle(bundle)
        settings = {}
        phases = [("budgets", kw) for kw in args.keep_warm.split(",") if kw]
        if not args.no_random_selections:
            phases.append(("random-selections", "0"))
        for workload, kw in phases:
            job = {"bundle": str(bundle), "keep_warm": kw, "switches": args.switches, "calls": args.calls,
                   "threads": args.threads, "seed": args.seed, "workload": workload}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"worker {workload} keep_warm={kw} failed:\n{proc.stderr[-3000:]}")
            settings[f"{workload}, keep_warm={kw}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        check = None if args.no_profile_check else profile_check(
            bundle, Path(args.second_bundle) if args.second_bundle else None, args.threads)
        doc = {
            "benchmark": "switching",
            "machine": machine_info(),
            "bundle": {"path": str(bundle), "blocks": len(m.blocks), "options_per_block": [len(b.options) for b in m.blocks],
                       "all_engines_mb": sum(o.memory_bytes for b in m.blocks for o in b.options) / 1e6},
            "settings": {"switches": args.switches, "calls_per_switch": args.calls, "threads": args.threads,
                         "seed": args.seed, "batch_size": 1},
            "results": settings,
            "memory_profiles": check,
        }
        write_json(args.out, doc)
        for name, r in settings.items():
            f = r["final"]
            budget = "" if f["memory_budget_mb"] is None else f"; budget {f['memory_budget_mb']:.1f} MB"
            print(f"[{name}] base {r['base_nothing_selected_mb']:.1f} MB (nothing selected), {r['base_ort_mb']:.1f} MB"
                  f" (ORT paged in); after {args.switches} switches RSS {f['rss_mb']:.1f} MB vs predicted "
                  f"{f['predicted_mb']:.1f} MB (selection {f['selection_mb']:.1f} + warm {f['warm_mb']:.1f}{budget}),"
                  f" {f['loaded_engines']} engines loaded; max RSS {r['max_rss_mb']:.1f} MB")
            e = r["rss_minus_predicted_mb"]
            line = (f"    RSS - predicted: median {e['median']:+.2f} MB, max {e['max']:+.2f}, min {e['min']:+.2f}"
                    f" (first quarter {r['rss_minus_predicted_first_quarter_mb']:+.2f}, last quarter"
                    f" {r['rss_minus_predicted_last_quarter_mb']:+.2f})")
            if r["switches_within_budget"] is not None:
                line += (f"; RSS within base + budget on {r['switches_within_budget']}/{args.switches} switches,"
                         f" at most {r['max_over_budget_mb']:+.2f} MB over")
            print(line)
            s = r["switch_ms"]
            line = "    switch: "
            if s["cold"]["n"]:
                line += (f"cold (loads) median {s['cold']['median']:.1f} ms (n={s['cold']['n']},"
                         f" {s['cold_per_engine_loaded']['median']:.1f} ms per engine)  ")
            if s["warm"]["n"]:
                line += f"warm median {s['warm']['median']:.2f} ms (n={s['warm']['n']})"
            print(line)
            fc = r["first_call_after_switch_ms"]
            print("    first call after switch: " + "  ".join(
                f"{k} median {v['median']:.2f} ms" for k, v in fc.items() if v["n"])
                + f"; steady call median {r['steady_call_ms']['median']:.2f} ms")
        if check is not None:
            for name in ("bundle_vs_fresh_probe", "bundle_vs_second_build"):
                if name in check:
                    c = check[name]
                    print(f"memory profiles, {name.replace('_', ' ')}: max diff {c['max_rel_diff']:.1%}, median"
                          f" {c['median_rel_diff']:.1%}, {c['within_5pct']}/{c['engines']} within 5%"
                          f" (worst {c['worst']['engine']}: {c['worst']['a']} vs {c['worst']['b']})")
            for name, bad in check["pruned_above_original"].items():
                print(f"pruned variants above their original ({name}): {len(bad)}" + (f": {bad[:3]}" if bad else ""))
        print(f"wrote {args.out}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
