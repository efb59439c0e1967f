"""Selections over a bundle's options: the optimizer applied to a manifest."""

from __future__ import annotations

from dataclasses import dataclass

from legocompile.bundle import Manifest, OptionEntry
from legocompile.optimize.problem import Budget, Cost
from legocompile.optimize.solver import solve


@dataclass(frozen=True)
class Selection:
    """One option per block, with the accuracy, latency and memory the profiles predict for it."""

    options: tuple[OptionEntry, ...]
    block_names: tuple[str, ...]
    teacher_accuracy: float

    @property
    def latency_ms(self) -> float:
        return float(sum(o.latency_ms for o in self.options))

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


def make_selection(manifest: Manifest, options) -> Selection:
    return Selection(tuple(options), tuple(b.name for b in manifest.blocks), float(manifest.teacher["accuracy"]))


def select_options(
    manifest: Manifest, *, latency_ms: float | None = None, memory_mb: float | None = None, costs=None
) -> Selection:
    """The most accurate selection with Σ latency ≤ ``latency_ms`` and Σ memory ≤ ``memory_mb`` (MB = 1e6 bytes).

    Raises:
        InfeasibleBudgetError: no selection fits; the message states the smallest achievable latency and memory.
    """
    budget = Budget(latency_ms=latency_ms, memory_bytes=None if memory_mb is None else int(round(memory_mb * 1e6)))
    solution = solve(costs if costs is not None else costs_of(manifest), budget)
    return make_selection(manifest, (b.options[i] for b, i in zip(manifest.blocks, solution.choice)))
