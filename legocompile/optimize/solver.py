"""Exact in-process solver for the block-selection problem (a two-constraint multiple-choice knapsack).

Why hand-written: the same problem stated for pulp (:mod:`legocompile.optimize.pulp_model`) is solved by CBC,
which costs tens of milliseconds per call (more on 20 x 30 tables) plus a solver process spawn and temporary
files. :func:`solve` runs on the runtime switching path (``rt.select(latency_ms=...)``), where it must answer in
a few milliseconds, allocate little and need no subprocess. The instances are small (<= ~20 blocks x ~30
options), so an exact depth-first branch and bound in pure Python with LP-relaxation bounds answers in about a
millisecond (see ``benchmarks/bench_optimizer.py``); pulp stays as the reference formulation that the tests check
this solver against.

Exactness: no discretization. Totals are compared exactly as defined in :mod:`legocompile.optimize.problem`
(``math.fsum`` of the chosen latencies / drops, exact integer sum of memory). The bounds are computed with
incremental float sums; they are padded by a tolerance orders of magnitude above their worst-case rounding error
(and by none where every sum is exact, e.g. drops in steps of 0.25), so they only ever prune branches that
cannot hold a better selection, and every candidate is re-checked exactly at the leaf. Ties in accuracy drop are
broken by lower latency, then lower memory (then by search order, which is deterministic).

Algorithm:

1. Per block, drop dominated options (another option no worse in drop, latency and memory, better in one;
   among identical options the lowest index is kept). Done once per cost table (:class:`PreparedCosts`).
2. Quick answers: a budget below the smallest achievable latency or memory raises
   :class:`~legocompile.optimize.problem.InfeasibleBudgetError`; a bound no selection can exceed is dropped; if the
   unconstrained optimum (best option per block) fits, it is the answer.
3. Lagrangian multipliers ``(lam, mu)`` of the LP relaxation. One bound: the exact 1-D dual, by the greedy walk
   over each block's lower convex hull (:func:`_walk`). Both bounds: first, if even the LP relaxation of "least
   memory within the latency bound" exceeds the memory bound, nothing fits; else ``mu`` maximizes the concave
   ``h(mu) = max_lam L(lam, mu)`` by 1-D cutting planes, each ``h`` being one walk. Every walk also yields an
   integral selection; those that fit the budget seed the incumbent (the greedy solution).
4. Depth-first branch and bound over the blocks (widest spread of reduced cost first), options in increasing
   reduced cost ``drop + lam * latency + mu * memory``. For the blocks not yet assigned (a suffix of the search
   order) suffix minima and suffix LP relaxations are precomputed, the latter for any capacity left (a binary
   search per node, :func:`_suffix_lp`). A branch is pruned when

   * partial latency + least remaining latency > L, likewise memory;
   * partial memory + the LP least memory of the rest within the latency left > M (catches selections that
     fit each bound alone but not both);
   * partial drop + least remaining drop > best drop;
   * the Lagrangian bound ``sum(reduced costs) + least remaining reduced costs - lam * L - mu * M`` > best drop
     (options come in increasing reduced cost, so the first option that fails it ends the block's loop);
   * the LP bound over the latency left (costs ``drop + mu * memory``) or over the memory left (costs
     ``drop + lam * latency``) > best drop;
   * (ties) no completion can have a smaller drop and every completion is slower than the incumbent.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from itertools import accumulate
from collections.abc import Iterable, Sequence
from operator import itemgetter

from legocompile.optimize.problem import (
    Budget,
    Cost,
    InfeasibleBudgetError,
    Solution,
    validate_costs,
)

__all__ = ["PreparedCosts", "prepare", "solve"]

_INF = math.inf
# Relative padding of the pruning bounds: 8 * (options + 8) float epsilons of the magnitudes involved, far above
# the rounding error of the bounds' float sums (at most ~options epsilons) and far below any meaningful difference.
_EPS = sys.float_info.epsilon

# An option after dominance filtering: (accuracy_drop, latency_ms, memory_bytes, index in its block).
_Option = tuple[float, float, int, int]


def _pareto_options(block: Sequence[Cost]) -> list[_Option]:
    """Returns the non-dominated options of one block, sorted by (drop, latency, memory, index)."""
    options = sorted((c.accuracy_drop, c.latency_ms, c.memory_bytes, o) for o, c in enumerate(block))
    kept: list[_Option] = []
    for option in options:
        _, latency, memory, _ = option
        # Every kept option has a drop <= this one (sort order); it dominates (or equals, with a lower index)
        # this one when it is also no worse in latency and memory.
        for _, kept_latency, kept_memory, _ in kept:
            if kept_latency <= latency and kept_memory <= memory:
                break
        else:
            kept.append(option)
    return kept


# A step down a block's lower convex hull: (cost per unit of w saved, block, step, w saved, c added, target option).
_Segment = tuple[float, int, int, float, float, int]
# A block's lower convex hull: (c of the start option, w of the start option, start option, segments).
_Hull = tuple[float, float, int, list[_Segment]]


def _hull(block_id: int, points: Iterable[tuple[float, float]]) -> _Hull:
    """Returns the walk down one block's lower convex hull in (w, c), for the LP relaxation.

    Args:
        block_id: Block identifier stored in the segments (keeps each block's steps in order when sorted).
        points: ``(c, w)`` for each option, in option order.

    Returns:
        ``(c, w, start, segments)``: the option with the least ``c`` (least ``w`` among those) and its ``c`` and
        ``w``, and the steps from it to the least-``w`` end of the hull, each trading ``w`` saved for ``c`` added
        at a non-decreasing rate.
    """
    hull: list[tuple[float, float, int]] = []
    for w3, c3, i in sorted((w, c, i) for i, (c, w) in enumerate(points)):
        # Increasing w: keep strictly decreasing c, then only the lower convex hull.
        if hull and c3 >= hull[-1][1]:
            continue
        while len(hull) >= 2:
            w1, c1, _ = hull[-2]
            w2, c2, _ = hull[-1]
            if (w2 - w1) * (c3 - c1) - (c2 - c1) * (w3 - w1) > 0:
                break
            hull.pop()
        hull.append((w3, c3, i))
    segments: list[_Segment] = []
    rate_floor = 0.0
    w_from, c_from, _ = hull[-1]
    for step in range(len(hull) - 1):
        w_to, c_to, target = hull[-2 - step]
        # Rounding can make the rates of a hull slightly non-monotone: keep each block's steps in hull order.
        rate_floor = max(rate_floor, (c_to - c_from) / (w_from - w_to))
        segments.append((rate_floor, block_id, step, w_from - w_to, c_to - c_from, target))
        w_from, c_from = w_to, c_to
    w_start, c_start, start = hull[-1]
    return c_start, w_start, start, segments


class _Walk:
    """The optimum of the 1-D Lagrangian dual ``max_t sum_b min_o (c + t w) - t * capacity`` (see :func:`_walk`)."""

    __slots__ = ("multiplier", "selection", "value", "other_lp")

    def __init__(self, multiplier: float, selection: list[int], value: float, other_lp: float) -> None:
        self.multiplier = multiplier  # the dual-optimal t >= 0
        self.selection = selection  # an integral selection (option per block) that fits, minimizing c + t w
        self.value = value  # the dual optimum = the LP relaxation's optimum
        self.other_lp = other_lp  # sum of a third attribute at the LP optimum (a fractional selection)


def _walk(hulls: list[_Hull], capacity: float, other: list[list[float]] | None = None) -> _Walk:
    """Solves the LP relaxation of ``min sum c s.t. sum w <= capacity``, one option per block.

    Greedy (Sinha & Zoltners): start from every block's least-``c`` option and walk down the blocks' lower convex
    hulls, globally in order of increasing ``c`` added per ``w`` saved, until the total fits; the rate of the last
    step is the optimal multiplier. The caller guarantees that the least-``w`` selection fits.

    Args:
        hulls: ``_hull(b, points of block b)`` for every block ``b``.
        capacity: The bound on ``sum w``.
        other: ``other[b][i]``, a third attribute of option ``i`` of block ``b`` whose total at the LP optimum
            (a fractional selection) is reported.
    """
    selection = [h[2] for h in hulls]
    total_c = math.fsum(h[0] for h in hulls)
    total_w = math.fsum(h[1] for h in hulls)
    segments = sorted([segment for h in hulls for segment in h[3]])
    multiplier = 0.0
    crossing = None
    for segment in segments:
        if total_w <= capacity:
            break
        multiplier, b, _, saved_w, added_c, target = segment
        crossing = (b, selection[b], target, saved_w)
        total_w -= saved_w
        total_c += added_c
        selection[b] = target
    value = total_c + multiplier * (total_w - capacity)
    other_lp = 0.0
    if other is not None:
        other_lp = math.fsum(other[b][i] for b, i in enumerate(selection))
        if crossing is not None and total_w < capacity:
            b, previous, target, saved_w = crossing
            other_lp += (capacity - total_w) / saved_w * (other[b][previous] - other[b][target])
    return _Walk(multiplier, selection, value, other_lp)


def _sums_exactly(values: list[list[float]]) -> bool:
    """Whether every sum of one value per block (and every partial sum) is exact in floating point.

    True when all values are multiples of a common power of two small enough that the largest possible sum
    stays below 2**53 units (e.g. drops in steps of 0.25, or all zero). Then bounds need no rounding slack, which
    lets exact ties be told apart (tie-breaking prunes).
    """
    ratios = [[value.as_integer_ratio() for value in block] for block in values]
    unit = max(den for block in ratios for _, den in block)  # the denominators are powers of two
    total = sum(max(abs(num) * (unit // den) for num, den in block) for block in ratios)
    return total < 2**53


_LP = tuple[list[float], list[float], list[list[float]], list[list[float]], list[list[float]], float]
_SAVED = itemgetter(3)
_ADDED = itemgetter(4)
_RATE = itemgetter(0)
_FIRST = itemgetter(0)


def _suffix_lp(hulls: list[_Hull]) -> _LP:
    """Precomputes the LP relaxation of every suffix of blocks ``k..n-1`` (in the given order) for any capacity.

    For suffix ``k`` and capacity ``R``, with ``need = w0[k] - R``: if ``need <= 0`` the LP optimum is
    ``c0[k]``; else with ``j = bisect_left(saved[k], need)`` (no ``j`` past the end: infeasible), it is
    ``c0[k] + added[k][j-1] + (need - saved[k][j-1]) * rates[k][j-1]``.

    Returns:
        ``(c0, w0, saved, added, rates, max_rate)``.
    """
    n = len(hulls)
    c0 = [0.0] * (n + 1)
    w0 = [0.0] * (n + 1)
    saved: list[list[float]] = [[0.0]] * (n + 1)
    added: list[list[float]] = [[0.0]] * (n + 1)
    rates: list[list[float]] = [[]] * (n + 1)
    merged: list[_Segment] = []
    for k in range(n - 1, -1, -1):
        c, w, _, segments = hulls[k]
        c0[k] = c0[k + 1] + c
        w0[k] = w0[k + 1] + w
        merged = sorted(merged + segments)
        saved[k] = list(accumulate(map(_SAVED, merged), initial=0.0))
        added[k] = list(accumulate(map(_ADDED, merged), initial=0.0))
        rates[k] = list(map(_RATE, merged))
    return c0, w0, saved, added, rates, (max(rates[0]) if rates[0] else 0.0)


class PreparedCosts:
    """A cost table prepared for repeated :meth:`solve` calls (dominance filtering and block statistics done once).

    Prepare once per profile and call :meth:`solve` on each budget change; :func:`solve` accepts either a raw
    cost table or a :class:`PreparedCosts`.

    Attributes:
        costs: The cost table, ``costs[b][o]``.
        min_latency_ms: The smallest achievable total latency (memory ignored).
        min_memory_bytes: The smallest achievable total memory (latency ignored).
        max_latency_ms: The largest total latency of a selection of non-dominated options.
        max_memory_bytes: The largest total memory of a selection of non-dominated options.
        unconstrained: The optimum without any budget.
    """

    __slots__ = (
        "costs",
        "_blocks",
        "_hulls",
        "min_latency_ms",
        "min_memory_bytes",
        "max_latency_ms",
        "max_memory_bytes",
        "unconstrained",
        "_scale_drop",
        "_exact_drop",
        "_exact_latency",
        "_tol_factor",
    )

    def __init__(self, costs: Sequence[Sequence[Cost]]) -> None:
        """Validates and prepares ``costs``.

        Raises:
            LegoCompileError: The table has no blocks, a block has no options, or an entry is not a Cost.
        """
        validate_costs(costs)
        self.costs = tuple(tuple(block) for block in costs)
        blocks = [_pareto_options(block) for block in self.costs]
        self._blocks = blocks
        self._hulls: dict[str, list[_Hull]] = {}  # budget-independent hulls, built on first use
        self.min_latency_ms = math.fsum(min(o[1] for o in block) for block in blocks)
        self.min_memory_bytes = sum(min(o[2] for o in block) for block in blocks)
        self.max_latency_ms = math.fsum(max(o[1] for o in block) for block in blocks)
        self.max_memory_bytes = sum(max(o[2] for o in block) for block in blocks)
        first = [block[0] for block in blocks]  # least (drop, latency, memory, index) per block
        self.unconstrained = Solution(
            choice=tuple(o[3] for o in first),
            latency_ms=math.fsum(o[1] for o in first),
            memory_bytes=sum(o[2] for o in first),
            accuracy_drop=math.fsum(o[0] for o in first),
        )
        self._scale_drop = math.fsum(max(abs(o[0]) for o in block) for block in blocks)
        self._tol_factor = 8 * (sum(len(block) for block in blocks) + 8) * _EPS
        self._exact_drop = _sums_exactly([[o[0] for o in block] for block in blocks])
        self._exact_latency = _sums_exactly([[o[1] for o in block] for block in blocks])

    def _cached_hulls(self, kind: str) -> list[_Hull]:
        """Per-block hulls that do not depend on the budget: (c, w) = (drop, latency), (drop, memory) or
        (memory, latency) for ``kind`` = "latency", "memory" or "least_memory"."""
        hulls = self._hulls.get(kind)
        if hulls is None:
            if kind == "latency":
                hulls = [_hull(b, [(o[0], o[1]) for o in block]) for b, block in enumerate(self._blocks)]
            elif kind == "memory":
                hulls = [_hull(b, [(o[0], float(o[2])) for o in block]) for b, block in enumerate(self._blocks)]
            else:
                hulls = [_hull(b, [(float(o[2]), o[1]) for o in block]) for b, block in enumerate(self._blocks)]
            self._hulls[kind] = hulls
        return hulls

    @property
    def num_blocks(self) -> int:
        """The number of blocks."""
        return len(self._blocks)

    def solve(self, budget: Budget) -> Solution:
        """Returns the selection with the least total accuracy drop that fits ``budget``.

        Raises:
            InfeasibleBudgetError: No selection fits the budget.
        """
        return self.solve_raw(budget.latency_ms, budget.memory_bytes, budget)

    def solve_raw(
        self, latency_ms: float | None, memory_bytes: int | None, budget: Budget | None = None
    ) -> Solution:
        """Like :meth:`solve`, with the bounds given directly (not validated; 0 is allowed).

        Args:
            latency_ms: Bound on the total latency, or None.
            memory_bytes: Bound on the total memory, or None.
            budget: The budget to name in an :class:`InfeasibleBudgetError` (default: built from the bounds).

        Raises:
            InfeasibleBudgetError: No selection fits the bounds.
        """
        if (latency_ms is not None and not self.min_latency_ms <= latency_ms) or (
            memory_bytes is not None and self.min_memory_bytes > memory_bytes
        ):
            raise self._infeasible(latency_ms, memory_bytes, budget)
        # A bound that no selection of non-dominated options can exceed changes nothing.
        if latency_ms is not None and latency_ms >= self.max_latency_ms:
            latency_ms = None
        if memory_bytes is not None and memory_bytes >= self.max_memory_bytes:
            memory_bytes = None
        best = self.unconstrained
        if (latency_ms is None or best.latency_ms <= latency_ms) and (
            memory_bytes is None or best.memory_bytes <= memory_bytes
        ):
            return best
        result = self._branch_and_bound(latency_ms, memory_bytes)
        if result is None:
            raise self._infeasible(latency_ms, memory_bytes, budget)
        return result

    def _infeasible(
        self, latency_ms: float | None, memory_bytes: int | None, budget: Budget | None
    ) -> InfeasibleBudgetError:
        if budget is None:
            budget = _unvalidated_budget(latency_ms, memory_bytes)
        return InfeasibleBudgetError(budget, self.min_latency_ms, self.min_memory_bytes)

    def _multipliers(
        self, lat_cap: float | None, mem_cap: int | None
    ) -> tuple[float, float, list[list[int]]] | None:
        """Returns LP-dual multipliers ``(lam, mu)`` for the bounds, and the integral selections met on the way.

        Returns None when not even the LP relaxation fits both bounds (then no selection fits).

        One bound: the exact 1-D dual (:func:`_walk`). Both: maximize ``h(mu) = max_lam L(lam, mu)`` (concave)
        by 1-D cutting planes on ``mu``; each ``h`` evaluation is a walk over latency with costs
        ``drop + mu * memory``, whose LP optimum also gives the supergradient ``memory_LP - M``.
        """
        blocks = self._blocks
        if mem_cap is None:
            walk = _walk(self._cached_hulls("latency"), lat_cap)
            return walk.multiplier, 0.0, [walk.selection]
        mem_walk = _walk(self._cached_hulls("memory"), mem_cap)
        if lat_cap is None:
            return 0.0, mem_walk.multiplier, [mem_walk.selection]

        selections = [mem_walk.selection]
        memory = [[float(o[2]) for o in block] for block in blocks]
        # The least memory within the latency bound, LP-relaxed: above the memory bound, nothing fits.
        least = _walk(self._cached_hulls("least_memory"), lat_cap)
        selections.append(least.selection)
        if least.value > mem_cap + self._tol_factor * 4 * (self.max_memory_bytes + mem_cap):
            return None

        def h(mu: float) -> tuple[float, float, float]:
            if mu == 0.0:
                hulls = self._cached_hulls("latency")
            else:
                hulls = [_hull(b, [(o[0] + mu * o[2], o[1]) for o in block]) for b, block in enumerate(blocks)]
            walk = _walk(hulls, lat_cap, memory)
            selections.append(walk.selection)
            return walk.value - mu * mem_cap, walk.other_lp - mem_cap, walk.multiplier

        h_a, s_a, lam_a = h(0.0)
        best = (h_a, lam_a, 0.0)
        if s_a <= 0:  # memory does not bind the LP relaxation
            return lam_a, 0.0, selections
        mu_a = 0.0
        mu_b = mem_walk.multiplier
        if mu_b <= 0.0:
            mu_b = (self._scale_drop + 1.0) / max(self.max_memory_bytes, 1)
        for _ in range(64):
            h_b, s_b, lam_b = h(mu_b)
            best = max(best, (h_b, lam_b, mu_b))
            if s_b <= 0:
                break
            mu_a, h_a, s_a = mu_b, h_b, s_b
            mu_b *= 4.0
        if s_b < 0:
            scale = abs(best[0]) + self._scale_drop + 1.0
            for _ in range(12):
                # The tangents at mu_a (rising) and mu_b (falling) bound h from above; evaluate where they meet.
                mu_c = (h_b - h_a + s_a * mu_a - s_b * mu_b) / (s_a - s_b)
                upper = h_a + s_a * (mu_c - mu_a)
                if not mu_a < mu_c < mu_b:
                    mu_c = 0.5 * (mu_a + mu_b)
                if upper - best[0] <= 1e-9 * scale:
                    break
                h_c, s_c, lam_c = h(mu_c)
                best = max(best, (h_c, lam_c, mu_c))
                if s_c > 0:
                    mu_a, h_a, s_a = mu_c, h_c, s_c
                elif s_c < 0:
                    mu_b, h_b, s_b = mu_c, h_c, s_c
                else:
                    break
        _, lam, mu = best
        return lam, mu, selections

    def _branch_and_bound(self, lat_cap: float | None, mem_cap: int | None) -> Solution | None:
        blocks = self._blocks
        n = len(blocks)
        tol = self._tol_factor
        fsum = math.fsum
        has_lat = lat_cap is not None
        has_mem = mem_cap is not None
        cap_l = lat_cap if has_lat else 0.0
        cap_m = mem_cap if has_mem else 0

        # --- Multipliers and incumbent -------------------------------------------------------------------------
        multipliers = self._multipliers(lat_cap, mem_cap)
        if multipliers is None:
            return None
        lam, mu, selections = multipliers
        best_key = (_INF, _INF, _INF)
        best_choice: list[int] | None = None
        for sel in selections:
            chosen = [blocks[b][i] for b, i in enumerate(sel)]
            lat = fsum(o[1] for o in chosen)
            mem = sum(o[2] for o in chosen)
            if (has_lat and lat > cap_l) or (has_mem and mem > cap_m):
                continue
            key = (fsum(o[0] for o in chosen), lat, mem)
            if key < best_key:
                best_key, best_choice = key, [o[3] for o in chosen]

        # --- Search order --------------------------------------------------------------------------------------
        # Each option becomes (drop, latency, memory, index, reduced cost); blocks with the widest spread of
        # reduced cost come first, options in increasing reduced cost.
        table = []
        for b, block in enumerate(blocks):
            options = sorted(
                ((o[0], o[1], o[2], o[3], o[0] + lam * o[1] + mu * o[2]) for o in block),
                key=lambda x: (x[4], x[1], x[2], x[3]),
            )
            table.append((options[0][4] - options[-1][4], b, options))
        table.sort()
        order = [b for _, b, _ in table]
        ordered = [options for _, _, options in table]

        # Suffix minima over the blocks not yet assigned (positions k..n-1 in search order).
        suf_d = [0.0] * (n + 1)
        suf_r = [0.0] * (n + 1)
        suf_l = [0.0] * (n + 1)
        suf_m = [0] * (n + 1)
        for k in range(n - 1, -1, -1):
            options = ordered[k]
            suf_d[k] = suf_d[k + 1] + min(x[0] for x in options)
            suf_r[k] = suf_r[k + 1] + options[0][4]
            suf_l[k] = suf_l[k + 1] + min(x[1] for x in options)
            suf_m[k] = suf_m[k + 1] + min(x[2] for x in options)

        # LP relaxations of the suffixes, each valid for any capacity left: over latency with costs
        # drop + mu * memory, over memory with costs drop + lam * latency, and the least memory within the
        # latency left (this one catches selections that fit each bound alone but not both).
        if has_lat:
            if mu == 0.0:
                hulls = self._cached_hulls("latency")
                lp_l = _suffix_lp([hulls[b] for b in order])
            else:
                lp_l = _suffix_lp([_hull(b, [(o[0] + mu * o[2], o[1]) for o in blocks[b]]) for b in order])
        if has_mem:
            if lam == 0.0:
                hulls = self._cached_hulls("memory")
                lp_m = _suffix_lp([hulls[b] for b in order])
            else:
                lp_m = _suffix_lp([_hull(b, [(o[0] + lam * o[1], float(o[2])) for o in blocks[b]]) for b in order])
        if has_lat and has_mem:
            hulls = self._cached_hulls("least_memory")
            lp_f = _suffix_lp([hulls[b] for b in order])

        scale_d = self._scale_drop
        scale_l = self.max_latency_ms + cap_l
        scale_m = float(self.max_memory_bytes + cap_m)
        tol_d = 0.0 if self._exact_drop else tol * 2 * scale_d
        tol_r = tol * 2 * (scale_d + lam * scale_l + mu * scale_m)
        tol_l = 0.0 if self._exact_latency else tol * 2 * scale_l
        joint = has_lat and has_mem
        tol_f = tol * 4 * (scale_m + (lp_f[5] * scale_l if joint else 0.0))
        tol_lp_l = tol * 4 * (scale_d + mu * scale_m + (lp_l[5] * scale_l if has_lat else 0.0))
        tol_lp_m = tol * 4 * (scale_d + lam * scale_l + (lp_m[5] * scale_m if has_mem else 0.0))
        const_r = lam * cap_l + mu * cap_m
        rest_r_all = [s - const_r for s in suf_r]
        lat_limit = cap_l + tol_l if has_lat else _INF
        mem_room = [cap_m - s for s in suf_m] if has_mem else [_INF] * (n + 1)
        const_lp_l = mu * cap_m
        const_lp_m = lam * cap_l

        # --- Depth-first search ------------------------------------------------------------------------------
        best_d, best_l, best_m = best_key
        lim_d = best_d + tol_d
        lim_r = best_d + tol_r
        lim_lp_l = best_d + tol_lp_l + const_lp_l
        lim_lp_m = best_d + tol_lp_m + const_lp_m
        lim_f = cap_m + tol_f
        path: list[tuple] = [()] * n
        last = n - 1
        tol_any = max(tol_d, tol_r, tol_lp_l, tol_lp_m)

        def leaf(mem: int) -> None:
            nonlocal best_d, best_l, best_m, lim_d, lim_r, lim_lp_l, lim_lp_m, best_choice
            lat = fsum([x[1] for x in path])
            if has_lat and lat > cap_l:
                return
            drop = fsum([x[0] for x in path])
            if (drop, lat, mem) < (best_d, best_l, best_m):
                best_d, best_l, best_m = drop, lat, mem
                lim_d = drop + tol_d
                lim_r = drop + tol_r
                lim_lp_l = drop + tol_lp_l + const_lp_l
                lim_lp_m = drop + tol_lp_m + const_lp_m
                choice = [0] * n
                for k, x in enumerate(path):
                    choice[order[k]] = x[3]
                best_choice = choice

        def dfs(k: int, p_d: float, p_l: float, p_m: int, p_r: float) -> None:
            k1 = k + 1
            rest_d = suf_d[k1]
            rest_l = suf_l[k1]
            rest_r = rest_r_all[k1]
            room_m = mem_room[k1]
            if has_lat:
                c0_l = lp_l[0][k1]
                w0_l = lp_l[1][k1] - cap_l
                saved_l = lp_l[2][k1]
                added_l = lp_l[3][k1]
                rates_l = lp_l[4][k1]
            if has_mem:
                c0_m = lp_m[0][k1]
                w0_m = lp_m[1][k1] - cap_m
                saved_m = lp_m[2][k1]
                added_m = lp_m[3][k1]
                rates_m = lp_m[4][k1]
            if joint:
                c0_f = lp_f[0][k1]
                w0_f = lp_f[1][k1] - cap_l
                saved_f = lp_f[2][k1]
                added_f = lp_f[3][k1]
                rates_f = lp_f[4][k1]
            at_leaf = k == last
            children = []
            for x in ordered[k]:
                q_r = p_r + x[4]
                bound = q_r + rest_r
                if bound > lim_r:
                    break  # options come in increasing reduced cost: the rest of the block is no better
                n_l = p_l + x[1]
                if n_l + rest_l > lat_limit:
                    continue
                n_m = p_m + x[2]
                if n_m > room_m:
                    continue
                n_d = p_d + x[0]
                bound_d = n_d + rest_d
                if bound_d > lim_d:
                    continue
                if has_lat:
                    need = w0_l + n_l  # latency the rest must save from its least-cost options
                    if need > 0.0:
                        j = bisect_left(saved_l, need)
                        if j < len(saved_l):
                            lp = c0_l + added_l[j - 1] + (need - saved_l[j - 1]) * rates_l[j - 1]
                        else:  # only by rounding (the latency check passed): the LP at the largest saving
                            lp = c0_l + added_l[-1]
                    else:
                        lp = c0_l
                    lp += n_d + mu * n_m
                    if lp > lim_lp_l:
                        continue
                    if lp - const_lp_l > bound:
                        bound = lp - const_lp_l
                if has_mem:
                    need = w0_m + n_m
                    if need > 0:
                        j = bisect_left(saved_m, need)
                        if j < len(saved_m):
                            lp = c0_m + added_m[j - 1] + (need - saved_m[j - 1]) * rates_m[j - 1]
                        else:  # only by rounding (the memory check passed): the LP at the largest saving
                            lp = c0_m + added_m[-1]
                    else:
                        lp = c0_m
                    lp += n_d + lam * n_l
                    if lp > lim_lp_m:
                        continue
                    if lp - const_lp_m > bound:
                        bound = lp - const_lp_m
                if joint:
                    need = w0_f + n_l
                    if need > 0.0:
                        j = bisect_left(saved_f, need)
                        if j < len(saved_f):
                            lp = c0_f + added_f[j - 1] + (need - saved_f[j - 1]) * rates_f[j - 1]
                        else:
                            lp = c0_f + added_f[-1]
                    else:
                        lp = c0_f
                    if n_m + lp > lim_f:
                        continue
                # Ties: no completion has a smaller drop, and every completion is slower than the incumbent.
                if bound_d - tol_d >= best_d and n_l + rest_l - tol_l > best_l:
                    continue
                if at_leaf:
                    path[k] = x
                    leaf(n_m)
                else:
                    children.append((bound if bound > bound_d else bound_d, bound_d, n_d, n_l, n_m, q_r, x))
            if children:
                # Most promising first (least lower bound): good incumbents early prune the rest.
                children.sort(key=_FIRST)
                for bound, bound_d, n_d, n_l, n_m, q_r, x in children:
                    if bound > best_d + tol_any:
                        break  # the incumbent improved meanwhile; the rest cannot beat it
                    if bound_d - tol_d >= best_d and n_l + rest_l - tol_l > best_l:
                        continue  # ties, against the improved incumbent
                    path[k] = x
                    dfs(k1, n_d, n_l, n_m, q_r)

        dfs(0, 0.0, 0.0, 0, 0.0)
        if best_choice is None:
            return None
        return Solution(choice=tuple(best_choice), latency_ms=best_l, memory_bytes=best_m, accuracy_drop=best_d)


def _unvalidated_budget(latency_ms: float | None, memory_bytes: int | None) -> Budget:
    """Builds a Budget for an error message without validation (raw bounds may be 0)."""
    budget = object.__new__(Budget)
    object.__setattr__(budget, "latency_ms", latency_ms)
    object.__setattr__(budget, "memory_bytes", memory_bytes)
    return budget


def prepare(costs: Sequence[Sequence[Cost]]) -> PreparedCosts:
    """Prepares a cost table for repeated :func:`solve` calls.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.

    Raises:
        LegoCompileError: The table has no blocks, a block has no options, or an entry is not a Cost.
    """
    return PreparedCosts(costs)


def solve(costs: Sequence[Sequence[Cost]] | PreparedCosts, budget: Budget) -> Solution:
    """Returns the selection (one option per block) with the least total accuracy drop that fits ``budget``.

    Exact; ties in drop are broken by lower latency, then lower memory.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``, or a :class:`PreparedCosts` (cheaper
            when solving the same table for many budgets).
        budget: Bounds on the total latency and memory.

    Returns:
        The optimal :class:`~legocompile.optimize.problem.Solution`.

    Raises:
        InfeasibleBudgetError: No selection fits the budget (the error carries the least achievable latency and
            memory).
        LegoCompileError: The cost table is malformed.
    """
    prepared = costs if isinstance(costs, PreparedCosts) else PreparedCosts(costs)
    return prepared.solve(budget)
