"""Per-engine profiles measured on this device: latency, resident memory, accuracy drop."""

from legocompile.profile.accuracy import top1
from legocompile.profile.latency import LatencyStats, measure_latency
from legocompile.profile.memory import measure_memory

__all__ = ["LatencyStats", "measure_latency", "measure_memory", "top1"]
