"""GPU profiles of TensorRT engines: latency from CUDA events, memory from the device's free memory.

* Latency: ``warmup`` untimed runs, then ``runs`` timed ones, each between two CUDA events recorded on the chain's
  stream (GPU time of the enqueued work, not Python's), reduced to the median and p90 exactly as the CPU profiler
  does (:class:`legocompile.profile.latency.LatencyStats`).
* Memory: free device memory before loading and binding an engine, and after one run, synchronized; the
  difference is the engine's device footprint (weights + context scratch for activations + its boundary buffers
  when the caller allocates them inside ``make_run``). The scratch size TensorRT reports is returned beside it.
  Free memory moves in allocation-granularity steps (typically 2 MiB), and other processes on the GPU move it
  too: profile on an otherwise idle device. With shared scratch (TensorRT 10.1+), a context adds memory only when
  it needs more scratch than the chain already holds, so a chain takes about sum(weights) + max(scratch) +
  boundaries; both figures are returned so that a memory model can add them that way.

Written against the adapter in :mod:`~legocompile.backends.tensorrt.cuda_memory`; not run on a GPU in this
repository's CI. :func:`summarize_ms` and :func:`memory_from_free` are pure and unit-tested.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from legocompile.backends.tensorrt.cuda_memory import DeviceApi, Stream
from legocompile.profile.latency import LatencyStats


@dataclass(frozen=True)
class GpuMemory:
    """Device memory one engine takes: measured total, TensorRT's scratch (activation) size, and the rest."""

    device_bytes: int
    scratch_bytes: int

    @property
    def weights_bytes(self) -> int:
        """Measured total minus scratch: weights, buffers, and allocator granularity."""
        return max(self.device_bytes - self.scratch_bytes, 0)

    def to_json(self) -> dict[str, int]:
        return {"memory_bytes": self.device_bytes, "scratch_bytes": self.scratch_bytes,
                "weights_bytes": self.weights_bytes}


def summarize_ms(samples_ms: Sequence[float], warmup: int) -> LatencyStats:
    """Median and p90 of per-run GPU times in milliseconds (numpy's linear percentile, as the CPU profiler)."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no latency samples")
    return LatencyStats(float(np.median(samples)), float(np.percentile(samples, 90)), int(samples.size), warmup)


def memory_from_free(free_before: int, free_after: int, scratch_bytes: int) -> GpuMemory:
    """The footprint from free device memory before and after (clamped at 0: another process may have freed some)."""
    return GpuMemory(max(free_before - free_after, 0), max(scratch_bytes, 0))


def measure_latency(
    run: Callable[[], Any], api: DeviceApi, stream: Stream, *, warmup: int = 20, runs: int = 100
) -> LatencyStats:
    """GPU latency of ``run()`` (which enqueues work on ``stream``) from CUDA events around each run."""
    for _ in range(warmup):
        run()
    api.stream_synchronize(stream)
    start, end = api.event_create(), api.event_create()
    samples = []
    for _ in range(runs):
        api.event_record(start, stream)
        run()
        api.event_record(end, stream)
        samples.append(api.event_elapsed_ms(start, end))  # waits for ``end``
    return summarize_ms(samples, warmup)


def measure_memory(
    make_run: Callable[[], tuple[Callable[[], Any], int]], api: DeviceApi, stream: Stream
) -> tuple[GpuMemory, Callable[[], Any]]:
    """Device memory taken by what ``make_run()`` loads and binds, measured from free memory around it and one run.

    Args:
        make_run: Loads the engine and binds it (allocating what it needs); returns ``(run, scratch_bytes)``.

    Returns:
        The footprint, and the bound ``run`` (kept alive by the caller for as long as the measurement should hold).
    """
    api.stream_synchronize(stream)
    gc.collect()
    free_before, _ = api.mem_get_info()
    run, scratch = make_run()
    run()
    api.stream_synchronize(stream)
    free_after, _ = api.mem_get_info()
    return memory_from_free(free_before, free_after, scratch), run
