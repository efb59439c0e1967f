"""The block-selection problem as a pulp MILP: the reference formulation, solved by CBC (bundled with pulp).

Binary ``x[b, o]`` = option ``o`` chosen for block ``b``::

    minimize    sum_{b,o} drop[b,o] * x[b,o]
    subject to  sum_o x[b,o] = 1                        for every block b
                sum_{b,o} latency[b,o] * x[b,o] <= L    (when L is given)
                sum_{b,o} memory[b,o]  * x[b,o] <= M    (when M is given; stated in MB for CBC's numerics)

CBC runs with cut generation off: the CBC bundled with pulp (2.10.3) has cut bugs that declared feasible budgets
of this model infeasible. Too slow for the runtime path (tens of ms per call, plus a CBC process spawn); see
:mod:`legocompile.optimize.solver` for the exact in-process solver. Used by tests and benchmarks as a cross-check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from legocompile.errors import LegoCompileError, MissingDependencyError
from legocompile.optimize.problem import Budget, Cost, InfeasibleBudgetError, Solution, evaluate, validate_costs

__all__ = ["solve_pulp"]


def solve_pulp(costs: Sequence[Sequence[Cost]], budget: Budget, *, msg: bool = False) -> Solution:
    """Solves the block-selection problem with pulp/CBC.

    Ties in accuracy drop are broken by CBC, not by latency/memory as in :func:`~legocompile.optimize.solve`;
    only the objective value is comparable. CBC's feasibility tolerance (~1e-6, relative) applies to the bounds.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.
        budget: Bounds on the total latency and memory.
        msg: Whether to let CBC print its log.

    Returns:
        The optimal :class:`~legocompile.optimize.problem.Solution` (totals recomputed from the costs).

    Raises:
        InfeasibleBudgetError: CBC proves that no selection fits the budget.
        MissingDependencyError: pulp is not installed.
        LegoCompileError: The cost table is malformed, or CBC ends without an optimal solution.
    """
    try:
        import pulp
    except ImportError as exc:  # pragma: no cover - pulp is a core dependency
        raise MissingDependencyError("pulp", "the reference MILP solver") from exc

    validate_costs(costs)
    min_latency_ms = math.fsum(min(c.latency_ms for c in block) for block in costs)
    min_memory_bytes = sum(min(c.memory_bytes for c in block) for block in costs)

    model = pulp.LpProblem("block_selection", pulp.LpMinimize)
    x = {
        (b, o): pulp.LpVariable(f"x_{b}_{o}", cat=pulp.LpBinary)
        for b, block in enumerate(costs)
        for o in range(len(block))
    }
    model += pulp.lpSum(c.accuracy_drop * x[b, o] for b, block in enumerate(costs) for o, c in enumerate(block))
    for b, block in enumerate(costs):
        model += pulp.lpSum(x[b, o] for o in range(len(block))) == 1, f"one_option_{b}"
    if budget.latency_ms is not None:
        model += (
            pulp.lpSum(c.latency_ms * x[b, o] for b, block in enumerate(costs) for o, c in enumerate(block))
            <= budget.latency_ms,
            "latency_budget",
        )
    if budget.memory_bytes is not None:
        # In MB, to keep the rows' magnitudes comparable (bytes are ~1e7 next to latencies ~1).
        model += (
            pulp.lpSum(c.memory_bytes / 1e6 * x[b, o] for b, block in enumerate(costs) for o, c in enumerate(block))
            <= budget.memory_bytes / 1e6,
            "memory_budget",
        )

    # Cut generation off: the CBC bundled with pulp (2.10.3) cuts off feasible selections of this model (the
    # knapsack/probing/two-MIR cuts; seen as "Problem proven infeasible" on budgets that a selection meets, cf.
    # coin-or/Cbc#337, fixed in later CBC releases). Without cuts it is slower but correct.
    status = model.solve(pulp.PULP_CBC_CMD(msg=msg, cuts=False))
    if status == pulp.LpStatusInfeasible:
        raise InfeasibleBudgetError(budget, min_latency_ms, min_memory_bytes)
    if status != pulp.LpStatusOptimal:
        raise LegoCompileError(f"CBC ended with status {pulp.LpStatus[status]!r} instead of an optimal solution")

    choice = []
    for b, block in enumerate(costs):
        values = [x[b, o].varValue or 0.0 for o in range(len(block))]
        choice.append(max(range(len(block)), key=values.__getitem__))
    return evaluate(costs, choice)
