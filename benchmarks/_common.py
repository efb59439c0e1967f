"""Helpers shared by the benchmark scripts: machine facts, atomic JSON output, interleaved timing."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine_info() -> dict:
    import onnxruntime
    import torch

    from legocompile.backends.onnxrt.backend import _cpu_model

    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_json(path: str | Path, doc: dict) -> None:
    from legocompile.workspace import atomic_write_json

    atomic_write_json(path, doc)


def interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, runs: int, rounds: int = 10) -> dict[str, dict]:
    """Median and p90 (ms) of each function, timed in interleaved rounds so machine drift hits all alike.

    Rounds are long (``runs / rounds`` calls after 20 warm-up calls): measured here, with 10 calls per round the
    function timed first after a switch paid ~5% for the other's cache state, which is not a steady state any
    application sees.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(20):
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {
        k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "runs": len(v)}
        for k, v in samples.items()
    }
