"""Option selection: pick one option per block to minimize accuracy drop within latency/memory budgets.

:func:`solve` is the exact in-process solver used on the runtime switching path; :func:`solve_pulp` is the
reference MILP formulation (pulp/CBC); :func:`pareto_frontier` traces the trade-off curve.
"""

from legocompile.optimize.frontier import pareto_frontier
from legocompile.optimize.problem import (
    Budget,
    Cost,
    InfeasibleBudgetError,
    Solution,
    evaluate,
    format_mb,
    format_ms,
    validate_costs,
)
from legocompile.optimize.pulp_model import solve_pulp
from legocompile.optimize.solver import PreparedCosts, prepare, solve

__all__ = [
    "Budget",
    "Cost",
    "InfeasibleBudgetError",
    "PreparedCosts",
    "Solution",
    "evaluate",
    "format_mb",
    "format_ms",
    "pareto_frontier",
    "prepare",
    "solve",
    "solve_pulp",
    "validate_costs",
]
