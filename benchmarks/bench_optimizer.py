"""Benchmark: the exact optimizer's worst case per solve on adversarial cost tables, and against pulp/CBC.

**Worst case** (the main part). Families of cost tables built to break a branch and bound:

* ``zero``: every drop 0 (a saturated model); each block's options trade latency against memory (sorted by
  latency, memory falling: none dominates another), so only the latency/memory tie-breaks decide;
* ``q360``: the same trade-off, drops random multiples of 1/360 (0..3/360, as from 360 evaluation images),
  independent of latency and memory: massive ties on drop;
* ``q360-mono``: drops multiples of 1/360 that grow as memory shrinks (a plausible quantised profile);
* ``anti``: the trade-off with continuous random drops;
* ``anti-mono``: the trade-off with continuous drops that grow as memory shrinks (noisy);
* ``realistic``: pruned variants x {fp32, fp16, int8}: latency and memory shrink together, drops grow (noisy).

Sizes 8-16 blocks x 6-15 options. Budgets per table: latency only, memory only, and both; each swept across its
range (fractions 0, 0.01, ..., 1 of [least achievable, unconstrained optimum] and of [least, largest]), both on the
grid of those pairs, plus the exact totals of random selections (budgets met with no slack). Infeasible budgets
count (they are part of the workload). Per solve: wall clock of the first call (``wall``), the fastest of
``--repeat`` calls (``best``, filters out scheduler noise on a busy machine) and the thread's CPU time of the first
call (``cpu``). ``prepare`` (once per table) is timed likewise.

**Engines** (``--engines``, default both): ``native`` (the C++ solver, ``PreparedCosts(engine="native")``; skipped
when its library is not built) and ``python`` (the pure-Python search), timed on the same tables and budgets, and
checked to give the same selection (or the same infeasibility) on every budget. The load average before and after
is written to the JSON (the machine may be shared).

**Against pulp** (``--pulp-instances``, 0 to skip): the earlier comparison on realistic tables; objective agreement
with CBC and speed-up.

Usage::

    python benchmarks/bench_optimizer.py --out benchmarks/results/optimizer.json
    python benchmarks/bench_optimizer.py --quick   # 1 table per family and size, no pulp
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

SIZES = ((8, 6), (12, 8), (12, 15), (16, 6), (16, 10), (16, 15))
FRACTIONS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0)
RANDOM_SELECTIONS = 20  # per table: budgets at the exact totals of random selections
PULP_SIZES = ((8, 15), (12, 20), (20, 30))
PRECISIONS = (  # (latency factor, bytes per weight / 4, accuracy drop per unit of block sensitivity)
    (1.0, 1.0, 0.0),
    (0.55, 0.5, 0.02),
    (0.35, 0.25, 0.3),
)


# --- cost tables -------------------------------------------------------------------------------------------------


def _trade_off(rng, num_options: int):
    """Latencies rising and memory falling (distinct values): no option dominates another in (latency, memory)."""
    latency = sorted(set(float(v) for v in rng.uniform(0.05, 1.0, 4 * num_options)))
    latency = sorted(rng.choice(latency, num_options, replace=False).tolist())
    memory = sorted(set(int(v) for v in rng.integers(100_000, 8_000_000, 4 * num_options)))
    memory = sorted(rng.choice(memory, num_options, replace=False).tolist(), reverse=True)
    return latency, [int(m) for m in memory]


def _table(rng, family: str, num_blocks: int, num_options: int):
    from legocompile.optimize import Cost

    if family == "realistic":
        return _random_costs(rng, num_blocks, num_options)
    table = []
    for _ in range(num_blocks):
        latency, memory = _trade_off(rng, num_options)
        ramp = [i / max(num_options - 1, 1) for i in range(num_options)]  # 0 at the largest option, 1 at the least
        if family == "zero":
            drops = [0.0] * num_options
        elif family == "q360":
            drops = [int(v) / 360 for v in rng.integers(0, 4, num_options)]
        elif family == "q360-mono":
            scale = rng.uniform(2, 12)
            drops = [max(0, round(scale * r * r + rng.normal(0, 0.7))) / 360 for r in ramp]
        elif family == "anti":
            drops = [float(v) for v in rng.uniform(0.0, 2.0, num_options)]
        elif family == "anti-mono":
            scale = rng.uniform(0.2, 3.0)
            drops = [float(scale * r * r + rng.normal(0, 0.05)) for r in ramp]
        else:
            raise ValueError(f"unknown family {family!r}")
        table.append([Cost(latency[o], memory[o], drops[o]) for o in range(num_options)])
    return table


def _random_costs(rng, num_blocks: int, num_options: int):
    """Realistic tables: pruned variants x precisions; latency and memory shrink with both, drops grow (noisy)."""
    from legocompile.optimize import Cost

    table = []
    for _ in range(num_blocks):
        base_latency_ms = rng.uniform(0.05, 1.0)
        base_memory_bytes = rng.uniform(0.2e6, 8e6)
        sensitivity = rng.uniform(0.2, 3.0)
        num_variants = math.ceil(num_options / len(PRECISIONS))
        block = []
        for v in range(num_variants):
            prune = 0.8 * v / max(num_variants - 1, 1)
            for speed, size, precision_drop in PRECISIONS:
                block.append(
                    Cost(
                        latency_ms=float(base_latency_ms * (1 - 0.8 * prune) * speed * rng.uniform(0.9, 1.1)),
                        memory_bytes=int(base_memory_bytes * (1 - prune) * size),
                        accuracy_drop=float(
                            sensitivity * (5 * prune * prune + precision_drop) + rng.normal(0.0, 0.05)
                        ),
                    )
                )
        table.append(block[:num_options])
    return table


FAMILIES = ("zero", "q360", "q360-mono", "anti", "anti-mono", "realistic")


def _budgets(rng, prepared, costs) -> list[tuple[str, float | None, int | None]]:
    """(kind, latency bound, memory bound) for one table: sweeps over each range, their grid, exact totals."""
    from legocompile.optimize import evaluate

    best = prepared.unconstrained
    lat_ends = {best.latency_ms, prepared.max_latency_ms}
    mem_ends = {best.memory_bytes, prepared.max_memory_bytes}
    lats = sorted({prepared.min_latency_ms + f * (end - prepared.min_latency_ms) for f in FRACTIONS for end in lat_ends})
    mems = sorted({prepared.min_memory_bytes + round(f * (end - prepared.min_memory_bytes))
                   for f in FRACTIONS for end in mem_ends})
    budgets: list[tuple[str, float | None, int | None]] = []
    budgets += [("latency", lat, None) for lat in lats]
    budgets += [("memory", None, mem) for mem in mems]
    lat_grid = [prepared.min_latency_ms + f * (best.latency_ms - prepared.min_latency_ms) for f in FRACTIONS]
    mem_grid = [prepared.min_memory_bytes + round(f * (best.memory_bytes - prepared.min_memory_bytes)) for f in FRACTIONS]
    budgets += [("both", lat, mem) for lat in lat_grid for mem in mem_grid]
    for _ in range(RANDOM_SELECTIONS):
        pick = evaluate(costs, [int(rng.integers(len(block))) for block in costs])
        budgets.append(("both", pick.latency_ms, pick.memory_bytes))
    for _ in range(RANDOM_SELECTIONS // 4):
        pick = evaluate(costs, [int(rng.integers(len(block))) for block in costs])
        budgets.append(("latency", pick.latency_ms, None))
        budgets.append(("memory", None, pick.memory_bytes))
    return budgets


# --- timing ------------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median": statistics.median(ordered), "p99": p99, "max": ordered[-1], "mean": statistics.fmean(ordered)}


def _time_solve(prepared, latency_ms, memory_bytes, repeat: int):
    """Returns (first call wall ms, fastest wall ms, first call cpu ms, the outcome: the choice or None)."""
    from legocompile.optimize import InfeasibleBudgetError

    walls = []
    cpu = 0.0
    outcome = None
    for i in range(repeat):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        try:
            outcome = prepared.solve_raw(latency_ms, memory_bytes).choice
        except InfeasibleBudgetError:
            outcome = None
        t1 = time.perf_counter_ns()
        if i == 0:
            cpu = (time.thread_time_ns() - c0) / 1e6
        walls.append((t1 - t0) / 1e6)
    return walls[0], min(walls), cpu, outcome


def _worst_case(families, sizes, tables: int, repeat: int, seed: int, engines: list[str]) -> dict:
    """Per engine: rows (family x size) and per-family summaries; every budget solved by every engine alike."""
    import numpy as np

    from legocompile.optimize import prepare

    rows: dict[str, list[dict]] = {engine: [] for engine in engines}
    per_family: dict[str, dict[str, dict[str, list[float]]]] = {engine: {} for engine in engines}
    for f_index, family in enumerate(families):
        for num_blocks, num_options in sizes:
            samples: dict[str, dict[str, dict[str, list[float]]]] = {engine: {} for engine in engines}
            prep: dict[str, dict[str, list[float]]] = {engine: {"wall": [], "cpu": []} for engine in engines}
            infeasible = 0
            for t in range(tables):
                rng = np.random.default_rng([seed, f_index, num_blocks, num_options, t])
                costs = _table(rng, family, num_blocks, num_options)
                prepared = {}
                for engine in engines:
                    gc.collect()
                    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                    prepared[engine] = prepare(costs, engine=engine)
                    prep[engine]["wall"].append((time.perf_counter_ns() - t0) / 1e6)
                    prep[engine]["cpu"].append((time.thread_time_ns() - c0) / 1e6)
                    assert prepared[engine].engine == engine, f"{engine} asked, {prepared[engine].engine} used"
                for kind, lat, mem in _budgets(rng, prepared[engines[0]], costs):
                    outcomes = set()
                    for engine in engines:
                        wall, best, cpu, outcome = _time_solve(prepared[engine], lat, mem, repeat)
                        outcomes.add(outcome)
                        for key in (kind, "all"):
                            s = samples[engine].setdefault(key, {"wall": [], "best": [], "cpu": []})
                            s["wall"].append(wall)
                            s["best"].append(best)
                            s["cpu"].append(cpu)
                    if len(outcomes) != 1:
                        raise AssertionError(f"the engines disagree on {family} {num_blocks}x{num_options} table {t}, "
                                             f"budget ({lat!r}, {mem!r}): {outcomes}")
                    infeasible += outcomes == {None}
            for engine in engines:
                row = {
                    "engine": engine,
                    "family": family,
                    "blocks": num_blocks,
                    "options_per_block": num_options,
                    "tables": tables,
                    "solves": len(samples[engine]["all"]["wall"]),
                    "infeasible": infeasible,
                    "prepare_ms": {m: _stats(v) for m, v in prep[engine].items()},
                    "solve_ms": {kind: {m: _stats(v) for m, v in s.items()} for kind, s in samples[engine].items()},
                }
                rows[engine].append(row)
                fam = per_family[engine].setdefault(family, {"wall": [], "best": [], "cpu": [], "prepare_wall": []})
                for m in ("wall", "best", "cpu"):
                    fam[m] += samples[engine]["all"][m]
                fam["prepare_wall"] += prep[engine]["wall"]
                all_ms = row["solve_ms"]["all"]
                print(
                    f"  {engine:6s} {family:10s} {num_blocks:2d} x {num_options:2d}: {row['solves']:4d} solves  "
                    f"wall median {all_ms['wall']['median']:.3f} / p99 {all_ms['wall']['p99']:.3f} / "
                    f"max {all_ms['wall']['max']:.3f} ms  (best-of-{repeat} p99 {all_ms['best']['p99']:.3f} / "
                    f"max {all_ms['best']['max']:.3f}; cpu max {all_ms['cpu']['max']:.3f})  "
                    f"prepare max {max(prep[engine]['wall']):.1f} ms",
                    flush=True,
                )
    summary: dict[str, dict] = {}
    for engine in engines:
        everything: dict[str, list[float]] = {"wall": [], "best": [], "cpu": [], "prepare_wall": []}
        summary[engine] = {}
        for family, fam in per_family[engine].items():
            for m in everything:
                everything[m] += fam[m]
            summary[engine][family] = {
                "solves": len(fam["wall"]),
                "solve_ms": {m: _stats(fam[m]) for m in ("wall", "best", "cpu")},
                "prepare_ms": _stats(fam["prepare_wall"]),
            }
        summary[engine]["all"] = {
            "solves": len(everything["wall"]),
            "solve_ms": {m: _stats(everything[m]) for m in ("wall", "best", "cpu")},
            "prepare_ms": _stats(everything["prepare_wall"]),
        }
    return {"engines": engines, "rows": rows, "per_family": summary}


# --- against pulp ------------------------------------------------------------------------------------------------


def _random_budget(rng, prepared):
    from legocompile.optimize import Budget, InfeasibleBudgetError

    best = prepared.unconstrained
    for _ in range(100):
        latency_ms = prepared.min_latency_ms + rng.uniform(0.0, 1.0) * (best.latency_ms - prepared.min_latency_ms)
        memory_bytes = None
        if rng.random() < 0.5:
            span = best.memory_bytes - prepared.min_memory_bytes
            memory_bytes = prepared.min_memory_bytes + int(rng.uniform(0.0, 1.0) * span) + 1
        budget = Budget(latency_ms=max(latency_ms, 1e-9), memory_bytes=memory_bytes)
        try:
            prepared.solve(budget)
        except InfeasibleBudgetError:
            continue
        return budget
    raise RuntimeError("could not draw a feasible budget")


def _timed_ms(fn, *args, repeat: int = 1):
    """Returns (first call's ms, fastest call's ms, first result)."""
    times = []
    result = None
    for i in range(repeat):
        start = time.perf_counter_ns()
        out = fn(*args)
        times.append((time.perf_counter_ns() - start) / 1e6)
        if i == 0:
            result = out
    return times[0], min(times), result


def _against_pulp(rng, num_blocks: int, num_options: int, instances: int, repeat: int) -> dict:
    from legocompile.optimize import prepare, solve, solve_pulp

    times: dict[str, list[float]] = {name: [] for name in ("solve", "solve_prepared", "pulp")}
    best: dict[str, list[float]] = {name: [] for name in times}
    diffs = []
    for _ in range(instances):
        costs = _random_costs(rng, num_blocks, num_options)
        prepared = prepare(costs)
        budget = _random_budget(rng, prepared)
        runs = {
            "solve": _timed_ms(solve, costs, budget, repeat=repeat),
            "solve_prepared": _timed_ms(prepared.solve, budget, repeat=repeat),
            "pulp": _timed_ms(solve_pulp, costs, budget, repeat=repeat),
        }
        for name, (first_ms, best_ms, _) in runs.items():
            times[name].append(first_ms)
            best[name].append(best_ms)
        ours, warm, reference = (runs[name][2] for name in ("solve", "solve_prepared", "pulp"))
        assert warm == ours
        diffs.append(abs(ours.accuracy_drop - reference.accuracy_drop))
    row: dict = {"blocks": num_blocks, "options_per_block": num_options, "instances": instances}
    for name in times:
        row[f"{name}_ms"] = _stats(times[name])
        row[f"{name}_best_ms"] = _stats(best[name])
    row["speedup_prepared_median"] = row["pulp_ms"]["median"] / row["solve_prepared_ms"]["median"]
    row["objective_max_abs_diff"] = max(diffs)
    row["objective_mismatches"] = sum(d > 1e-6 for d in diffs)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/optimizer.json", help="where to write the JSON results")
    parser.add_argument("--tables", type=int, default=3, help="tables per family and size (worst case)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per budget (best-of) and per pulp instance")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of the families")
    parser.add_argument("--sizes", default=",".join(f"{b}x{o}" for b, o in SIZES), help="e.g. 8x6,16x15")
    parser.add_argument("--pulp-instances", type=int, default=10, help="random tables per size against pulp (0: skip)")
    parser.add_argument("--quick", action="store_true", help="1 table per family and size, no pulp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default="native,python",
                        help="comma-separated solver engines to time (native is skipped when it is not built)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tables, args.pulp_instances = 1, 0
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    if args.tables < 1 or args.repeat < 1 or args.pulp_instances < 0:
        parser.error("--tables and --repeat must be >= 1, --pulp-instances >= 0")

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"native", "python"}:
        parser.error("--engines: a comma-separated subset of native,python")

    import numpy as np
    from _common import machine_info, write_json

    from legocompile.optimize import native_solver

    if "native" in engines and native_solver.load() is None:
        print("native solver not built (pip install -e . with a C++ compiler): timing the Python search only")
        engines = [e for e in engines if e != "native"] or ["python"]
    load_before = os.getloadavg()
    print(f"worst case: {len(families)} families x {len(sizes)} sizes x {args.tables} tables, best of {args.repeat}, "
          f"engines {', '.join(engines)}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    worst = _worst_case(families, sizes, args.tables, args.repeat, args.seed, engines)
    print("\nper family (all sizes and budgets), ms per solve:")
    print(f"  {'engine':6s} {'family':10s} {'solves':>6s}  {'median':>7s} {'p99':>7s} {'max':>7s} | best-of: "
          f"{'p99':>7s} {'max':>7s} | cpu: {'p99':>7s} {'max':>7s} | prepare median / max")
    for engine in engines:
        for family, s in worst["per_family"][engine].items():
            w, b, c = (s["solve_ms"][m] for m in ("wall", "best", "cpu"))
            print(f"  {engine:6s} {family:10s} {s['solves']:6d}  {w['median']:7.3f} {w['p99']:7.3f} {w['max']:7.3f} |"
                  f"          {b['p99']:7.3f} {b['max']:7.3f} |      {c['p99']:7.3f} {c['max']:7.3f} |"
                  f" {s['prepare_ms']['median']:.1f} / {s['prepare_ms']['max']:.1f} ms")

    pulp_rows = []
    if args.pulp_instances:
        print(f"\nagainst pulp/CBC ({args.pulp_instances} realistic tables per size, best of {args.repeat}):")
        rng = np.random.default_rng(args.seed)
        for num_blocks, num_options in PULP_SIZES:
            row = _against_pulp(rng, num_blocks, num_options, args.pulp_instances, args.repeat)
            pulp_rows.append(row)
            ours, pulp = row["solve_prepared_best_ms"], row["pulp_best_ms"]
            print(f"  {num_blocks:2d} x {num_options:2d}: prepared solve median {ours['median']:.3f} / max "
                  f"{ours['max']:.3f} ms; pulp median {pulp['median']:.1f} ms; objective mismatches "
                  f"{row['objective_mismatches']} of {row['instances']}")

    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    doc = {
        "benchmark": "optimizer: worst case per solve of legocompile.optimize on adversarial tables (native C++ and "
                     "pure-Python engines); vs pulp/CBC",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"before": list(load_before), "after": list(load_after),
                         "note": "os.getloadavg() (1, 5, 15 min) before and after the run"},
        "versions": _versions(),
        "config": {
            "seed": args.seed,
            "tables_per_family_and_size": args.tables,
            "repeat": args.repeat,
            "families": families,
            "sizes": [list(s) for s in sizes],
            "fractions": list(FRACTIONS),
            "random_selection_budgets": RANDOM_SELECTIONS,
            "pulp_instances_per_size": args.pulp_instances,
            "pulp_sizes": [list(s) for s in PULP_SIZES],
            "engines": engines,
            "pulp_comparison_engine": native_solver.choose_engine(),
        },
        "timing": (
            "per solve: wall = perf_counter of the first call, best = fastest of `repeat` calls, cpu = thread CPU "
            "time of the first call (all ms); infeasible budgets included; prepare_ms = prepare(costs, engine) per "
            "table; worst_case.rows and worst_case.per_family are keyed by engine"
        ),
        "worst_case": worst,
        "against_pulp": pulp_rows,
    }
    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


def _versions() -> dict:
    import numpy

    versions = {"numpy": numpy.__version__}
    try:
        import pulp

        versions["pulp"] = pulp.__version__
    except ImportError:  # pragma: no cover
        versions["pulp"] = None
    return versions


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common
    try:
        import legocompile  # noqa: F401
    except ImportError:  # running from a checkout without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
