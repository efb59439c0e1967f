"""Selections over a bundle's options: the optimizer applied to a manifest."""

from __future__ import annotations

from dataclasses import dataclass

from legocompile.bundle import Manifest, OptionEntry
from legocompile.optimize.problem import Budget, Cost, InfeasibleBudgetError
from legocompile.optimize.solver import solve


@dataclass(frozen=True)
class Selection:
    """One option per block, with the accuracy, latency and memory the profiles predict for it."""

    options: tuple[OptionEntry, ...]
    block_names: tuple[str, ...]
    teacher_accuracy: float
    overhead_ms: float = 0.0  # the chain's fixed cost per call (copying in and out, the loop), measured

    @property
    def latency_ms(self) -> float:
        """Profiled block latencies plus the chain's fixed overhead per call."""
        return float(sum(o.latency_ms for o in self.options) + self.overhead_ms)

    @property
    def memory_bytes(self) -> int:
        return int(sum(o.memory_bytes for o in self.options))

    @property
    def accuracy(self) -> float:
        """Teacher accuracy minus the sum of the options' drops (the additive model)."""
        return float(self.teacher_accuracy - sum(o.accuracy_drop for o in self.options))

    def to_json(self) -> dict:
        return {
            "selection": [
                {"block": b, "variant": o.variant, "precision": o.precision}
                for b, o in zip(self.block_names, self.options)
            ],
            "predicted": {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "memory_bytes": self.memory_bytes},
        }


def costs_of(manifest: Manifest) -> list[list[Cost]]:
    return [[Cost(o.latency_ms, o.memory_bytes, o.accuracy_drop) for o in b.options] for b in manifest.blocks]


def chain_overhead_ms(manifest: Manifest) -> float:
    return float(manifest.teacher.get("chain_overhead_ms", 0.0))


def make_selection(manifest: Manifest, options) -> Selection:
    return Selection(tuple(options), tuple(b.name for b in manifest.blocks), float(manifest.teacher["accuracy"]),
                     chain_overhead_ms(manifest))


def select_options(
    manifest: Manifest, *, latency_ms: float | None = None, memory_mb: float | None = None, costs=None
) -> Selection:
    """The most accurate selection with Σ latency ≤ ``latency_ms`` and Σ memory ≤ ``memory_mb`` (MB = 1e6 bytes).

    Raises:
        InfeasibleBudgetError: no selection fits; the message states the smallest achievable latency and memory.
    """
    memory_bytes = None if memory_mb is None else int(round(memory_mb * 1e6))
    asked = Budget(latency_ms=latency_ms, memory_bytes=memory_bytes)  # validates what the user gave
    overhead = chain_overhead_ms(manifest)
    blocks_budget = None if latency_ms is None else max(latency_ms - overhead, 1e-12)
    try:
        solution = solve(costs if costs is not None else costs_of(manifest),
                         Budget(latency_ms=blocks_budget, memory_bytes=memory_bytes))
    except InfeasibleBudgetError as e:  # restate it in end-to-end terms: the overhead is part of every selection
        raise InfeasibleBudgetError(asked, e.min_latency_ms + overhead, e.min_memory_bytes) from None
    return make_selection(manifest, (b.options[i] for b, i in zip(manifest.blocks, solution.choice)))
