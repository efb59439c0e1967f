"""Exact in-process solver for the block-selection problem (a two-constraint multiple-choice knapsack).

Why hand-written: the same problem stated for pulp (:mod:`legocompile.optimize.pulp_model`) is solved by CBC,
which costs tens of milliseconds per call plus a solver process spawn and temporary files. :func:`solve` runs on
the runtime switching path (``rt.select(latency_ms=...)``), where it must answer in about a millisecond, allocate
little and need no subprocess. pulp stays as the reference formulation that the tests check this solver against.

**Engines.** :class:`PreparedCosts` hands the search to the C++ port of it (``lc::PreparedCosts``,
legocompile/runtime/cpp/src/solver.cpp, through :mod:`legocompile.optimize.native_solver`) when its library is built
(``pip install`` compiles it; ``$LEGOCOMPILE_SOLVER=auto|native|python``): the same answers, far faster
(``benchmarks/bench_optimizer.py`` measures both). Everything else stays here, for both engines: validating the
table, the bounds' shortcuts in :meth:`PreparedCosts.solve_raw`, the totals
(:func:`~legocompile.optimize.problem.evaluate`: ``math.fsum``) and :class:`InfeasibleBudgetError`. The search
below is the fallback (no library, memory totals beyond int64, scales beyond the C++ exact search, a failed native
call) and the reference the tests compare the C++ one with.

**The order** (see :mod:`legocompile.optimize.problem`): the least ``accuracy_drop``, then the least
``latency_ms``, then the least ``memory_bytes`` (drops and latencies compared as their ``math.fsum`` totals, i.e.
correctly rounded), then the lexicographically smallest ``choice`` (option indices in block order). The order is
total, so the answer does not depend on the search order.

**Exact arithmetic.** Every drop and latency is a binary float, so scaling all drops (all latencies) by one power
of two makes them exact integers (Python ints; memory already is one). All sums, bounds and pruning decisions are
exact integer arithmetic, with no tolerance anywhere. The rounded total of a sum ``v`` is ``v / scale`` (Python's
int / int division is correctly rounded, so it equals ``math.fsum`` of the floats). Rounding is monotone, so "the
rounded drop can equal the incumbent's" is the exact test ``v >= lo`` and "can be no larger" is ``v <= hi``,
where ``[lo, hi]`` is the band of integers that round to the incumbent's value (:func:`_band`); a latency bound
``L`` becomes the integer limit ``v <= _limit(L)``.

**Why this algorithm.** The previous solver was a branch and bound with LP-relaxation bounds on the drop only:
where drops tie (all zero on a saturated model, or multiples of 1/N_eval), no branch could be pruned on drop and
the latency/memory tie-break had no bound, so it explored whole subtrees of equal drop (100-460 ms for 8 x 6
all-zero tables, over 30 s for 12 x 8). A full precomputed frontier (every non-dominated (drop, latency, memory)
total) answers any budget by look-up, but it has 10^4-10^5 points for 16 x 15 tables with varied drops, too many
to build in Python at load time. A DP over budgets needs integer budgets. So: a branch and bound whose bounds fold
in the whole order (drop, then latency, then memory), exactly, from exact 2-D information precomputed per suffix
of blocks -- small enough to build at load time, and exact for the single-budget cases.

**Algorithm: depth-first branch and bound with exact 2-D bounds precomputed per suffix of blocks.** The blocks are
searched in a fixed order (those whose options differ most first). For the blocks ``j..n-1`` not yet assigned,
:func:`prepare` builds Pareto *staircases* of the suffix's totals (:func:`_staircases`, the Nemhauser-Ullmann merge,
one block at a time): the non-dominated ``(x, y)`` totals over all selections of the suffix, for

* ``(latency, drop)``, ``(memory, drop)``, ``(latency, memory)``: each answers, by one binary search, exactly "the
  least ``y`` of any completion with ``x <= r``" and "the least ``x`` with ``y <= r``";
* a "lexicographic" ``(memory, a*drop + b*latency)`` whose drop steps outweigh any latency span: the latency of
  the completions that tie on drop under a memory budget (``b*latency >= K - a*drop``);
* joint bounds for both budgets at once: surrogate ``(c*latency + e*memory, drop)`` and Lagrangian ``(memory,
  a*drop + b*latency)`` and ``(latency, a*drop + b*memory)`` for a few ratios around the table's own spans (a
  completion within both budgets has ``a*drop >= K(memory left) - b*latency left``).

The first three kinds are exact; the last two are bounds only, so they are coarsened (at most ``_COARSE_LEX`` and
``_COARSE`` points), which keeps :func:`prepare` fast.

**Both budgets: drop-level staircases** (:class:`_Levels`). With both budgets the question is three-dimensional:
"does a completion fit latency ``r_t`` *and* memory ``r_m`` with a drop of at most ``cap``?". So for each suffix and
each *drop level* (a completion's level is the sum of its options' ``residual // step``, the residual being the
option's drop above its block's least), the ``(latency, memory)`` staircase of the completions at or below that
level is built with numpy at prepare time. One binary search over the levels gives the least level that fits both
budgets, and ``least[j][level]`` (the least exact residual sum at that level or above, a small DP) turns it into a
drop bound that is exact when the drops lie on a grid, e.g. multiples of 1/N_eval, which floats store only nearly
(:func:`_level_step` finds the grid). The same staircases bound the latency and the memory among drop ties under
both budgets. Continuous drops get ``_LEVELS`` levels over the table's range: bounds only, still far tighter than
the joint ones. Measured on the benchmark's tie-heavy family (16 x 15, both budgets at random selections' exact
totals), the worst search fell from 2484 nodes to 31.

At a node (a prefix of choices), for each option of the next block, the search computes from the staircases:
whether any completion fits both budgets (exact, from ``(latency, memory)``); a lower bound on the total drop (the
largest staircase bound); and, where that bound cannot beat the incumbent's rounded drop, lower bounds on the
latency and then the memory of the completions that could tie it. An option is pruned as soon as it cannot beat
the incumbent in the order above (on a complete tie: when the smallest choice it can lead to is not smaller than
the incumbent's). The rest are searched most promising first (least drop bound; before the first incumbent, least
latency bound among those). Per block, options that can never be the answer are dropped once (:func:`_filter`).

**What is guaranteed, what is measured.** The single-budget drop bounds are exact, and so are the latency bounds
among drop ties under a latency budget alone, and under any budgets when every block's drops are equal (e.g. all
zero). Then the search is one descent plus the sibling checks: at most about ``2 * n * options`` bound
evaluations of a few binary searches each, whatever the budget (0.1-0.7 ms for 16 x 15 measured). Under a memory
budget alone with tied drops, the latency among the ties is bounded by the lexicographic staircase (a Lagrangian
bound, not exact): measured, one to three descents. With both budgets and drops that differ, the problem is
genuinely two-dimensional and the joint bounds are relaxations: usually a few descents, but on adversarial tables
(drops independent of latency and memory, both budgets tight) thousands of nodes. ``benchmarks/bench_optimizer.py``
measures each case per family.

**Porting** (e.g. to C++): the staircases are plain sorted integer arrays (per suffix: ``xs`` ascending, ``ys``
descending, with ``-ys`` kept for the reverse search), built once per table by sort-and-scan merges; the search
is a recursive loop of ``upper_bound``/``lower_bound`` look-ups over them. Exact sums need integers wider than 64
bits when the scaled values do: use ``__int128`` when ``scale * max|value| * blocks`` fits (check it at prepare
time; it does for measured profiles), else a multi-word integer. The ratios of the joint and lexicographic
staircases are powers of two that may be clamped to keep their keys within 127 bits: any positive ratio gives a
valid bound. ``_band`` and ``_limit`` compare an integer with the midpoint of a double and its neighbour, both
exact dyadic rationals (``_half_sum_scaled``).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from legocompile.optimize import native_solver
from legocompile.optimize.problem import (
    Budget,
    Cost,
    InfeasibleBudgetError,
    Solution,
    evaluate,
    validate_costs,
)

__all__ = ["PreparedCosts", "prepare", "solve"]

_INF = math.inf
# Ratios of the joint-bound staircases: powers of two (steps) around the table's own span ratio, 0 being the
# ratio itself. Measured on the benchmark's families: all three Lagrangian ratios prune, the surrogate
# ratios other than the table's own rarely do.
_RATIO_STEPS = (-2, 0, 2)
_SURROGATE_STEPS = (0,)
# Points per bound-only staircase (coarsened beyond that, see _staircases): the joint bounds keep 256, the
# lexicographic one 1024. Measured on the benchmark's families: a fifth less prepare work than exact staircases,
# for about as much pruning.
_COARSE = 256
_COARSE_LEX = 1024

# An option: (drop, latency, memory, index in its block), drop and latency as scaled integers.
_Option = tuple[int, int, int, int]
# Staircases of every suffix j (index j; index 0 is not built): xs ascending, ys descending, -ys ascending.
_Stairs = tuple[list[list[int]], list[list[int]], list[list[int]]]


def _scale(values: Sequence[float]) -> int:
    """The smallest power of two that makes every value an integer (all floats are dyadic rationals)."""
    scale = 1
    for value in values:
        den = value.as_integer_ratio()[1]
        if den > scale:
            scale = den
    return scale


def _to_int(value: float, scale: int) -> int:
    num, den = value.as_integer_ratio()
    return num * (scale // den)


def _filter(options: list[_Option]) -> list[_Option]:
    """Drops the options of one block that can never be the answer; the rest sorted by (drop, latency, memory).

    Option ``o`` goes when another ``k`` is no worse in drop, latency and memory and either needs strictly less
    memory (then swapping ``o`` for ``k`` gives a strictly smaller key) or has a smaller index (then it gives a
    key no larger, and a smaller choice). An ``o`` that only loses on drop or latency to an option with a larger
    index stays: rounding can make the totals tie, and then ``o``'s smaller index wins.
    """
    kept: list[_Option] = []
    for option in sorted(options):
        _, latency, memory, index = option
        for _, k_latency, k_memory, k_index in kept:  # every kept option has a drop <= this one (sort order)
            if k_latency <= latency and k_memory <= memory and (k_memory < memory or k_index < index):
                break
        else:
            kept.append(option)
    return kept


def _pareto(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The non-dominated points (least ``y`` for each ``x``), sorted by ``x`` ascending, ``y`` descending."""
    front: list[tuple[int, int]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def _staircases(blocks: list[list[tuple[int, int]]], limit: int | None = None) -> _Stairs:
    """The Pareto staircases of the suffix sums of ``(x, y)`` (one point per option), for suffixes 1..n-1.

    Staircase ``j`` holds the non-dominated ``(sum x, sum y)`` over one option from each block ``j..n-1``; index
    ``n`` is the empty suffix ``(0, 0)`` and index 0 (the whole table, never needed) is not built. Built from the
    back, each as the Pareto set of the previous one shifted by every point of the block. Points are packed into
    one integer ``x << shift | y`` (with per-block offsets that keep both non-negative), so the merge is one
    integer sort and one scan.

    With ``limit``, each staircase with more points is *coarsened* to at most about ``limit``: the points in each
    of ``limit`` equal slices of the x range are replaced by one point (the slice's least x, least y), which
    dominates them. Its look-ups are then lower bounds only (used for the joint bounds, where that costs little),
    and the next suffix is built from the coarse one, which keeps ``prepare`` fast.
    """
    n = len(blocks)
    blocks = [_pareto(block) for block in blocks]
    min_x = [block[0][0] for block in blocks]
    min_y = [block[-1][1] for block in blocks]
    span = sum(block[0][1] - low for block, low in zip(blocks, min_y))
    shift = span.bit_length() + 1
    mask = (1 << shift) - 1
    xs: list[list[int]] = [[]] * (n + 1)
    ys: list[list[int]] = [[]] * (n + 1)
    neg_ys: list[list[int]] = [[]] * (n + 1)
    xs[n], ys[n], neg_ys[n] = [0], [0], [0]
    packed = [0]
    base_x = base_y = 0
    for j in range(n - 1, 0, -1):
        low_x, low_y = min_x[j], min_y[j]
        candidates: list[int] = []
        for x, y in blocks[j]:
            offset = ((x - low_x) << shift) | (y - low_y)
            candidates += [v + offset for v in packed]
        candidates.sort()
        packed = []
        best = mask + 1
        for v in candidates:
            y = v & mask
            if y < best:
                packed.append(v)
                best = y
        if limit is not None and len(packed) > limit:
            first = packed[0] >> shift
            width = ((packed[-1] >> shift) - first) // limit + 1
            coarse = [packed[0]]
            slice_of = 0
            for v in packed[1:]:
                s = ((v >> shift) - first) // width
                if s == slice_of:
                    coarse[-1] = (coarse[-1] & ~mask) | (v & mask)  # the slice's first x, its last (least) y
                else:
                    coarse.append(v)
                    slice_of = s
            packed = coarse
        base_x += low_x
        base_y += low_y
        xs[j] = [(v >> shift) + base_x for v in packed]
        ys[j] = [(v & mask) + base_y for v in packed]
        neg_ys[j] = [-y for y in ys[j]]
    return xs, ys, neg_ys


def _half_sum_scaled(a: float, b: float, scale: int) -> tuple[int, int]:
    """``(a + b) * scale / 2`` as an integer fraction ``(num, den)``, den > 0 (exact)."""
    a_num, a_den = a.as_integer_ratio()
    b_num, b_den = b.as_integer_ratio()
    den = max(a_den, b_den)
    return (a_num * (den // a_den) + b_num * (den // b_den)) * scale, 2 * den


def _band(value: float, scale: int) -> tuple[int, int]:
    """The integers ``v`` with ``v / scale == value`` (correctly rounded): ``(lo, hi)``; ``value`` is one of them."""
    num, den = _half_sum_scaled(math.nextafter(value, -_INF), value, scale)
    lo = -(-num // den)  # ceil: the first integer at or above the midpoint with the float below
    if lo / scale != value:
        lo += 1  # the midpoint itself rounds to the float below (ties to even)
    num, den = _half_sum_scaled(value, math.nextafter(value, _INF), scale)
    hi = num // den
    if hi / scale != value:
        hi -= 1
    return lo, hi


def _limit(value: float, scale: int) -> int:
    """The largest integer ``v`` with ``v / scale <= value`` (correctly rounded)."""
    num, den = _half_sum_scaled(value, math.nextafter(value, _INF), scale)
    hi = num // den
    while hi / scale > value:
        hi -= 1
    return hi


def _ratio(numerator: int, denominator: int, step: int) -> tuple[int, int]:
    """``(a, b)`` powers of two with ``b / a`` the power of two nearest ``numerator / denominator``, times 2**step."""
    e = round(math.log2(numerator) - math.log2(denominator)) + step
    return (1, 1 << e) if e >= 0 else (1 << -e, 1)


# Drop-level staircases (see _Levels): at most this many drop levels per table, and this many points per level
# staircase (coarsened beyond). Measured on the benchmark's families: 64 levels left the 16 x 10 q360-mono tables
# (up to 192 grid levels) at 817 nodes, 256 at under 100; 1024 points per staircase pruned no more than 128.
_LEVELS = 256
_LEVEL_POINTS = 128
# Latency and memory are quantised for the level staircases so that their sums fit in int64 (numpy): the units
# are chosen so that a whole table's total is below 2**_QUANT_BITS.
_QUANT_BITS = 40


class _Levels:
    """Per suffix of blocks and per drop level, the (latency, memory) staircase of the completions whose drop is
    at most that level: the 3-D information that bounds the drop exactly under both budgets at once.

    Drops are split as ``drop = least drop of the block + residual``; a residual becomes the level
    ``residual // delta``, ``delta`` from :func:`_level_step` (the grid of the drops when they lie on one, such as
    multiples of 1/N_eval: the levels are then exact; else a coarser step, and ``least`` gives the bound). Latency and
    memory are floored to units ``qt`` and ``qm`` (a completion within ``r`` has quantised total ``<= r // q``),
    and a staircase of more than ``_LEVEL_POINTS`` points is coarsened to dominating points. So every look-up is
    a valid relaxation: "no point fits" proves that no completion fits.
    """

    __slots__ = ("delta", "base", "qt", "qm", "top", "least", "xs", "ys", "neg_ys")


def _level_step(residuals: list[list[int]]) -> int:
    """The drop step of the levels (0 when all drops tie): any positive step gives valid bounds (a residual
    ``r`` is at least ``step * (r // step)``); a good one makes ``r // step`` lose little.

    Drops on a grid (multiples of 1/N_eval, stored as floats, so only nearly multiples of one unit): the unit
    shrunk by a relative 1e-9, so every residual floors to its multiple exactly. Otherwise (or when the grid has
    more than ``_LEVELS`` levels): the total range split into ``_LEVELS`` steps.
    """
    values = sorted({r for block in residuals for r in block if r > 0})
    if not values:
        return 0
    total = sum(max(block) for block in residuals)
    coarse = -(-total // _LEVELS)
    g = 0
    for r in values:
        g = math.gcd(g, r)
    if total // g <= _LEVELS:
        return g  # exact integer grid
    for parts in range(1, 5):  # the smallest residual is 1..4 units
        unit = values[0] / parts
        if all(abs(r / unit - round(r / unit)) <= 1e-6 for r in values):
            step = int(unit * (1 - 1e-9))
            if step > 0 and total // step <= _LEVELS:
                return step
            break
    return max(coarse, 1)


def _level_staircases(blocks: list[list[_Option]]) -> _Levels | None:
    """The :class:`_Levels` of the suffixes 1..n-1 of ``blocks`` (search order), built from the back with numpy."""
    import numpy as np

    n = len(blocks)
    residuals = [[o[0] - block[0][0] for o in block] for block in blocks]  # blocks are sorted by drop
    delta = _level_step(residuals)
    if delta == 0:
        return None
    levels = [[r // delta for r in block] for block in residuals]
    qt = max(1, sum(max(o[1] for o in block) for block in blocks) >> _QUANT_BITS)
    qm = max(1, sum(max(o[2] for o in block) for block in blocks) >> _QUANT_BITS)

    out = _Levels()
    out.delta, out.qt, out.qm = delta, qt, qm
    out.base = [0] * (n + 1)
    out.top = [0] * (n + 1)
    # least[j][c]: the least exact residual sum of a completion of suffix j whose level is at least c (so a
    # completion proven to be at level >= c has a drop >= base + least[j][c], exact on a grid)
    out.least = [[]] * (n + 1)
    least = [0]
    out.xs, out.ys, out.neg_ys = [[]] * (n + 1), [[]] * (n + 1), [[]] * (n + 1)
    prev_x = [np.zeros(1, dtype=np.int64)]
    prev_y = [np.zeros(1, dtype=np.int64)]
    top = 0
    for j in range(n - 1, 0, -1):
        block = blocks[j]
        out.base[j] = out.base[j + 1] + block[0][0]
        shifts = [(lv, o[1] // qt, o[2] // qm) for lv, o in zip(levels[j], block)]
        new_top = top + max(levels[j])
        cur_x, cur_y = [], []
        for c in range(new_top + 1):
            parts_x = [prev_x[min(c - lv, top)] + t for lv, t, _ in shifts if lv <= c]
            parts_y = [prev_y[min(c - lv, top)] + m for lv, _, m in shifts if lv <= c]
            x = np.concatenate(parts_x)
            y = np.concatenate(parts_y)
            order = np.lexsort((y, x))
            x, y = x[order], y[order]
            best = np.minimum.accumulate(y)
            keep = np.empty(len(y), dtype=bool)
            keep[0] = True
            keep[1:] = y[1:] < best[:-1]
            x, y = x[keep], y[keep]
            if len(x) > _LEVEL_POINTS:  # coarsen: per slice of the x range, (its least x, its least y)
                width = (int(x[-1]) - int(x[0])) // _LEVEL_POINTS + 1
                slices = (x - x[0]) // width
                first = np.flatnonzero(np.diff(slices, prepend=-1))
                last = np.append(first[1:], len(x)) - 1
                x, y = x[first], y[last]
            cur_x.append(x)
            cur_y.append(y)
        residual = [o[0] - block[0][0] for o in block]
        least = [
            min(r + least[max(c - lv, 0)] for r, lv in zip(residual, levels[j]) if c - lv <= top)
            for c in range(new_top + 1)
        ]
        prev_x, prev_y, top = cur_x, cur_y, new_top
        out.top[j] = top
        out.least[j] = least
        out.xs[j] = [a.tolist() for a in cur_x]
        out.ys[j] = [a.tolist() for a in cur_y]
        out.neg_ys[j] = [[-v for v in a] for a in out.ys[j]]
    return out


# The C++ solver's exact integer search takes tables whose scaled values fit 92 bits and totals 100 (solver.cpp,
# kFitBits; its scales are over the options it keeps, at most Python's, so this check is conservative). Beyond
# (drops far below the others' last bit, e.g. 1e-40 next to 0.1) it falls back to a float search without drop-level
# bounds (measured up to 264 s on a 16 x 15 table), so such tables are searched here instead.
_NATIVE_FIT_BITS = 100
_PREPARE_LOCK = threading.Lock()  # the lazy _prepare_search after a native failure


def _fits_native(filtered: list[list[_Option]], drop_scale: int, latency_scale: int) -> bool:
    """Whether the C++ solver searches this table (scaled as :class:`PreparedCosts` does) with its exact search."""
    if max(drop_scale, latency_scale).bit_length() - 1 > _NATIVE_FIT_BITS:
        return False
    for a in range(3):
        tops = [max(abs(o[a]) for o in block) for block in filtered]
        if max(tops).bit_length() > _NATIVE_FIT_BITS - 8 or sum(tops).bit_length() > _NATIVE_FIT_BITS:
            return False
    return True


class PreparedCosts:
    """A cost table prepared for repeated :meth:`solve` calls (the staircases of every suffix built once).

    Prepare once per profile and call :meth:`solve` on each budget change; :func:`solve` accepts either a raw
    cost table or a :class:`PreparedCosts`.

    Attributes:
        costs: The cost table, ``costs[b][o]``.
        min_latency_ms: The smallest achievable total latency (memory ignored).
        min_memory_bytes: The smallest achievable total memory (latency ignored).
        max_latency_ms: The largest total latency of a selection of the options that can be chosen (a latency
            bound at or above it constrains nothing).
        max_memory_bytes: Likewise for memory.
        unconstrained: The optimum without any budget.
        engine: ``"native"`` when the C++ solver answers (:mod:`legocompile.optimize.native_solver`), else
            ``"python"`` (the search below). Both return the same selections.
    """

    __slots__ = (
        "costs",
        "engine",
        "min_latency_ms",
        "min_memory_bytes",
        "max_latency_ms",
        "max_memory_bytes",
        "unconstrained",
        "_drop_scale",
        "_latency_scale",
        "_order",
        "_first_index",
        "_blocks",
        "_suffix_min",
        "_dt",
        "_dm",
        "_tm",
        "_lex",
        "_joint",
        "_drops_vary",
        "_levels",
        "_filtered",
        "_native",
        "_search_ready",
    )

    def __init__(self, costs: Sequence[Sequence[Cost]], engine: str | None = None) -> None:
        """Validates and prepares ``costs``.

        Args:
            costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.
            engine: ``"auto"``, ``"native"`` or ``"python"`` (default: ``$LEGOCOMPILE_SOLVER``, else auto; see
                :func:`~legocompile.optimize.native_solver.choose_engine`). A table the C++ solver cannot take
                exactly (memory totals beyond int64, scaled totals beyond its exact search) is searched in Python.

        Raises:
            LegoCompileError: The table has no blocks, a block has no options, or an entry is not a Cost; an
                unknown engine, or ``native`` when the library is not built.
        """
        validate_costs(costs)
        self.costs = tuple(tuple(block) for block in costs)
        sd = self._drop_scale = _scale([c.accuracy_drop for block in self.costs for c in block])
        st = self._latency_scale = _scale([c.latency_ms for block in self.costs for c in block])
        filtered = [
            _filter([(_to_int(c.accuracy_drop, sd), _to_int(c.latency_ms, st), c.memory_bytes, o)
                     for o, c in enumerate(block)])
            for block in self.costs
        ]
        self.min_latency_ms = math.fsum(min(c.latency_ms for c in block) for block in self.costs)
        self.min_memory_bytes = sum(min(c.memory_bytes for c in block) for block in self.costs)
        self.max_latency_ms = math.fsum(
            max(self.costs[b][o[3]].latency_ms for o in block) for b, block in enumerate(filtered)
        )
        self.max_memory_bytes = sum(max(o[2] for o in block) for block in filtered)
        self._first_index = tuple(min(o[3] for o in block) for block in filtered)
        self._filtered = filtered
        self._search_ready = False
        self._native: native_solver.NativeTable | None = None
        if native_solver.choose_engine(engine) == "native" and _fits_native(filtered, sd, st):
            try:
                self._native = native_solver.NativeTable(self.costs)
            except native_solver.NativeSolverError:
                pass  # searched in Python
        self.engine = "python" if self._native is None else "native"
        if self._native is None:
            self._prepare_search()
        unconstrained = self._search(None, None)
        assert unconstrained is not None
        self.unconstrained = unconstrained

    def _prepare_search(self) -> None:
        """Builds what the Python search needs (once; lazily when the native solver fails a solve)."""
        if self._search_ready:
            return
        filtered = self._filtered
        n = len(filtered)

        # Search order: the blocks whose options differ most first (ranges relative to the table's): the most
        # consequential choices are made where a pruned branch saves the most (measured: about halves the worst
        # joint searches against the given order).
        ranges = [[max(o[a] for o in block) - min(o[a] for o in block) for a in range(3)] for block in filtered]
        spans = [sum(r[a] for r in ranges) for a in range(3)]

        def spread(b: int) -> float:
            return sum(ranges[b][a] / spans[a] for a in range(3) if spans[a] > 0)

        order = self._order = tuple(sorted(range(n), key=lambda b: (-spread(b), b)))
        blocks = self._blocks = [filtered[b] for b in order]

        suffix_min = [[0] * (n + 1) for _ in range(3)]  # least drop, latency, memory of each suffix
        for j in range(n - 1, -1, -1):
            for a in range(3):
                suffix_min[a][j] = suffix_min[a][j + 1] + min(o[a] for o in blocks[j])
        self._suffix_min = suffix_min

        def stairs(x, y, limit: int | None = None) -> _Stairs:
            return _staircases([[(x(o), y(o)) for o in block] for block in blocks], limit)

        self._drops_vary = any(block[0][0] != block[-1][0] for block in blocks[1:])  # (sorted by drop)
        self._dt = stairs(lambda o: o[1], lambda o: o[0])
        self._dm = stairs(lambda o: o[2], lambda o: o[0])
        self._tm = stairs(lambda o: o[1], lambda o: o[2])
        # Joint drop bounds (only of use when drops differ): (x_t, x_m, s_t, s_m, a, xs, ys) states that every
        # completion within latency r_t and memory r_m has a * drop >= ys[bisect(xs, x_t*r_t + x_m*r_m)] -
        # (s_t*r_t + s_m*r_m). Surrogate: x = c*latency + e*memory, y = drop. Lagrangian: x = memory,
        # y = a*drop + b*latency; and x = latency, y = a*drop + b*memory.
        self._joint: list[tuple[int, int, int, int, int, list[list[int]], list[list[int]]]] = []
        self._lex: tuple[int, int, list[list[int]], list[list[int]]] | None = None
        if n > 1 and spans[0] > 0:
            if spans[1] > 0 and spans[2] > 0:
                for step in _SURROGATE_STEPS:
                    c, e = _ratio(spans[1], spans[2], step)  # e / c ~ latency span / memory span
                    xs, ys, _ = stairs(lambda o, c=c, e=e: c * o[1] + e * o[2], lambda o: o[0], _COARSE)
                    self._joint.append((c, e, 0, 0, 1, xs, ys))
            if spans[1] > 0:
                for step in _RATIO_STEPS:
                    a, b = _ratio(spans[0], spans[1], step)
                    xs, ys, _ = stairs(lambda o: o[2], lambda o, a=a, b=b: a * o[0] + b * o[1], _COARSE)
                    self._joint.append((0, 1, b, 0, a, xs, ys))
                # Lexicographic: a drop step (the least gap between two drops of a block) outweighs any latency
                # span, so that among completions that tie on drop this bounds the latency.
                gap = min(abs(p[0] - q[0]) for block in blocks for p in block for q in block if p[0] != q[0])
                a, b = _ratio(gap, 4 * spans[1], -1)
                xs, ys, _ = stairs(lambda o: o[2], lambda o: a * o[0] + b * o[1], _COARSE_LEX)
                self._lex = (a, b, xs, ys)
            if spans[2] > 0:
                for step in _RATIO_STEPS:
                    a, b = _ratio(spans[0], spans[2], step)
                    xs, ys, _ = stairs(lambda o: o[1], lambda o, a=a, b=b: a * o[0] + b * o[2], _COARSE)
                    self._joint.append((1, 0, 0, b, a, xs, ys))

        # Drop-level staircases: exact (latency, memory) feasibility per drop level for both budgets at once.
        self._levels = _level_staircases(blocks) if n > 1 and self._drops_vary else None
        self._search_ready = True

    @property
    def num_blocks(self) -> int:
        """The number of blocks."""
        return len(self.costs)

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
            memory_bytes is not None and not self.min_memory_bytes <= memory_bytes
        ):
            raise self._infeasible(latency_ms, memory_bytes, budget)
        # A bound that no selection of the remaining options can exceed changes nothing.
        if latency_ms is not None and latency_ms >= self.max_latency_ms:
            latency_ms = None
        if memory_bytes is not None and memory_bytes >= self.max_memory_bytes:
            memory_bytes = None
        best = self.unconstrained
        if (latency_ms is None or best.latency_ms <= latency_ms) and (
            memory_bytes is None or best.memory_bytes <= memory_bytes
        ):
            return best
        result = self._search(latency_ms, memory_bytes)
        if result is None:
            raise self._infeasible(latency_ms, memory_bytes, budget)
        return result

    def _infeasible(
        self, latency_ms: float | None, memory_bytes: int | None, budget: Budget | None
    ) -> InfeasibleBudgetError:
        if budget is None:
            budget = _unvalidated_budget(latency_ms, memory_bytes)
        return InfeasibleBudgetError(budget, self.min_latency_ms, self.min_memory_bytes)

    def _search(self, latency_ms: float | None, memory_bytes: float | None) -> Solution | None:
        """The optimum within the bounds (the engine's search), None when nothing fits."""
        if self._native is not None:
            try:
                choice = self._native.solve(
                    None if latency_ms is None else float(latency_ms),
                    None if memory_bytes is None else math.floor(memory_bytes),
                )
            except native_solver.NativeSolverError:
                with _PREPARE_LOCK:
                    self._prepare_search()
            else:
                return None if choice is None else evaluate(self.costs, choice)
        return self._python_search(latency_ms, memory_bytes)

    def _python_search(self, latency_ms: float | None, memory_bytes: float | None) -> Solution | None:
        """The branch and bound (see the module docstring); None when nothing fits."""
        blocks = self._blocks
        order = self._order
        n = len(blocks)
        last = n - 1
        sd, st = self._drop_scale, self._latency_scale
        has_l = latency_ms is not None
        has_m = memory_bytes is not None
        # Above any total: an absent bound, and the incumbent's bands before there is one (nothing is pruned and
        # no branch is in a tie zone).
        huge = 1 << (max(sd, st).bit_length() + self.max_memory_bytes.bit_length() + 2 * n + 64)
        lim_t = _limit(latency_ms, st) if has_l else huge  # type: ignore[arg-type]
        lim_m = math.floor(memory_bytes) if has_m else huge  # type: ignore[arg-type]
        min_d, min_t, min_m = self._suffix_min
        dt_x, dt_y, dt_ny = self._dt
        dm_x, dm_y, dm_ny = self._dm
        tm_x, tm_y, tm_ny = self._tm
        joint = list(self._joint) if has_l and has_m else []  # reordered during the search
        lex = self._lex if has_m else None
        first_index = self._first_index
        drops_vary = self._drops_vary  # else every completion of a prefix has the same drop
        levels = self._levels if has_l and has_m else None
        if levels is not None:
            lv_base, lv_top, lv_delta, qt, qm = levels.base, levels.top, levels.delta, levels.qt, levels.qm
            lv_xs, lv_neg_ys, lv_ys, lv_least = levels.xs, levels.neg_ys, levels.ys, levels.least

        d_lo = d_hi = t_lo = t_hi = inc_m = huge
        incumbent: tuple | None = None
        inc_choice: tuple[int, ...] = ()
        version = 0  # counts incumbent changes
        path = [0] * n  # the option index chosen at each search position

        def smallest_choice(k: int, index: int) -> tuple[int, ...]:
            """The smallest choice (in block order) of a selection extending path[:k] + [index]."""
            choice = list(first_index)
            for position in range(k):
                choice[order[position]] = path[position]
            choice[order[k]] = index
            return tuple(choice)

        def least_latency(j: int, cap: int, r_m: int) -> int:
            """A lower bound on the latency of blocks j.. in a completion with drop <= cap and memory <= r_m."""
            lbt = dt_x[j][bisect_left(dt_ny[j], -cap)] if drops_vary else min_t[j]
            if has_m:
                x = tm_x[j][bisect_left(tm_ny[j], -r_m)]
                if x > lbt:
                    lbt = x
                if lex is not None:
                    a, b, xs, ys = lex
                    x = -((a * cap - ys[j][bisect_right(xs[j], r_m) - 1]) // b)
                    if x > lbt:
                        lbt = x
                if levels is not None:
                    level = (cap - lv_base[j]) // lv_delta
                    if level < 0:
                        return huge
                    if level > lv_top[j]:
                        level = lv_top[j]
                    stair = lv_neg_ys[j][level]
                    i = bisect_left(stair, -(r_m // qm))
                    if i == len(stair):
                        return huge
                    x = lv_xs[j][level][i] * qt
                    if x > lbt:
                        lbt = x
            return lbt

        def drop_bound(j: int, nd: int, nt: int, nm: int) -> int | None:
            """A lower bound on the total drop of the completions of a prefix with totals (nd, nt, nm), blocks j..
            left, that fit the budgets; None when none fits or none can tie or beat the incumbent's drop. It does
            not depend on the incumbent (only the early exits do)."""
            r_t = lim_t - nt
            r_m = lim_m - nm
            if r_t < min_t[j] or r_m < min_m[j]:
                return None
            # Least drop of a completion within the budgets; cap: the most one may have to tie the incumbent.
            cap = d_hi - nd
            lbd = min_d[j]
            if lbd > cap:
                return None
            if has_l and drops_vary:
                x = dt_y[j][bisect_right(dt_x[j], r_t) - 1]
                if x > lbd:
                    if x > cap:
                        return None
                    lbd = x
            if has_m:
                if drops_vary:
                    x = dm_y[j][bisect_right(dm_x[j], r_m) - 1]
                    if x > lbd:
                        if x > cap:
                            return None
                        lbd = x
                if has_l:
                    if tm_y[j][bisect_right(tm_x[j], r_t) - 1] > r_m:
                        return None  # no completion fits both budgets
                    if levels is not None:
                        base = lv_base[j]
                        high = (cap - base) // lv_delta
                        if high > lv_top[j]:
                            high = lv_top[j]
                        if high < 0:
                            return None
                        # (the other bounds say nothing about the level: a completion's level can be below
                        # (drop - base) / delta, so the search starts at 0)
                        # the least level at which a completion fits both budgets (binary search; inline: hot)
                        xs_j, ys_j = lv_xs[j], lv_ys[j]
                        qrt, qrm = r_t // qt, r_m // qm
                        i = bisect_right(xs_j[high], qrt) - 1
                        if i < 0 or ys_j[high][i] > qrm:
                            return None  # no completion within both budgets and the incumbent's drop
                        low = 0
                        while low < high:
                            mid = (low + high) >> 1
                            i = bisect_right(xs_j[mid], qrt) - 1
                            if i >= 0 and ys_j[mid][i] <= qrm:
                                high = mid
                            else:
                                low = mid + 1
                        x = base + lv_least[j][low]
                        if x > lbd:
                            lbd = x
                    for g in joint:
                        x_t, x_m, s_t, s_m, a, xs, ys = g
                        x = -((s_t * r_t + s_m * r_m - ys[j][bisect_right(xs[j], x_t * r_t + x_m * r_m) - 1]) // a)
                        if x > lbd:
                            if x > cap:
                                if joint[0] is not g:  # move to front: the bound that pruned is tried first
                                    joint.remove(g)
                                    joint.insert(0, g)
                                return None
                            lbd = x
            return nd + lbd

        def tie_bound(j: int, nd: int, nt: int, nm: int, index: int) -> int | None:
            """For a prefix whose drop cannot beat the incumbent's (prefix path[:j-1] + [index], totals
            (nd, nt, nm)): None when no completion can beat the incumbent on latency, memory, then choice; else a
            lower bound on the total latency."""
            cap = d_hi - nd
            r_t = lim_t - nt
            r_m = lim_m - nm
            bt = nt + least_latency(j, cap, r_m)
            # The drop cannot beat the incumbent's: latency decides.
            if bt > t_hi:
                return None
            if bt >= t_lo:  # nor can the latency: memory decides, then the choice
                tau = t_hi - nt
                if tau > r_t:
                    tau = r_t
                lbm = dm_x[j][bisect_left(dm_ny[j], -cap)] if drops_vary else min_m[j]
                x = tm_y[j][bisect_right(tm_x[j], tau) - 1]
                if x > lbm:
                    lbm = x
                if levels is not None:
                    level = (cap - lv_base[j]) // lv_delta
                    if level > lv_top[j]:
                        level = lv_top[j]
                    i = bisect_right(lv_xs[j][level], tau // qt) - 1 if level >= 0 else -1
                    if i < 0:
                        return None
                    x = lv_ys[j][level][i] * qm
                    if x > lbm:
                        lbm = x
                bm = nm + lbm
                if bm > inc_m or (bm == inc_m and smallest_choice(j - 1, index) >= inc_choice):
                    return None
            return bt

        def leaves(pd: int, pt: int, pm: int) -> None:
            """The last block: complete selections."""
            nonlocal incumbent, d_lo, d_hi, t_lo, t_hi, inc_m, inc_choice, version
            for d, t, m, index in blocks[last]:
                nt = pt + t
                nm = pm + m
                if nt > lim_t or nm > lim_m:
                    continue
                nd = pd + d
                if nd > d_hi or (nd >= d_lo and (nt > t_hi or (nt >= t_lo and nm > inc_m))):
                    continue
                key = (nd / sd, nt / st, nm, smallest_choice(last, index))
                if incumbent is not None and key >= incumbent:
                    continue
                incumbent = key
                d_lo, d_hi = _band(key[0], sd)
                t_lo, t_hi = _band(key[1], st)
                inc_m = nm
                inc_choice = key[3]
                version += 1

        def dfs(k: int, pd: int, pt: int, pm: int) -> None:
            if k == last:
                leaves(pd, pt, pm)
                return
            j = k + 1
            branches = []
            for d, t, m, index in blocks[k]:
                nd, nt, nm = pd + d, pt + t, pm + m
                bd = drop_bound(j, nd, nt, nm)
                if bd is None:
                    continue
                if bd < d_lo:
                    branches.append((bd, 0, index, nd, nt, nm, version))
                    continue
                bt = tie_bound(j, nd, nt, nm, index)  # the drop cannot beat the incumbent's: ties
                if bt is not None:
                    branches.append((bd, bt, index, nd, nt, nm, version))
            if len(branches) > 1:
                if incumbent is None:
                    # Before the first incumbent, the branches of least drop bound go first, the least latency bound
                    # first among them (the first descent then finds the optimum when the bounds are exact).
                    least = min(branches)[0]
                    branches = [
                        (bd, nt + least_latency(j, bd - nd, lim_m - nm) if bd == least else huge, index, nd, nt, nm, seen)
                        for bd, _, index, nd, nt, nm, seen in branches
                    ]
                branches.sort()  # most promising first
            for bd, _, index, nd, nt, nm, seen in branches:
                if bd > d_hi:
                    break  # sorted by drop bound: no later branch can tie or beat the incumbent either
                if seen != version and bd >= d_lo and tie_bound(j, nd, nt, nm, index) is None:
                    continue  # the incumbent improved since this branch was bounded, and now it ties on drop
                path[k] = index
                dfs(j, nd, nt, nm)

        dfs(0, 0, 0, 0)
        if incumbent is None:
            return None
        drop, latency, memory, choice = incumbent
        return Solution(choice=choice, latency_ms=latency, memory_bytes=memory, accuracy_drop=drop)


def _unvalidated_budget(latency_ms: float | None, memory_bytes: int | None) -> Budget:
    """Builds a Budget for an error message without validation (raw bounds may be 0)."""
    budget = object.__new__(Budget)
    object.__setattr__(budget, "latency_ms", latency_ms)
    object.__setattr__(budget, "memory_bytes", memory_bytes)
    return budget


def prepare(costs: Sequence[Sequence[Cost]], engine: str | None = None) -> PreparedCosts:
    """Prepares a cost table for repeated :func:`solve` calls.

    Args:
        costs: ``costs[b][o]`` is the cost of option ``o`` of block ``b``.
        engine: ``"auto"``, ``"native"`` or ``"python"`` (default: ``$LEGOCOMPILE_SOLVER``, else auto).

    Raises:
        LegoCompileError: The table has no blocks, a block has no options, or an entry is not a Cost; an
            unknown engine, or ``native`` when the library is not built.
    """
    return PreparedCosts(costs, engine)


def solve(costs: Sequence[Sequence[Cost]] | PreparedCosts, budget: Budget) -> Solution:
    """Returns the selection (one option per block) with the least total accuracy drop that fits ``budget``.

    Exact; ties in drop are broken by lower latency, then lower memory, then the lexicographically smallest
    choice (see :mod:`legocompile.optimize.problem`).

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
