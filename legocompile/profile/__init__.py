"""Per-engine profiles measured on this device: latency, resident memory, accuracy drop."""

from legocompile.profile.accuracy import top1
from legocompile.profile.latency import LatencyStats, measure_latency

__all__ = ["LatencyStats", "measure_latency", "top1"]
