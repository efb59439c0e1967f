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
