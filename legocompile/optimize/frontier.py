"""The accuracy / latency / memory trade-off curve of a cost table (for the ``pareto`` command)."""

from __future__ import annotations

from collections.abc import Sequence

from legocompile.errors import LegoCompileError
from legocompile.optimize.problem import Cost, InfeasibleBudgetError, Solution
from legocompile.optimize.solver import PreparedCosts

__all__ = ["pareto_frontier"]


def _sweep(low: float, high: float, num_points: int) -> list[float]:
    """Returns ``num_points`` evenly spaced values from ``low`` to ``high`` (both exactly included)."""
    if high <= low:
        return [low]
    step = (high - low) / (num_points - 1)
    return [low] + [low + i * step for i in range(1, num_points - 1)] + [high]


def _dominates(a: Solution, b: Solution) -> bool:
    """Whether ``a`` is no worse than ``b`` in latency, memory and drop, and better in one."""
    no_worse = a.latency_ms <= b.latency_ms and a.memory_bytes <= b.memory_bytes and a.accuracy_drop <= b.accuracy_drop
    better = a.latency_ms < b.latency_ms or a.memory_bytes < b.memory_bytes or a.accuracy_drop < b.accuracy_drop
    return no_worse and better


def pareto_frontier(costs: Sequence[Sequence[Cost]] | PreparedCosts, num_points: int = 50) -> list[Solution]:
    """Returns optimal selections across the range of useful budgets.

    Sweeps ``num_points`` latency budgets from the least achievable total latency to the latency of the
    unconstrained optimum (the least-drop selection), then ``num_points`` memory budgets likewise, solves each
    exactly, and keeps the distinct solutions that no other one dominates (in latency, memory and drop).

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b`` (or a prepared table).
        num_points: Budgets per sweep (>= 2).

    Returns:
        The non-dominated solutions, sorted by latency (then memory, then drop).

    Raises:
        LegoCompileError: ``num_points`` < 2 or the cost table is malformed.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise LegoCompileError(f"num_points must be an integer >= 2, got {num_points!r}")
    prepared = costs if isinstance(costs, PreparedCosts) else PreparedCosts(costs)
    best = prepared.unconstrained

    found: dict[tuple[float, int, float], Solution] = {}

    def add(solution: Solution) -> None:
        key = (solution.latency_ms, solution.memory_bytes, solution.accuracy_drop)
        if key not in found or solution.choice < found[key].choice:
            found[key] = solution

    add(best)
    for latency_ms in _sweep(prepared.min_latency_ms, best.latency_ms, num_points):
        add(prepared.solve_raw(latency_ms, None))
    memory_budgets = _sweep(prepared.min_memory_bytes, best.memory_bytes, num_points)
    for memory_bytes in sorted({round(m) for m in memory_budgets}):
        try:
            add(prepared.solve_raw(None, max(memory_bytes, prepared.min_memory_bytes)))
        except InfeasibleBudgetError:  # pragma: no cover - every budget >= the least memory is feasible
            continue

    candidates = list(found.values())
    frontier = [s for s in candidates if not any(_dominates(other, s) for other in candidates)]
    frontier.sort(key=lambda s: (s.latency_ms, s.memory_bytes, s.accuracy_drop, s.choice))
    return frontier
