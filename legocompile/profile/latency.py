"""Latency of a bound engine (or chain): warm-up, many timed runs, median and p90."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    runs: int
    warmup: int

    def to_json(self) -> dict:
        return {"latency_ms": self.median_ms, "latency_p90_ms": self.p90_ms, "runs": self.runs, "warmup": self.warmup}


def measure_latency(run: Callable[[], object], *, warmup: int = 20, runs: int = 100) -> LatencyStats:
    """Time ``run()`` ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    samples = np.empty(runs, dtype=np.float64)
    clock = time.perf_counter
    for i in range(runs):
        t0 = clock()
        run()
        samples[i] = clock() - t0
    samples *= 1e3
    return LatencyStats(float(np.median(samples)), float(np.percentile(samples, 90)), runs, warmup)


def interleaved_latency(
    runs_by_name: dict[str, Callable[[], object]], *, warmup: int = 20, runs: int = 100, rounds: int = 5
) -> dict[str, LatencyStats]:
    """Time several engines in interleaved rounds so slow drifts of the machine hit all of them alike."""
    samples: dict[str, list[float]] = {k: [] for k in runs_by_name}
    per_round = max(1, runs // rounds)
    for fn in runs_by_name.values():
        for _ in range(warmup):
            fn()
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in runs_by_name.items():
            for _ in range(3):
                fn()
            for _ in range(per_round):
                t0 = clock()
                fn()
                samples[name].append((clock() - t0) * 1e3)
    out = {}
    for name, s in samples.items():
        a = np.asarray(s)
        out[name] = LatencyStats(float(np.median(a)), float(np.percentile(a, 90)), len(a), warmup)
    return out
