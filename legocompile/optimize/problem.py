"""The block-selection problem: per-option costs, budgets, solutions and the infeasible-budget error.

A model is cut into a chain of blocks; each block has several *options* (a pruned variant x a precision), each
with a measured :class:`Cost`. A selection picks exactly one option per block. Its totals are

* ``latency_ms``: the sum of the chosen options' latencies, computed with :func:`math.fsum` (correctly rounded,
  so the result does not depend on the order of the blocks),
* ``memory_bytes``: the exact integer sum of the chosen options' memory,
* ``accuracy_drop``: the :func:`math.fsum` of the chosen options' accuracy drops.

A selection fits a :class:`Budget` when ``latency_ms <= budget.latency_ms`` and
``memory_bytes <= budget.memory_bytes`` (a ``None`` budget is unbounded). The optimum is the fitting selection
with the smallest ``accuracy_drop``; ties are broken by lower latency, then lower memory, then by the
lexicographically smallest ``choice`` (the option indices in block order). That is, the optimum is the fitting
selection with the least key ``(accuracy_drop, latency_ms, memory_bytes, choice)``, the totals as defined above
(so two selections tie on drop when their ``math.fsum`` totals are the same float, e.g. 1/360 + 2/360 and
3/360 + 0 as stored in floats, even if their exact sums differ in the last bits). The order is total, so the
optimum is unique.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from legocompile.errors import LegoCompileError

__all__ = [
    "Budget",
    "Cost",
    "InfeasibleBudgetError",
    "Solution",
    "evaluate",
    "format_mb",
    "format_ms",
    "validate_costs",
]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole_bytes(value: object, what: str) -> int:
    """Returns ``value`` as an int if it is a whole number of bytes, else raises LegoCompileError."""
    if not _is_real(value):
        raise LegoCompileError(f"{what} must be a whole number of bytes, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    as_float = float(value)  # type: ignore[arg-type]
    if not math.isfinite(as_float) or not as_float.is_integer():
        raise LegoCompileError(f"{what} must be a whole number of bytes, got {value!r}")
    return int(as_float)


@dataclass(frozen=True, slots=True)
class Cost:
    """The measured cost of one option of one block.

    Attributes:
        latency_ms: Measured latency of the option in milliseconds (finite, >= 0).
        memory_bytes: Memory the option needs, in bytes (a whole number >= 0).
        accuracy_drop: Top-1 accuracy points lost against the unpruned fp32 model (finite; may be slightly
            negative from measurement noise).
    """

    latency_ms: float
    memory_bytes: int
    accuracy_drop: float

    def __post_init__(self) -> None:
        latency = self.latency_ms
        if not _is_real(latency) or not math.isfinite(latency) or latency < 0:
            raise LegoCompileError(f"Cost.latency_ms must be a finite number >= 0, got {latency!r}")
        memory = _whole_bytes(self.memory_bytes, "Cost.memory_bytes")
        if memory < 0:
            raise LegoCompileError(f"Cost.memory_bytes must be >= 0, got {memory}")
        drop = self.accuracy_drop
        if not _is_real(drop) or not math.isfinite(drop):
            raise LegoCompileError(f"Cost.accuracy_drop must be a finite number, got {drop!r}")
        # Normalize numpy scalars & co. to plain Python numbers: the solver does its arithmetic on these.
        object.__setattr__(self, "latency_ms", float(latency))
        object.__setattr__(self, "memory_bytes", memory)
        object.__setattr__(self, "accuracy_drop", float(drop))


@dataclass(frozen=True)
class Budget:
    """Upper bounds on a selection's total latency and memory.

    Attributes:
        latency_ms: Largest allowed total latency in milliseconds, or None for no bound.
        memory_bytes: Largest allowed total memory in bytes, or None for no bound.

    Raises:
        LegoCompileError: A bound is not a positive number (memory: a positive whole number of bytes).
    """

    latency_ms: float | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        latency = self.latency_ms
        if latency is not None:
            if not _is_real(latency) or math.isnan(latency) or latency <= 0:
                raise LegoCompileError(f"the latency budget (latency_ms) must be a positive number, got {latency!r}")
            object.__setattr__(self, "latency_ms", float(latency))
        memory = self.memory_bytes
        if memory is not None:
            if _is_real(memory) and math.isinf(memory) and memory > 0:
                object.__setattr__(self, "memory_bytes", None)  # +inf bytes: unbounded
                return
            whole = _whole_bytes(memory, "the memory budget (memory_bytes)")
            if whole <= 0:
                raise LegoCompileError(f"the memory budget (memory_bytes) must be a positive number, got {memory!r}")
            object.__setattr__(self, "memory_bytes", whole)

    def describe(self) -> str:
        """Returns the budget in words, e.g. ``latency ≤ 1.20 ms and memory ≤ 3.0 MB``."""
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency ≤ {format_ms(self.latency_ms)} ms")
        if self.memory_bytes is not None:
            parts.append(f"memory ≤ {format_mb(self.memory_bytes)} MB")
        return " and ".join(parts) if parts else "no budget"


@dataclass(frozen=True)
class Solution:
    """One option chosen per block, with the selection's totals.

    Attributes:
        choice: Index of the chosen option in each block, in block order.
        latency_ms: Total latency (``math.fsum`` of the chosen latencies).
        memory_bytes: Total memory in bytes.
        accuracy_drop: Total accuracy drop (``math.fsum`` of the chosen drops).
    """

    choice: tuple[int, ...]
    latency_ms: float
    memory_bytes: int
    accuracy_drop: float

    def fits(self, budget: Budget) -> bool:
        """Returns whether the solution's totals are within ``budget``."""
        if budget.latency_ms is not None and not self.latency_ms <= budget.latency_ms:
            return False
        return budget.memory_bytes is None or self.memory_bytes <= budget.memory_bytes


def _decimals_to_tell_apart(a: float, b: float, decimals: int) -> int:
    """Returns the fewest decimals (>= ``decimals``) that print ``a`` and ``b`` differently (capped)."""
    while decimals < 9 and a != b and f"{a:.{decimals}f}" == f"{b:.{decimals}f}":
        decimals += 1
    return decimals


def _decimals_for(value: float, decimals: int) -> int:
    """Returns enough decimals (>= ``decimals``) to show a small non-zero ``value`` with 2 significant digits."""
    if value != 0 and abs(value) < 1:
        decimals = max(decimals, 1 - math.floor(math.log10(abs(value))))
    return min(decimals, 9)


def format_ms(latency_ms: float, other_ms: float | None = None) -> str:
    """Formats a latency in milliseconds with 2 decimals (more for tiny values, or to differ from ``other_ms``)."""
    decimals = _decimals_for(latency_ms, 2)
    if other_ms is not None:
        decimals = _decimals_to_tell_apart(latency_ms, other_ms, max(decimals, _decimals_for(other_ms, 2)))
    return f"{latency_ms:.{decimals}f}"


def format_mb(memory_bytes: float, other_bytes: float | None = None) -> str:
    """Formats bytes as MB (bytes / 1e6) with 1 decimal (more for tiny values, or to differ from ``other_bytes``)."""
    mb = memory_bytes / 1e6
    decimals = _decimals_for(mb, 1)
    if other_bytes is not None:
        other_mb = other_bytes / 1e6
        decimals = _decimals_to_tell_apart(mb, other_mb, max(decimals, _decimals_for(other_mb, 1)))
    return f"{mb:.{decimals}f}"


class InfeasibleBudgetError(LegoCompileError):
    """No selection fits the budget.

    Attributes:
        budget: The budget that was asked for.
        min_latency_ms: The smallest achievable total latency (memory ignored).
        min_memory_bytes: The smallest achievable total memory (latency ignored).
        jointly_infeasible: True when each bound can be met alone but not both at once.
    """

    def __init__(self, budget: Budget, min_latency_ms: float, min_memory_bytes: int) -> None:
        self.budget = budget
        self.min_latency_ms = min_latency_ms
        self.min_memory_bytes = min_memory_bytes
        latency_ok = budget.latency_ms is None or min_latency_ms <= budget.latency_ms
        memory_ok = budget.memory_bytes is None or min_memory_bytes <= budget.memory_bytes
        self.jointly_infeasible = latency_ok and memory_ok

        asked, found = [], []
        if budget.latency_ms is not None:
            asked.append(f"latency ≤ {format_ms(budget.latency_ms, min_latency_ms)} ms")
            found.append(f"the fastest selection takes {format_ms(min_latency_ms, budget.latency_ms)} ms")
        if budget.memory_bytes is not None:
            asked.append(f"memory ≤ {format_mb(budget.memory_bytes, min_memory_bytes)} MB")
            smallest = "the smallest" if found else "the smallest selection"
            found.append(f"{smallest} takes {format_mb(min_memory_bytes, budget.memory_bytes)} MB")
        message = f"no selection fits {' and '.join(asked) or 'the budget'}: {', '.join(found)}"
        if self.jointly_infeasible:
            message += "; each bound can be met alone but not both together (relax either)"
        else:
            relax = []
            if not latency_ok:
                relax.append(f"the latency budget to at least {format_ms(min_latency_ms, budget.latency_ms)} ms")
            if not memory_ok:
                relax.append(f"the memory budget to at least {format_mb(min_memory_bytes, budget.memory_bytes)} MB")
            message += f" (raise {' and '.join(relax)})"
        super().__init__(message)

    def __reduce__(self):  # keeps the error picklable (e.g. across process pools)
        return (type(self), (self.budget, self.min_latency_ms, self.min_memory_bytes))


def validate_costs(costs: Sequence[Sequence[Cost]]) -> None:
    """Checks the shape and types of a cost table.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.

    Raises:
        LegoCompileError: There are no blocks, a block has no options, or an entry is not a :class:`Cost`.
    """
    if len(costs) == 0:
        raise LegoCompileError("the cost table has no blocks: nothing to select")
    for b, block in enumerate(costs):
        if len(block) == 0:
            raise LegoCompileError(f"block {b} has no options: every block needs at least one profiled option")
        for o, cost in enumerate(block):
            if not isinstance(cost, Cost):
                raise LegoCompileError(f"costs[{b}][{o}] must be a Cost, got {type(cost).__name__}")


def evaluate(costs: Sequence[Sequence[Cost]], choice: Sequence[int]) -> Solution:
    """Returns the :class:`Solution` for a given choice of option per block.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.
        choice: The index of the chosen option in each block.

    Raises:
        LegoCompileError: ``choice`` does not name one valid option per block.
    """
    if len(choice) != len(costs):
        raise LegoCompileError(f"a choice needs one option per block: got {len(choice)} for {len(costs)} blocks")
    chosen = []
    for b, o in enumerate(choice):
        if not 0 <= o < len(costs[b]):
            raise LegoCompileError(f"block {b} has {len(costs[b])} options, option {o} does not exist")
        chosen.append(costs[b][o])
    return Solution(
        choice=tuple(int(o) for o in choice),
        latency_ms=math.fsum(c.latency_ms for c in chosen),
        memory_bytes=sum(c.memory_bytes for c in chosen),
        accuracy_drop=math.fsum(c.accuracy_drop for c in chosen),
    )
