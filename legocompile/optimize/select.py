"""Selections over a bundle's options: the optimizer applied to a manifest, and the accuracy model.

**Accuracy model.** Each option's profiled drop ``d`` (teacher accuracy ``T`` minus the accuracy with that option in
the otherwise original chain) is read as a *retention* ``r = 1 - d / T``. A selection's predicted accuracy is
``T * prod(r)``. LegoDNN's additive model, ``T - sum(d)``, treats the errors that degraded blocks cause as disjoint.
When they overlap it overestimates the loss of selections with several degraded blocks: on a weak model's bundle
built on an Intel AVX-512 machine (``bench_accuracy_model.py``, 40 random selections) the additive model was off by
21.5 points on average and the multiplicative one by 7.1. When the errors compound instead, both under-estimate the
loss and the additive model is closer: the same benchmark on an AMD AVX2 machine measured 8.1 points additive
against 9.5 multiplicative (80 selections); on an AMD Zen 5 machine with AVX-512 VNNI the multiplicative model was
closer again (11.3 against 15.6 points, 80 selections). The optimizer maximises ``prod(r)`` by minimising ``sum(-log r)``, which keeps the problem a
multiple-choice knapsack solved exactly, and matches ``sum(d)`` when drops are small.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from legocompile.bundle import Manifest, OptionEntry
from legocompile.errors import LegoCompileError
from legocompile.optimize.problem import Budget, Cost, InfeasibleBudgetError
from legocompile.optimize.solver import solve


@dataclass(frozen=True)
class Selection:
    """One option per block, with the accuracy, latency and memory the profiles predict for it."""

    options: tuple[OptionEntry, ...]
    block_names: tuple[str, ...]
    teacher_accuracy: float
    overhead_ms: float = 0.0  # the chain's fixed cost per call (copying in and out, the loop), measured
    latency_quantile: str = "median"  # which profiled latency of each option budgets count: median or p90
    overhead_bytes: int = 0  # what serving holds whatever the selection: the boundary buffers (boundary_bytes)

    @property
    def latency_ms(self) -> float:
        """Profiled block latencies (each option's median, or its p90) plus the chain's fixed overhead per call."""
        return float(sum(option_latency(o, self.latency_quantile) for o in self.options) + self.overhead_ms)

    @property
    def memory_bytes(self) -> int:
        """Profiled engine memory plus the boundary buffers the chain runs on."""
        return int(sum(o.memory_bytes for o in self.options)) + self.overhead_bytes

    @property
    def accuracy(self) -> float:
        """Predicted top-1 (the multiplicative accuracy model; see the module docstring)."""
        return predicted_accuracy(self.teacher_accuracy, [o.accuracy_drop for o in self.options])

    def to_json(self) -> dict:
        return {
            "selection": [
                {"block": b, "variant": o.variant, "precision": o.precision}
                for b, o in zip(self.block_names, self.options)
            ],
            "predicted": {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "memory_bytes": self.memory_bytes}
            | ({"latency_quantile": self.latency_quantile} if self.latency_quantile != "median" else {}),
        }


#: What a latency budget is counted against. ``median``: each option's median profiled latency (half of the frames
#: of a selection predicted right at its budget run over it). ``p90``: each option's 90th percentile, a stricter
#: promise (their sum bounds the chain's p90 from above when blocks vary together, and roughly otherwise).
LATENCY_QUANTILES = ("median", "p90")


def check_latency_quantile(quantile: object) -> str:
    if quantile not in LATENCY_QUANTILES:
        raise LegoCompileError(f"latency_quantile must be one of {', '.join(LATENCY_QUANTILES)}, got {quantile!r}")
    return str(quantile)


def option_latency(option: OptionEntry, quantile: str = "median") -> float:
    """The option's profiled latency that budgets count: its median, or its p90."""
    return float(option.latency_p90_ms if quantile == "p90" else option.latency_ms)


MIN_RETENTION = 1e-6  # an option that destroys accuracy still gets a finite (huge) cost


def retention(drop: float, teacher_accuracy: float) -> float:
    """Fraction of the teacher's accuracy kept by an option with this drop (may exceed 1 for a negative drop)."""
    return max(1.0 - drop / teacher_accuracy, MIN_RETENTION) if teacher_accuracy > 0 else MIN_RETENTION


def predicted_accuracy(teacher_accuracy: float, drops) -> float:
    """The multiplicative model: ``T * prod(1 - d / T)``, at most 1 (options that measured better than the
    teacher, i.e. negative drops, cannot lift the prediction past a perfect score)."""
    return float(min(1.0, teacher_accuracy * math.prod(retention(d, teacher_accuracy) for d in drops)))


def additive_accuracy(teacher_accuracy: float, drops) -> float:
    """LegoDNN's additive model, ``T - sum(d)`` (kept to report how far off it is)."""
    return float(teacher_accuracy - sum(drops))


def selectable(block) -> tuple[OptionEntry, ...]:
    """A block's options that passed the accuracy gate, in manifest order: what the optimizer chooses from.

    The optimizer's choice indices (``Solution.choice``) index this tuple, not ``block.options``.
    """
    return tuple(o for o in block.options if o.excluded is None)


def selection_pairs(manifest: Manifest, selection) -> list[tuple[str, str]]:
    """An explicit selection as ``(variant, precision)`` per block, in block order.

    ``selection`` is a sequence of ``(variant, precision)`` pairs or ``{"variant":..., "precision":...}`` dicts in
    block order, or a dict ``block name -> pair`` (blocks not named keep the original fp32 option).
    """
    blocks = manifest.blocks
    if isinstance(selection, dict):
        unknown = set(selection) - {b.name for b in blocks}
        if unknown:
            raise LegoCompileError(f"unknown block {sorted(unknown)[0]!r}; blocks: {', '.join(b.name for b in blocks)}")
        items = [selection.get(b.name, ("s0", "fp32")) for b in blocks]
    else:
        items = list(selection)
        if len(items) != len(blocks):
            raise LegoCompileError(f"selection has {len(items)} entries but the bundle has {len(blocks)} blocks")
    return [(p["variant"], p["precision"]) if isinstance(p, dict) else tuple(p) for p in items]


def costs_of(manifest: Manifest, latency_quantile: str = "median") -> list[list[Cost]]:
    """The optimizer's table: latency (median or p90), memory, and ``-log(retention)`` as the quantity to minimise."""
    t = float(manifest.teacher["accuracy"])
    q = check_latency_quantile(latency_quantile)
    return [[Cost(option_latency(o, q), o.memory_bytes, -math.log(retention(o.accuracy_drop, t)))
             for o in selectable(b)] for b in manifest.blocks]


def options_of(manifest: Manifest, choice) -> tuple[OptionEntry, ...]:
    """The options a solver's ``choice`` (an index per block into :func:`selectable`) stands for."""
    return tuple(selectable(b)[i] for b, i in zip(manifest.blocks, choice))


def chain_overhead_ms(manifest: Manifest) -> float:
    return float(manifest.teacher.get("chain_overhead_ms", 0.0))


BOUNDARY_ITEMSIZE = 4  # every backend allocates boundary buffers as float32


def boundary_bytes(manifest: Manifest) -> int:
    """Bytes of the chain's boundary buffers at the profile batch size: block 0's input, every block's output and
    the last block's further outputs. The Runtime (and the C++ runtime) holds one set per calling thread, whatever
    the selection; engine profiles measure each engine against buffers allocated beforehand, so they exclude them.
    Counting them in every selection's memory is what brought predictions within 0.3 MB of the example's resident
    memory (0.48 MB of buffers at batch 1; a 224x224 ResNet's run to megabytes, times the batch)."""
    specs = [manifest.blocks[0].input, *(b.output for b in manifest.blocks), *manifest.blocks[-1].extra_outputs]
    return sum(math.prod(s.shape) for s in specs) * BOUNDARY_ITEMSIZE


def make_selection(manifest: Manifest, options, latency_quantile: str = "median") -> Selection:
    return Selection(tuple(options), tuple(b.name for b in manifest.blocks), float(manifest.teacher["accuracy"]),
                     chain_overhead_ms(manifest), check_latency_quantile(latency_quantile), boundary_bytes(manifest))


def select_options(
    manifest: Manifest, *, latency_ms: float | None = None, memory_mb: float | None = None, costs=None,
    latency_quantile: str = "median",
) -> Selection:
    """The most accurate selection with Σ latency ≤ ``latency_ms`` and Σ memory ≤ ``memory_mb`` (MB = 1e6 bytes);
    the sums include the chain's overhead per call and its boundary buffers (:func:`boundary_bytes`).

    ``latency_quantile`` (:data:`LATENCY_QUANTILES`) picks which profiled latency the sum counts; ``costs``, when
    given, must have been made with the same one (:func:`costs_of`).

    Raises:
        InfeasibleBudgetError: no selection fits; the message states the smallest achievable latency and memory.
    """
    memory_bytes = None if memory_mb is None else int(round(memory_mb * 1e6))
    asked = Budget(latency_ms=latency_ms, memory_bytes=memory_bytes)  # validates what the user gave
    overhead, buffers = chain_overhead_ms(manifest), boundary_bytes(manifest)
    blocks_budget = None if latency_ms is None else max(latency_ms - overhead, 1e-12)
    engines_budget = None if memory_bytes is None else max(memory_bytes - buffers, 1)
    try:
        solution = solve(costs if costs is not None else costs_of(manifest, latency_quantile),
                         Budget(latency_ms=blocks_budget, memory_bytes=engines_budget))
    except InfeasibleBudgetError as e:  # restate it in end-to-end terms: the overheads are part of every selection
        raise InfeasibleBudgetError(asked, e.min_latency_ms + overhead, e.min_memory_bytes + buffers) from None
    return make_selection(manifest, options_of(manifest, solution.choice), latency_quantile)
