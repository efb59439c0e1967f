"""Budgets on each engine's p90 profiled latency instead of its median (``latency_quantile="p90"``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from legocompile.errors import LegoCompileError
from legocompile.optimize.select import costs_of, predicted_accuracy, select_options, selectable
from legocompile.runtime import Runtime


def test_p90_budgets_count_each_options_p90_and_stay_optimal(tiny_bundle):
    """Against brute force over every selection, with the p90 sums: the same best accuracy, and a selection whose
    p90 sum fits; the median solver, given the same budget, may pick one whose p90 sum does not."""
    rt = Runtime.load(tiny_bundle["path"], latency_quantile="p90")
    m = rt.manifest
    overhead = m.teacher["chain_overhead_ms"]
    combos = list(itertools.product(*[selectable(b) for b in m.blocks]))
    p90 = [sum(o.latency_p90_ms for o in c) + overhead for c in combos]
    assert [[c.latency_ms for c in blk] for blk in costs_of(m, "p90")] == [
        [o.latency_p90_ms for o in selectable(b)] for b in m.blocks]
    for budget in np.linspace(min(p90), max(p90), 6):
        sel = rt.select(latency_ms=float(budget))
        assert sel.latency_quantile == "p90"
        assert sel.latency_ms == pytest.approx(sum(o.latency_p90_ms for o in sel.options) + overhead)
        assert sel.latency_ms <= budget + 1e-9
        best = max(predicted_accuracy(m.teacher["accuracy"], [o.accuracy_drop for o in c])
                   for c, lat in zip(combos, p90) if lat <= budget)
        assert sel.accuracy == pytest.approx(best, abs=1e-12)
        assert sel.to_json()["predicted"]["latency_quantile"] == "p90"
        assert select_options(m, latency_ms=float(budget), latency_quantile="p90").options == sel.options
    assert "latency_quantile" not in select_options(m).to_json()["predicted"]  # the default reads as before


def test_bad_latency_quantile_is_one_line(tiny_bundle):
    for call in (lambda: Runtime.load(tiny_bundle["path"], latency_quantile="p99"),
                 lambda: Runtime.load(tiny_bundle["path"], impl="cpp", latency_quantile="p90")):
        with pytest.raises(LegoCompileError, match="latency_quantile|median latencies") as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_optimize_takes_the_quantile(tiny_bundle, capsys):
    import json

    from legocompile.cli import main

    m = Runtime.load(tiny_bundle["path"]).manifest
    budget = sum(max(o.latency_p90_ms for o in selectable(b)) for b in m.blocks) + m.teacher["chain_overhead_ms"]
    main(["optimize", str(tiny_bundle["path"]), "--latency-ms", str(budget), "--latency-quantile", "p90", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["predicted"]["latency_quantile"] == "p90" and doc["predicted"]["latency_ms"] <= budget + 1e-9
