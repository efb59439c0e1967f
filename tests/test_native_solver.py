"""The native (C++) solver behind PreparedCosts against the pure-Python search and brute force.

Every comparison is on the complete Solution (choice, fsum totals) or the InfeasibleBudgetError (message, least
totals): the documented order (drop, latency, memory, choice) is total, so both engines must return the same.
Skipped, with the reason, where the library is not built (an install without a C++ compiler).
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from legocompile.errors import LegoCompileError
from legocompile.optimize import Budget, Cost, InfeasibleBudgetError, Solution, evaluate, prepare
from legocompile.optimize import native_solver

needs_native = pytest.mark.skipif(
    native_solver.load() is None,
    reason="the native solver library (legocompile/optimize/_native_solver*.so) is not built: "
    "pip install -e . with a C++17 compiler",
)

FAMILIES = ("zero", "q360", "q360-mono", "anti", "anti-mono", "continuous")


def table(rng: np.random.Generator, family: str, num_blocks: int, num_options: int) -> list[list[Cost]]:
    """Adversarial tables: options trading latency against memory (none dominates another in those two), with
    drops all zero, random multiples of 1/360 (independent, or growing as memory shrinks), continuous and
    independent or anti-correlated with memory; ``continuous`` draws latency, memory and drop independently
    (negative drops included)."""
    costs = []
    for _ in range(num_blocks):
        if family == "continuous":
            costs.append([Cost(float(rng.uniform(0.05, 2.0)), int(rng.integers(100_000, 10_000_000)),
                               float(rng.uniform(-0.2, 3.0))) for _ in range(num_options)])
            continue
        latency = np.sort(rng.choice(np.arange(1, 400), num_options, replace=False)) / 128.0 + 0.01
        memory = np.sort(rng.choice(np.arange(1, 400), num_options, replace=False))[::-1] * 12_345
        ramp = np.linspace(0.0, 1.0, num_options)
        if family == "zero":
            drops = [0.0] * num_options
        elif family == "q360":
            drops = [int(v) / 360 for v in rng.integers(0, 4, num_options)]
        elif family == "q360-mono":
            drops = [max(0, round(8 * r * r + rng.normal(0, 0.7))) / 360 for r in ramp]
        elif family == "anti":
            drops = [float(v) for v in rng.uniform(0.0, 2.0, num_options)]
        else:  # anti-mono
            drops = [float(1.5 * r * r + rng.normal(0, 0.05)) for r in ramp]
        costs.append([Cost(float(latency[o]), int(memory[o]), drops[o]) for o in range(num_options)])
    return costs


def budgets(rng: np.random.Generator, costs, count: int) -> list[tuple[float | None, int | None]]:
    """Raw (latency, memory) bounds: random selections' exact totals (alone and together), slightly below them,
    and infeasible ones (below the least achievable, and each met alone but not together)."""
    out: list[tuple[float | None, int | None]] = []
    for _ in range(count):
        pick = evaluate(costs, [int(rng.integers(len(block))) for block in costs])
        out += [(pick.latency_ms, None), (None, pick.memory_bytes), (pick.latency_ms, pick.memory_bytes),
                (pick.latency_ms * 0.97, int(pick.memory_bytes * 0.97))]
    least_lat = sum(min(c.latency_ms for c in b) for b in costs)
    least_mem = sum(min(c.memory_bytes for c in b) for b in costs)
    # below the least achievable; at both least totals (jointly infeasible unless one selection is least in both)
    out += [(least_lat * 0.999, None), (None, least_mem - 1), (least_lat * 0.999, least_mem), (least_lat, least_mem)]
    return out


def brute_force(costs, latency_ms, memory_bytes) -> Solution | None:
    """The least (drop, latency, memory) of the fsum totals, then the smallest choice, by enumeration."""
    best = None
    for choice in itertools.product(*(range(len(block)) for block in costs)):
        s = evaluate(costs, choice)
        if latency_ms is not None and not s.latency_ms <= latency_ms:
            continue
        if memory_bytes is not None and not s.memory_bytes <= memory_bytes:
            continue
        if best is None or (s.accuracy_drop, s.latency_ms, s.memory_bytes) < (
                best.accuracy_drop, best.latency_ms, best.memory_bytes):
            best = s
    return best


def outcome(prepared, latency_ms, memory_bytes):
    """The Solution, or the InfeasibleBudgetError's (message, least latency, least memory)."""
    try:
        return prepared.solve_raw(latency_ms, memory_bytes)
    except InfeasibleBudgetError as e:
        return (str(e), e.min_latency_ms, e.min_memory_bytes)


@needs_native
@pytest.mark.parametrize("family", FAMILIES)
def test_native_python_and_brute_force_agree_on_small_tables(family):
    rng = np.random.default_rng(["zero", "q360", "q360-mono", "anti", "anti-mono", "continuous"].index(family) + 100)
    infeasible = 0
    for _ in range(8):
        costs = table(rng, family, int(rng.integers(2, 6)), int(rng.integers(2, 6)))
        native, python = prepare(costs, engine="native"), prepare(costs, engine="python")
        assert (native.engine, python.engine) == ("native", "python")
        assert native.unconstrained == python.unconstrained == brute_force(costs, None, None)
        for latency_ms, memory_bytes in budgets(rng, costs, 5):
            expected = brute_force(costs, latency_ms, memory_bytes)
            got = outcome(native, latency_ms, memory_bytes)
            assert got == outcome(python, latency_ms, memory_bytes)
            if expected is None:
                infeasible += 1
                assert isinstance(got, tuple)
            else:
                assert got == expected
    assert infeasible >= 8  # the infeasible budgets are exercised


@needs_native
@pytest.mark.parametrize("family", FAMILIES)
def test_native_and_python_agree_on_large_tables(family):
    """16 x 10 tables (too many selections to enumerate): the two engines, at random selections' exact totals."""
    rng = np.random.default_rng(["zero", "q360", "q360-mono", "anti", "anti-mono", "continuous"].index(family) + 200)
    costs = table(rng, family, 16, 10)
    native, python = prepare(costs, engine="native"), prepare(costs, engine="python")
    assert native.unconstrained == python.unconstrained
    for latency_ms, memory_bytes in budgets(rng, costs, 4):
        assert outcome(native, latency_ms, memory_bytes) == outcome(python, latency_ms, memory_bytes)


@needs_native
def test_auto_picks_native_and_the_environment_forces_either(monkeypatch):
    costs = table(np.random.default_rng(1), "q360", 3, 3)
    monkeypatch.delenv(native_solver.ENGINE_ENV, raising=False)
    assert prepare(costs).engine == "native"
    for name, engine in (("auto", "native"), ("native", "native"), ("python", "python"), (" Python ", "python")):
        monkeypatch.setenv(native_solver.ENGINE_ENV, name)
        assert prepare(costs).engine == engine
    assert prepare(costs, engine="native").engine == "native"  # the argument wins over the environment
    monkeypatch.setenv(native_solver.ENGINE_ENV, "fortran")
    with pytest.raises(LegoCompileError, match="unknown solver engine 'fortran'") as info:
        prepare(costs)
    assert "\n" not in str(info.value)


def test_native_without_the_library_is_a_one_line_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(native_solver, "load", lambda: None)
    costs = table(np.random.default_rng(2), "anti", 3, 3)
    with pytest.raises(LegoCompileError, match="native solver was asked for") as info:
        prepare(costs, engine="native")
    assert "\n" not in str(info.value)
    assert prepare(costs, engine="auto").engine == "python"


@needs_native
def test_a_library_built_from_other_sources_is_not_used(monkeypatch, caplog):
    """An editable install's library goes stale when the C++ sources change: it is refused, and Python answers."""
    assert native_solver._built_from(native_solver.load()) == native_solver.source_hash()  # the real one is current
    monkeypatch.setattr(native_solver, "_loaded", [])
    monkeypatch.setattr(native_solver, "source_hash", lambda: "0" * 64)
    with caplog.at_level("WARNING", logger="legocompile"):
        assert native_solver.load() is None
    assert "built from other sources" in caplog.text
    assert prepare(table(np.random.default_rng(2), "anti", 3, 3), engine="auto").engine == "python"


@needs_native
def test_tables_the_native_solver_cannot_take_exactly_are_searched_in_python():
    rng = np.random.default_rng(3)
    huge = [[Cost(c.latency_ms, c.memory_bytes * 2**62, c.accuracy_drop) for c in block]
            for block in table(rng, "q360", 3, 4)]  # memory totals beyond int64
    tiny = table(rng, "anti", 3, 4)
    tiny[0][0] = Cost(tiny[0][0].latency_ms, tiny[0][0].memory_bytes, 1e-40)  # drops' scale beyond 100 bits
    for costs in (huge, tiny):
        prepared = prepare(costs, engine="native")
        assert prepared.engine == "python"
        for latency_ms, memory_bytes in budgets(rng, costs, 3):
            expected = brute_force(costs, latency_ms, memory_bytes)
            got = outcome(prepared, latency_ms, memory_bytes)
            assert got == expected if expected is not None else isinstance(got, tuple)


@needs_native
def test_a_failing_native_solve_falls_back_to_python(monkeypatch):
    rng = np.random.default_rng(4)
    costs = table(rng, "q360-mono", 4, 4)
    prepared, reference = prepare(costs), prepare(costs, engine="python")
    assert prepared.engine == "native"

    def fail(self, latency_ms, memory_bytes):
        raise native_solver.NativeSolverError("the native solver failed: simulated")

    monkeypatch.setattr(native_solver.NativeTable, "solve", fail)
    for latency_ms, memory_bytes in budgets(rng, costs, 3):
        assert outcome(prepared, latency_ms, memory_bytes) == outcome(reference, latency_ms, memory_bytes)


@needs_native
def test_concurrent_native_solves_on_one_table():
    rng = np.random.default_rng(5)
    costs = table(rng, "anti", 12, 8)
    prepared, reference = prepare(costs), prepare(costs, engine="python")
    bounds = budgets(rng, costs, 6)
    expected = [outcome(reference, *b) for b in bounds]
    results: list[list] = [[] for _ in range(4)]

    def work(k: int) -> None:
        for _ in range(5):
            results[k].append([outcome(prepared, *b) for b in bounds])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(run == expected for r in results for run in r)


@needs_native
def test_budget_objects_and_float_memory_bounds_reach_the_native_solver():
    rng = np.random.default_rng(6)
    costs = table(rng, "q360", 4, 5)
    native, python = prepare(costs), prepare(costs, engine="python")
    pick = evaluate(costs, [1, 2, 3, 4])
    budget = Budget(latency_ms=pick.latency_ms, memory_bytes=pick.memory_bytes)
    assert native.solve(budget) == python.solve(budget) == brute_force(costs, pick.latency_ms, pick.memory_bytes)
    assert native.solve_raw(None, pick.memory_bytes + 0.5) == python.solve_raw(None, pick.memory_bytes + 0.5)
