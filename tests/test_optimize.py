"""Tests for legocompile.optimize: the exact solver against brute force and pulp/CBC, errors, the frontier."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from legocompile.errors import LegoCompileError
from legocompile.optimize import (
    Budget,
    Cost,
    InfeasibleBudgetError,
    PreparedCosts,
    Solution,
    evaluate,
    pareto_frontier,
    prepare,
    solve,
    solve_pulp,
)

# --- both engines: every test runs with the pure-Python search and with the native (C++) solver ----------------


@pytest.fixture(autouse=True, params=["python", "native"])
def engine(request, monkeypatch):
    """Runs the test with ``$LEGOCOMPILE_SOLVER`` forcing each engine (native: skipped, with the reason, when the
    library is not built; tests/test_native_solver.py compares the two directly)."""
    from legocompile.optimize import native_solver

    if request.param == "native" and native_solver.load() is None:
        pytest.skip("the native solver library is not built (pip install -e . with a C++17 compiler)")
    monkeypatch.setenv(native_solver.ENGINE_ENV, request.param)
    return request.param


# --- helpers -----------------------------------------------------------------------------------------------------


def random_costs(rng: np.random.Generator, num_blocks: int, num_options: int, *, coarse: bool = False):
    """A random cost table; ``coarse`` draws from a few values so that ties are common."""
    table = []
    for _ in range(num_blocks):
        block = []
        for _ in range(num_options):
            if coarse:
                block.append(
                    Cost(
                        latency_ms=float(rng.integers(1, 5)) * 0.25,
                        memory_bytes=int(rng.integers(1, 4)) * 1_000_000,
                        accuracy_drop=float(rng.choice([-0.25, 0.0, 0.5, 1.0])),
                    )
                )
            else:
                block.append(
                    Cost(
                        latency_ms=float(rng.uniform(0.05, 2.0)),
                        memory_bytes=int(rng.integers(100_000, 10_000_000)),
                        accuracy_drop=float(rng.uniform(-0.2, 3.0)),
                    )
                )
        table.append(block)
    return table


def random_budget(rng: np.random.Generator, costs) -> Budget:
    """A random budget: each bound absent, from a random selection's totals (boundary), or a random fraction."""
    lat_max = sum(max(c.latency_ms for c in block) for block in costs)
    mem_max = sum(max(c.memory_bytes for c in block) for block in costs)
    pick = evaluate(costs, [int(rng.integers(len(block))) for block in costs])
    r = rng.random()
    latency = None if r < 0.2 else (pick.latency_ms if r < 0.45 else float(rng.uniform(0.2, 1.05)) * lat_max)
    r = rng.random()
    memory = None if r < 0.4 else (pick.memory_bytes if r < 0.6 else max(1, int(rng.uniform(0.2, 1.05) * mem_max)))
    return Budget(latency_ms=latency, memory_bytes=memory)


def key(solution: Solution) -> tuple[float, float, int]:
    return (solution.accuracy_drop, solution.latency_ms, solution.memory_bytes)


def brute_force(costs, budget: Budget) -> Solution | None:
    """The documented optimum over all selections that fit, by enumeration: the least (drop, latency, memory) of
    the ``math.fsum`` totals, then the smallest choice (the product is enumerated in lexicographic order of the
    choice, and only a strictly smaller key replaces the best)."""
    best = None
    for choice in itertools.product(*(range(len(block)) for block in costs)):
        solution = evaluate(costs, choice)
        if solution.fits(budget) and (best is None or key(solution) < key(best)):
            best = solution
    return best


def check_against_brute_force(costs, budget: Budget, prepared: PreparedCosts | None = None) -> None:
    expected = brute_force(costs, budget)
    if expected is None:
        with pytest.raises(InfeasibleBudgetError) as info:
            solve(prepared or costs, budget)
        assert info.value.min_latency_ms == min(
            evaluate(costs, c).latency_ms for c in itertools.product(*(range(len(b)) for b in costs))
        )
        assert info.value.min_memory_bytes == min(
            evaluate(costs, c).memory_bytes for c in itertools.product(*(range(len(b)) for b in costs))
        )
        return
    got = solve(prepared or costs, budget)
    assert got.fits(budget)
    assert got == evaluate(costs, got.choice)  # the reported totals are those of the choice
    assert abs(got.accuracy_drop - expected.accuracy_drop) <= 1e-9
    assert key(got) == key(expected)  # exact, tie-breaks (latency, then memory) included
    assert got.choice == expected.choice  # and the final tie-break: the smallest choice


# --- exactness ---------------------------------------------------------------------------------------------------


def test_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(20240601)
    infeasible = 0
    for _ in range(200):
        costs = random_costs(rng, int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        budget = random_budget(rng, costs)
        infeasible += brute_force(costs, budget) is None
        check_against_brute_force(costs, budget)
    assert 5 <= infeasible <= 150  # the budgets exercise both outcomes


def test_matches_brute_force_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(150):
        costs = random_costs(rng, int(rng.integers(1, 6)), int(rng.integers(1, 6)), coarse=True)
        check_against_brute_force(costs, random_budget(rng, costs))


def test_matches_brute_force_with_uneven_blocks():
    rng = np.random.default_rng(11)
    for _ in range(40):
        costs = [random_costs(rng, 1, int(rng.integers(1, 9)))[0] for _ in range(int(rng.integers(2, 6)))]
        check_against_brute_force(costs, random_budget(rng, costs))


def test_budget_equal_to_a_selection_total_is_feasible():
    rng = np.random.default_rng(3)
    costs = random_costs(rng, 4, 4)
    for choice in [(0, 1, 2, 3), (3, 3, 3, 3), (1, 0, 1, 0)]:
        pick = evaluate(costs, choice)
        got = solve(costs, Budget(latency_ms=pick.latency_ms, memory_bytes=pick.memory_bytes))
        assert got.accuracy_drop <= pick.accuracy_drop
        assert got.latency_ms <= pick.latency_ms and got.memory_bytes <= pick.memory_bytes


def test_prepared_costs_give_the_same_answers():
    rng = np.random.default_rng(5)
    costs = random_costs(rng, 5, 5)
    prepared = prepare(costs)
    assert isinstance(prepared, PreparedCosts)
    for _ in range(30):
        budget = random_budget(rng, costs)
        try:
            expected = solve(costs, budget)
        except InfeasibleBudgetError:
            with pytest.raises(InfeasibleBudgetError):
                solve(prepared, budget)
            continue
        assert solve(prepared, budget) == expected
        assert prepared.solve(budget) == expected


# --- ties: the documented order (drop, latency, memory, choice) on tie-heavy tables -------------------------------


def trade_off_costs(rng: np.random.Generator, num_blocks: int, num_options: int, drops: str):
    """Blocks whose options trade latency against memory (none dominates another in those two), with drops all
    zero (``"zero"``), random multiples of 1/360 (``"q360"``, as from 360 evaluation images) or multiples of 1/360
    from -2/360 (``"q360neg"``, measurement noise)."""
    table = []
    for _ in range(num_blocks):
        latency = np.sort(rng.choice(np.arange(1, 200), num_options, replace=False)) / 100.0
        memory = np.sort(rng.choice(np.arange(1, 200), num_options, replace=False))[::-1] * 10_000
        if drops == "zero":
            drop = [0.0] * num_options
        elif drops == "q360":
            drop = [int(v) / 360 for v in rng.integers(0, 4, num_options)]
        else:
            drop = [int(v) / 360 for v in rng.integers(-2, 4, num_options)]
        table.append([Cost(float(latency[o]), int(memory[o]), drop[o]) for o in range(num_options)])
    return table


def tie_budgets(rng: np.random.Generator, costs) -> list[Budget]:
    """Budgets at the exact totals of random selections (tight: met with no slack), alone and together, plus a
    few random ones."""
    budgets = []
    for _ in range(4):
        pick = evaluate(costs, [int(rng.integers(len(block))) for block in costs])
        budgets += [
            Budget(latency_ms=pick.latency_ms),
            Budget(memory_bytes=pick.memory_bytes),
            Budget(latency_ms=pick.latency_ms, memory_bytes=pick.memory_bytes),
        ]
    budgets += [random_budget(rng, costs) for _ in range(3)]
    return budgets


@pytest.mark.parametrize("drops", ["zero", "q360", "q360neg"])
def test_tie_heavy_tables_match_brute_force(drops):
    rng = np.random.default_rng({"zero": 31, "q360": 32, "q360neg": 33}[drops])
    for _ in range(25):
        costs = trade_off_costs(rng, int(rng.integers(2, 6)), int(rng.integers(2, 6)), drops)
        prepared = prepare(costs)
        for budget in tie_budgets(rng, costs):
            check_against_brute_force(costs, budget, prepared)


def numpy_brute_force(costs, budget: Budget) -> Solution | None:
    """Brute force over every selection with numpy (tables of ~10^5 selections), the documented order exact:
    the candidates near the least float drop are re-evaluated with :func:`evaluate` and compared by key."""
    grids = np.meshgrid(*[np.arange(len(block)) for block in costs], indexing="ij")
    choices = np.stack([g.ravel() for g in grids], axis=1)
    lat = sum(np.array([c.latency_ms for c in block])[choices[:, b]] for b, block in enumerate(costs))
    mem = sum(np.array([c.memory_bytes for c in block], dtype=np.int64)[choices[:, b]] for b, block in enumerate(costs))
    drop = sum(np.array([c.accuracy_drop for c in block])[choices[:, b]] for b, block in enumerate(costs))
    fits = np.ones(len(choices), dtype=bool)
    if budget.latency_ms is not None:
        fits &= lat <= budget.latency_ms + 1e-9  # float sums: candidates near the bound are checked exactly below
    if budget.memory_bytes is not None:
        fits &= mem <= budget.memory_bytes
    if not fits.any():
        return None
    near = fits & (drop <= drop[fits].min() + 1e-9)
    best = None
    for choice in choices[near]:
        s = evaluate(costs, [int(v) for v in choice])
        if not s.fits(budget):
            continue
        key = (s.accuracy_drop, s.latency_ms, s.memory_bytes, s.choice)
        if best is None or key < best[0]:
            best = (key, s)
    return None if best is None else best[1]


@pytest.mark.parametrize("coarse", [False, True], ids=["default", "coarse"])
@pytest.mark.parametrize("family", ["q360", "q360-mono", "continuous"])
def test_drop_level_bounds_on_mid_tables_match_brute_force(family, coarse, monkeypatch):
    """The drop-level staircases (both budgets) against brute force on mid-sized tables: with the default limits
    (continuous drops get levels coarser than the drops) and with tiny limits (16 levels, 8 points per
    staircase), so that every table's levels and staircases are coarsened."""
    if coarse:
        from legocompile.optimize import solver

        monkeypatch.setattr(solver, "_LEVELS", 16)
        monkeypatch.setattr(solver, "_LEVEL_POINTS", 8)
    rng = np.random.default_rng({"q360": 41, "q360-mono": 42, "continuous": 43}[family])
    for _ in range(3):
        costs = []
        for _ in range(6):
            latency = np.sort(rng.uniform(0.05, 1.0, 7))
            memory = np.sort(rng.integers(100_000, 8_000_000, 7))[::-1]
            if family == "q360":
                drop = [int(v) / 360 for v in rng.integers(0, 4, 7)]
            elif family == "q360-mono":
                drop = [int(v) / 360 for v in np.sort(rng.integers(0, 60, 7))]
            else:
                drop = [float(v) for v in rng.uniform(0.0, 2.0, 7)]
            costs.append([Cost(float(latency[o]), int(memory[o]), drop[o]) for o in range(7)])
        prepared = prepare(costs)
        for _ in range(12):
            pick = evaluate(costs, [int(rng.integers(7)) for _ in costs])
            slack = rng.uniform(1.0, 1.05)
            budget = Budget(latency_ms=pick.latency_ms * slack, memory_bytes=int(pick.memory_bytes * slack))
            expected = numpy_brute_force(costs, budget)
            assert expected is not None
            assert prepared.solve(budget) == expected


def test_identical_blocks_break_complete_ties_by_smallest_choice():
    # Four copies of one block: every permutation of a selection ties on drop, latency and memory.
    block = [Cost(1.0, 400, 0.0), Cost(0.5, 700, 0.0), Cost(0.75, 500, 0.0), Cost(0.25, 900, 0.0)]
    costs = [list(block) for _ in range(4)]
    rng = np.random.default_rng(5)
    for budget in tie_budgets(rng, costs) + [Budget(latency_ms=2.5), Budget(memory_bytes=2400)]:
        check_against_brute_force(costs, budget)
    # Within 2400 bytes the least latency, 2.5 ms, is 900 + 3 x 500 bytes or 2 x 700 + 2 x 500, in any order.
    got = solve(costs, Budget(memory_bytes=2400))
    ties = [c for c in itertools.product(range(4), repeat=4) if key(evaluate(costs, c)) == key(got)]
    assert key(got) == (0.0, 2.5, 2400) and len(ties) == 10 and got.choice == min(ties) == (1, 1, 2, 2)


def test_drop_ties_are_on_the_rounded_totals():
    # 1/360 + 2/360 and 3/360 + 0 have different exact sums (as floats) but the same math.fsum total, so they tie
    # on drop and the faster one wins, although its exact sum is the larger.
    a, b, c = 1 / 360, 2 / 360, 3 / 360
    assert math.fsum([a, b]) == math.fsum([c, 0.0]) and Fraction(a) + Fraction(b) > Fraction(c)
    costs = [
        [Cost(1.0, 2, a), Cost(1.0, 1, c)],
        [Cost(1.0, 1, b), Cost(2.0, 2, 0.0)],
    ]
    budget = Budget(memory_bytes=3)  # leaves out (a, 0.0), the least drop
    got = solve(costs, budget)
    assert got.choice == (0, 0) and got.latency_ms == 2.0 and got.accuracy_drop == math.fsum([c, 0.0])
    check_against_brute_force(costs, budget)


def test_latency_then_memory_break_drop_ties():
    costs = [
        [Cost(1.0, 10, 0.5), Cost(0.5, 30, 0.5), Cost(0.5, 20, 0.5)],
        [Cost(1.0, 10, 0.25), Cost(0.5, 10, 0.25)],
    ]
    assert solve(costs, Budget()).choice == (2, 1)  # the fastest, then the smallest
    assert solve(costs, Budget(memory_bytes=25)).choice == (0, 1)
    for budget in (Budget(), Budget(memory_bytes=25), Budget(latency_ms=1.5)):
        check_against_brute_force(costs, budget)


def test_dominated_option_with_a_smaller_index_wins_a_rounded_tie():
    # Option 0 has a larger exact drop than option 1 and is otherwise identical, but 1 + 2**-60 rounds to 1.0:
    # the totals tie completely and the smaller choice wins.
    costs = [[Cost(1.0, 1, 2.0**-60), Cost(1.0, 1, 0.0)], [Cost(1.0, 1, 1.0)]]
    assert math.fsum([2.0**-60, 1.0]) == 1.0
    assert solve(costs, Budget()).choice == (0, 0)
    assert prepare(costs).unconstrained.choice == (0, 0)
    check_against_brute_force(costs, Budget(latency_ms=2.0))


def test_edge_tables_match_brute_force():
    # One block, one option, zero latencies and memory, negative drops, drops and latencies across 600 decades
    # (the exact integers then have over 2000 bits).
    tables = [
        [[Cost(0.5, 10, 0.25)]],
        [[Cost(0.5, 10, 0.25), Cost(0.25, 20, 1.0)]],
        [[Cost(0.0, 0, 0.0)], [Cost(0.0, 0, -1.0), Cost(0.0, 5, -2.0)]],
        [[Cost(1e-300, 1, 1e-300), Cost(1.0, 2, 1e300)], [Cost(3.0, 1, -1e-200), Cost(1e-5, 7, 5.0)]],
        [[Cost(0.1, 1, 0.1), Cost(0.2, 1, 0.2), Cost(0.3, 1, 0.3)], [Cost(0.2, 1, 0.2), Cost(0.1, 2, 0.1)]],
    ]
    for costs in tables:
        prepared = prepare(costs)
        totals = [evaluate(costs, c) for c in itertools.product(*(range(len(b)) for b in costs))]
        latencies = sorted({s.latency_ms for s in totals if s.latency_ms > 0}) + [0.3, 1.5]
        memories = sorted({s.memory_bytes for s in totals if s.memory_bytes > 0}) + [1, 3]
        for latency in [None, *latencies]:
            for memory in [None, *memories]:
                check_against_brute_force(costs, Budget(latency_ms=latency, memory_bytes=memory), prepared)
    assert prepare(tables[2]).solve_raw(0.0, 0).choice == (0, 0)  # raw bounds may be 0


def test_rounding_bands_and_limits_are_exact():
    from legocompile.optimize.solver import _band, _limit

    rng = np.random.default_rng(12)
    for _ in range(2000):
        scale = 2 ** int(rng.integers(0, 80))
        v = int(rng.integers(-(2**62), 2**62)) >> int(rng.integers(0, 62))
        value = v / scale  # correctly rounded
        lo, hi = _band(value, scale)
        assert lo <= v <= hi
        assert lo / scale == value == hi / scale and (lo - 1) / scale != value != (hi + 1) / scale
        bound = float(rng.uniform(-5, 5)) * 10.0 ** int(rng.integers(-6, 6))
        limit = _limit(bound, scale)
        assert limit / scale <= bound < (limit + 1) / scale


def test_tie_heavy_tables_agree_with_pulp():
    # Beyond brute-force reach: the drop objective against CBC, and with all drops zero the latency tie-break
    # against CBC minimising latency itself (the table with drop := latency, the latency bound as a constraint).
    pytest.importorskip("pulp")
    rng = np.random.default_rng(77)
    for i in range(6):
        drops = ("zero", "q360", "q360neg")[i % 3]
        costs = trade_off_costs(rng, 8, 6, drops)
        prepared = prepare(costs)
        pick = evaluate(costs, [int(rng.integers(6)) for _ in range(8)])
        for budget in (
            Budget(memory_bytes=pick.memory_bytes),
            Budget(latency_ms=pick.latency_ms * 1.02, memory_bytes=int(pick.memory_bytes * 1.01)),
        ):
            ours = prepared.solve(budget)
            assert ours.fits(budget) and ours == evaluate(costs, ours.choice)
            assert abs(ours.accuracy_drop - solve_pulp(costs, budget).accuracy_drop) <= 1e-6
            if drops == "zero":
                as_drop = [[Cost(c.latency_ms, c.memory_bytes, c.latency_ms) for c in block] for block in costs]
                reference = solve_pulp(as_drop, budget)
                assert abs(ours.latency_ms - reference.accuracy_drop) <= 1e-6 * max(1.0, ours.latency_ms)


def test_all_ties_12x8_stays_fast():
    # Guard against an exponential regression (the previous solver ran past 30 s on such a table): generous.
    import time

    rng = np.random.default_rng(2024)
    for drops in ("zero", "q360"):
        costs = trade_off_costs(rng, 12, 8, drops)
        prepared = prepare(costs)
        span = prepared.max_memory_bytes - prepared.min_memory_bytes
        for f in np.linspace(0.0, 1.0, 11):
            memory = prepared.min_memory_bytes + int(f * span)
            for latency in (None, prepared.max_latency_ms * 0.6):
                start = time.perf_counter()
                try:
                    prepared.solve_raw(latency, memory)
                except InfeasibleBudgetError:
                    pass
                assert time.perf_counter() - start < 1.0


# --- agreement with the pulp reference ---------------------------------------------------------------------------


def test_agrees_with_pulp():
    pytest.importorskip("pulp")
    rng = np.random.default_rng(99)
    for i in range(30):
        # Beyond brute-force reach for the larger ones (up to 8 blocks x 7 options).
        costs = random_costs(rng, int(rng.integers(2, 9)), int(rng.integers(2, 8)))
        lat_min = sum(min(c.latency_ms for c in block) for block in costs)
        lat_max = sum(max(c.latency_ms for c in block) for block in costs)
        mem_min = sum(min(c.memory_bytes for c in block) for block in costs)
        mem_max = sum(max(c.memory_bytes for c in block) for block in costs)
        budget = Budget(
            latency_ms=lat_min + float(rng.uniform(0.05, 0.8)) * (lat_max - lat_min),
            memory_bytes=None if i % 3 == 0 else mem_min + int(rng.uniform(0.1, 0.9) * (mem_max - mem_min)) + 1,
        )
        try:
            ours = solve(costs, budget)
        except InfeasibleBudgetError:
            with pytest.raises(InfeasibleBudgetError):
                solve_pulp(costs, budget)
            continue
        reference = solve_pulp(costs, budget)
        assert abs(ours.accuracy_drop - reference.accuracy_drop) <= 1e-6
        assert ours.fits(budget)


def test_pulp_raises_infeasible_with_minima():
    pytest.importorskip("pulp")
    costs = [[Cost(1.0, 10, 0.0), Cost(0.5, 20, 1.0)], [Cost(1.0, 10, 0.0), Cost(0.25, 30, 2.0)]]
    with pytest.raises(InfeasibleBudgetError) as info:
        solve_pulp(costs, Budget(latency_ms=0.5))
    assert info.value.min_latency_ms == 0.75
    assert info.value.min_memory_bytes == 20


# A 10 x 8 table on which CBC 2.10.3 (bundled with pulp) with its default cuts reports "infeasible" although
# a selection fits (13.308 points lost); solve_pulp turns cut generation off.
CBC_CUT_BUG_BUDGET = (3.892, 39151449)
CBC_CUT_BUG_TABLE = [
    [
        (1.679, 9435189, 0.663), (1.837, 9137711, 1.367), (0.282, 6979094, 0.298), (1.895, 6742573, 1.704),
        (1.586, 6282078, 1.782), (0.343, 5133778, 0.694), (1.265, 4004140, 2.073), (1.902, 731446, 0.365),
    ],
    [
        (1.984, 6187662, 0.927), (1.108, 799093, 1.983), (1.411, 3976380, 2.375), (1.433, 7757834, 2.464),
        (0.291, 7496685, 0.713), (1.953, 6630518, 0.42), (1.538, 4369383, 2.055), (1.719, 3405954, 1.788),
    ],
    [
        (0.269, 2120079, 1.7), (0.679, 3609616, 2.781), (1.57, 9400569, 0.179), (1.575, 1807295, 2.387),
        (1.823, 671785, 2.111), (1.818, 4897359, 0.39), (0.729, 9689146, 0.732), (1.197, 1816510, 2.717),
    ],
    [
        (0.109, 8071111, 0.539), (1.036, 2880365, 0.473), (0.191, 8956373, 0.199), (0.257, 3099474, 1.166),
        (1.456, 3286030, 1.249), (1.355, 37227, 0.811), (1.41, 8396796, 0.259), (1.675, 2395663, 2.992),
    ],
    [
        (1.678, 7407048, 0.724), (1.604, 1709667, 2.18), (0.603, 4316593, 0.373), (1.699, 5339651, 2.886),
        (0.141, 9345710, 0.972), (1.364, 6692824, 2.564), (0.24, 41547, 1.481), (1.063, 5113447, 1.78),
    ],
    [
        (0.407, 3176459, 1.999), (1.073, 1889609, 1.167), (0.495, 3776796, 1.323), (1.932, 4664278, 2.906),
        (1.702, 6069901, 2.232), (1.271, 2766189, 1.447), (1.533, 4112296, 2.897), (1.815, 8281139, 1.214),
    ],
    [
        (0.734, 7293402, -0.055), (0.989, 1194017, 2.516), (1.42, 9360770, 2.768), (1.82, 5717667, 0.308),
        (1.34, 7623335, 0.238), (1.41, 7082932, 1.093), (1.157, 6200730, 0.132), (1.871, 5312138, 2.759),
    ],
    [
        (1.721, 6058402, 1.358), (1.297, 6806570, 1.165), (0.843, 1565648, 1.853), (0.274, 1891763, 1.056),
        (0.708, 7573243, 2.935), (1.458, 2309699, 1.154), (0.291, 4164721, 1.778), (1.583, 3402865, 2.951),
    ],
    [
        (1.043, 2960290, 0.577), (1.699, 3231769, 0.316), (0.63, 5095609, 1.539), (0.131, 8996417, 1.153),
        (0.603, 9549460, 1.28), (0.786, 3322822, 2.851), (1.416, 9886435, 2.411), (1.848, 4519819, 2.303),
    ],
    [
        (0.427, 6499949, 1.482), (1.289, 5322446, 1.92), (0.803, 8188824, 0.534), (0.53, 6587511, 2.694),
        (1.762, 5765962, 0.878), (1.164, 8018109, 2.443), (1.481, 7302951, 2.28), (0.711, 1960687, 1.226),
    ],
]


def test_pulp_reference_on_table_where_cbc_cuts_fail():
    pytest.importorskip("pulp")
    costs = [[Cost(*option) for option in block] for block in CBC_CUT_BUG_TABLE]
    budget = Budget(*CBC_CUT_BUG_BUDGET)
    ours = solve(costs, budget)
    assert ours.fits(budget)
    assert abs(ours.accuracy_drop - 13.308) <= 1e-9
    assert abs(solve_pulp(costs, budget).accuracy_drop - ours.accuracy_drop) <= 1e-6


# --- infeasible budgets ------------------------------------------------------------------------------------------

# Two blocks: fast options are big, small options are slow.
TRADE_OFF = [
    [Cost(1.0, 1_000_000, 0.0), Cost(0.25, 2_000_000, 0.5)],
    [Cost(0.6, 1_100_000, 0.0), Cost(0.35, 2_500_000, 0.5)],
]


def test_infeasible_latency_reports_minima():
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(TRADE_OFF, Budget(latency_ms=0.5))
    error = info.value
    assert error.min_latency_ms == 0.6
    assert error.min_memory_bytes == 2_100_000
    assert not error.jointly_infeasible
    message = str(error)
    assert "\n" not in message
    assert message.startswith("no selection fits latency ≤ 0.50 ms: the fastest selection takes 0.60 ms")
    assert "latency budget to at least 0.60 ms" in message


def test_infeasible_both_message_format():
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(TRADE_OFF, Budget(latency_ms=0.5, memory_bytes=2_000_000))
    assert str(info.value).startswith(
        "no selection fits latency ≤ 0.50 ms and memory ≤ 2.0 MB: "
        "the fastest selection takes 0.60 ms, the smallest takes 2.1 MB"
    )
    assert isinstance(info.value, LegoCompileError)


def test_jointly_infeasible_budget():
    # Latency <= 1.0 alone is met (0.6 ms), memory <= 2.2 MB alone is met (2.1 MB), never both together.
    budget = Budget(latency_ms=1.0, memory_bytes=2_200_000)
    assert brute_force(TRADE_OFF, budget) is None
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(TRADE_OFF, budget)
    error = info.value
    assert error.jointly_infeasible
    assert error.min_latency_ms == 0.6 and error.min_memory_bytes == 2_100_000
    assert "not both together" in str(error)


def test_infeasible_memory_only_and_pickling():
    import pickle

    with pytest.raises(InfeasibleBudgetError) as info:
        solve(TRADE_OFF, Budget(memory_bytes=1_500_000))
    assert str(info.value) == (
        "no selection fits memory ≤ 1.5 MB: the smallest selection takes 2.1 MB "
        "(raise the memory budget to at least 2.1 MB)"
    )
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.min_memory_bytes == 2_100_000


def test_infeasible_message_adds_precision_to_tell_values_apart():
    costs = [[Cost(1.2004, 1, 0.0)]]
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(costs, Budget(latency_ms=1.2))
    assert "latency ≤ 1.2000 ms" in str(info.value)
    assert "takes 1.2004 ms" in str(info.value)


# --- None budgets ------------------------------------------------------------------------------------------------


def test_no_budget_picks_least_drop_per_block():
    rng = np.random.default_rng(1)
    costs = random_costs(rng, 6, 5)
    got = solve(costs, Budget())
    assert got.choice == tuple(min(range(5), key=lambda o, b=b: costs[b][o].accuracy_drop) for b in range(6))


def test_single_bounds():
    rng = np.random.default_rng(2)
    for _ in range(20):
        costs = random_costs(rng, 4, 4)
        pick = evaluate(costs, [int(rng.integers(4)) for _ in range(4)])
        for budget in (Budget(latency_ms=pick.latency_ms), Budget(memory_bytes=pick.memory_bytes)):
            check_against_brute_force(costs, budget)


def test_generous_budget_returns_unconstrained_optimum():
    rng = np.random.default_rng(4)
    costs = random_costs(rng, 5, 5)
    assert solve(costs, Budget(latency_ms=1e9, memory_bytes=10**12)) == solve(costs, Budget())


# --- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "1.0", True])
def test_invalid_latency_budget(value):
    with pytest.raises(LegoCompileError, match="latency_ms"):
        Budget(latency_ms=value)


@pytest.mark.parametrize("value", [0, -5, 1.5, float("nan"), "10", True])
def test_invalid_memory_budget(value):
    with pytest.raises(LegoCompileError, match="memory_bytes"):
        Budget(memory_bytes=value)


def test_budget_normalizes_numbers():
    budget = Budget(latency_ms=np.float32(1.5), memory_bytes=np.int64(3_000_000))
    assert budget.latency_ms == 1.5 and type(budget.latency_ms) is float
    assert budget.memory_bytes == 3_000_000 and type(budget.memory_bytes) is int
    assert Budget(memory_bytes=3e6).memory_bytes == 3_000_000


def test_cost_validation_and_normalization():
    cost = Cost(np.float64(0.5), np.int64(1024), np.float32(-0.25))
    assert (type(cost.latency_ms), type(cost.memory_bytes), type(cost.accuracy_drop)) == (float, int, float)
    with pytest.raises(LegoCompileError, match="latency_ms"):
        Cost(-0.1, 1, 0.0)
    with pytest.raises(LegoCompileError, match="memory_bytes"):
        Cost(0.1, -1, 0.0)
    with pytest.raises(LegoCompileError, match="accuracy_drop"):
        Cost(0.1, 1, float("nan"))


def test_malformed_cost_tables():
    with pytest.raises(LegoCompileError, match="no blocks"):
        solve([], Budget())
    with pytest.raises(LegoCompileError, match="block 1 has no options"):
        solve([[Cost(1.0, 1, 0.0)], []], Budget())
    with pytest.raises(LegoCompileError, match=r"costs\[0\]\[0\]"):
        solve([[(1.0, 1, 0.0)]], Budget())


# --- frontier ----------------------------------------------------------------------------------------------------


def test_pareto_frontier_is_sorted_and_non_dominated():
    rng = np.random.default_rng(8)
    costs = random_costs(rng, 5, 5)
    frontier = pareto_frontier(costs, num_points=20)
    assert len(frontier) >= 2
    latencies = [s.latency_ms for s in frontier]
    assert latencies == sorted(latencies)
    for s in frontier:
        assert s == evaluate(costs, s.choice)
    for a, b in itertools.permutations(frontier, 2):
        no_worse = a.latency_ms <= b.latency_ms and a.memory_bytes <= b.memory_bytes
        assert not (no_worse and a.accuracy_drop <= b.accuracy_drop and key(a) != key(b))
    assert len({key(s) for s in frontier}) == len(frontier)
    # The ends of the sweep: the least-drop selection and the fastest one.
    assert min(s.accuracy_drop for s in frontier) == solve(costs, Budget()).accuracy_drop
    assert frontier[0].latency_ms == prepare(costs).min_latency_ms


def test_pareto_frontier_points_are_optimal_for_their_latency():
    rng = np.random.default_rng(9)
    costs = random_costs(rng, 4, 4)
    for s in pareto_frontier(costs, num_points=10):
        assert brute_force(costs, Budget(latency_ms=s.latency_ms, memory_bytes=s.memory_bytes)).accuracy_drop == (
            s.accuracy_drop
        )


def test_pareto_frontier_rejects_bad_num_points():
    with pytest.raises(LegoCompileError, match="num_points"):
        pareto_frontier(TRADE_OFF, num_points=1)


def test_solution_fits():
    solution = Solution(choice=(0,), latency_ms=1.0, memory_bytes=10, accuracy_drop=0.0)
    assert solution.fits(Budget())
    assert solution.fits(Budget(latency_ms=1.0, memory_bytes=10))
    assert not solution.fits(Budget(latency_ms=0.99))
    assert not solution.fits(Budget(memory_bytes=9))
    assert math.isclose(solution.latency_ms, 1.0)


def test_accuracy_model():
    from legocompile.optimize.select import additive_accuracy, predicted_accuracy, retention

    t = 0.8
    assert predicted_accuracy(t, []) == pytest.approx(t)
    assert predicted_accuracy(t, [0.0, 0.0]) == pytest.approx(t)
    # two blocks that each cost half the accuracy: the errors overlap, 0.8 * 0.5 * 0.5, not 0.8 - 0.8
    assert predicted_accuracy(t, [0.4, 0.4]) == pytest.approx(0.2)
    assert additive_accuracy(t, [0.4, 0.4]) == pytest.approx(0.0)
    assert predicted_accuracy(t, [-0.3, -0.3]) == 1.0  # never past a perfect score
    assert retention(0.9, t) > 0  # an option worse than useless still has a finite cost
