"""Benchmark: the in-process exact solver (``legocompile.optimize.solve``) against pulp/CBC (``solve_pulp``).

Random but realistic cost tables: each block has pruned variants x {fp32, fp16, int8}; latency and memory shrink
with pruning and precision, the accuracy drop grows (with measurement noise). Budgets: a latency bound drawn
between the fastest selection and the least-drop one, and for half of the instances also a memory bound (redrawn
when the pair cannot be met). Timings per instance (``*_ms``: the first call; ``*_best_ms``: the fastest of
``--repeat`` calls, which filters out scheduler noise on a busy machine):

* ``solve_ms``: ``solve(costs, budget)`` on the raw table (includes preparing it);
* ``solve_prepared_ms``: ``PreparedCosts.solve(budget)`` on a table prepared and solved once before (the runtime
  path: one preparation per profile, one call per budget change);
* ``pulp_ms``: ``solve_pulp(costs, budget)`` (model build + CBC subprocess).

Usage::

    python benchmarks/bench_optimizer.py --out benchmarks/results/optimizer.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = ((8, 15), (12, 20), (20, 30))
PRECISIONS = (  # (latency factor, bytes per weight / 4, accuracy drop per unit of block sensitivity)
    (1.0, 1.0, 0.0),
    (0.55, 0.5, 0.02),
    (0.35, 0.25, 0.3),
)


def _random_costs(rng, num_blocks: int, num_options: int):
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


def _stats_ms(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p90_index = min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[p90_index],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


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


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _environment() -> dict:
    import numpy
    import pulp

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(load) if load else None,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "pulp_version": pulp.__version__,
        "numpy_version": numpy.__version__,
        "cbc_path": pulp.PULP_CBC_CMD().path,
    }


def _bench_size(rng, num_blocks: int, num_options: int, instances: int, repeat: int) -> dict:
    from legocompile.optimize import prepare, solve, solve_pulp

    times: dict[str, list[float]] = {name: [] for name in ("solve", "solve_prepared", "pulp")}
    best: dict[str, list[float]] = {name: [] for name in times}
    diffs = []
    for _ in range(instances):
        costs = _random_costs(rng, num_blocks, num_options)
        prepared = prepare(costs)
        budget = _random_budget(rng, prepared)  # also warms the prepared table up
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
        row[f"{name}_ms"] = _stats_ms(times[name])
        row[f"{name}_best_ms"] = _stats_ms(best[name])
    for suffix in ("_ms", "_best_ms"):
        pulp_stats, solve_stats = row[f"pulp{suffix}"], row[f"solve{suffix}"]
        key = "speedup" if suffix == "_ms" else "speedup_best"
        row[f"{key}_median"] = pulp_stats["median"] / solve_stats["median"]
        row[f"{key}_p90"] = pulp_stats["p90"] / solve_stats["p90"]
        row[f"{key}_prepared_median"] = pulp_stats["median"] / row[f"solve_prepared{suffix}"]["median"]
    row["objective_max_abs_diff"] = max(diffs)
    row["objective_mismatches"] = sum(d > 1e-6 for d in diffs)
    return row


def _write_json_atomic(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".optimizer-", suffix=".json.tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/optimizer.json", help="where to write the JSON results")
    parser.add_argument("--instances", type=int, default=60, help="random instances per size (>= 50 recommended)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per instance and solver (the fastest is *_best)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.instances < 1 or args.repeat < 1:
        parser.error("--instances and --repeat must be >= 1")

    import numpy as np

    rng = np.random.default_rng(args.seed)
    results = []
    for num_blocks, num_options in SIZES:
        row = _bench_size(rng, num_blocks, num_options, args.instances, args.repeat)
        results.append(row)
        for suffix, label in (("_ms", "first call"), ("_best_ms", f"best of {args.repeat}")):
            solve_s, prep_s, pulp_s = (row[f"{name}{suffix}"] for name in ("solve", "solve_prepared", "pulp"))
            print(
                f"{num_blocks:>2} blocks x {num_options:>2} options, {label:>10}: "
                f"solve median {solve_s['median']:.2f} ms / p90 {solve_s['p90']:.2f} / max {solve_s['max']:.2f}; "
                f"prepared {prep_s['median']:.2f} / {prep_s['p90']:.2f} / {prep_s['max']:.2f}; "
                f"pulp {pulp_s['median']:.1f} / {pulp_s['p90']:.1f} / {pulp_s['max']:.1f}; "
                f"speedup x{pulp_s['median'] / solve_s['median']:.0f} (medians)"
            )
        print(f"   objective mismatches vs pulp: {row['objective_mismatches']} of {row['instances']}")
    payload = {
        "benchmark": "optimizer: legocompile.optimize.solve vs solve_pulp (pulp/CBC)",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": _environment(),
        "config": {
            "seed": args.seed,
            "instances_per_size": args.instances,
            "repeat": args.repeat,
            "sizes": [list(s) for s in SIZES],
        },
        "timing": (
            "wall clock (perf_counter_ns) per instance; *_ms: first call, *_best_ms: fastest of `repeat` calls; "
            "solve includes preparing the table, solve_prepared reuses a table prepared (and solved) once before"
        ),
        "results": results,
    }
    _write_json_atomic(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        import legocompile  # noqa: F401
    except ImportError:  # running from a checkout without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
