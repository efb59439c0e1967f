"""Budget traces: how the latency and memory budgets change over time while frames keep flowing.

A trace is a small JSON file::

    {
      "name": "app_starts",
      "description": "a second app starts, runs, then exits",
      "frame_rate_hz": 30,                 # or "max": as fast as the runtime goes
      "phases": [
        {"duration_s": 2.0, "latency": 1.0, "memory": 1.0, "label": "alone"},
        {"duration_s": 3.0, "latency": 0.3, "memory_mb": 12, "label": "camera app running"}
      ]
    }

Each phase sets the budget for ``duration_s`` seconds of frames (at the trace's rate). A budget is either
**relative to the bundle**, so that one trace works on any device, or absolute:

* ``latency`` / ``memory``: a fraction ``f >= 0`` of the way from the cheapest selection to the teacher's fp32
  chain: ``budget = lo + f * (hi - lo)``, where ``lo`` is the smallest latency (or memory) any selection of the
  bundle achieves and ``hi`` is the teacher's chain (every block's original fp32 engine) by the bundle's profiles.
  0 is the cheapest the bundle can do, 1 the teacher; more than 1 leaves headroom above the teacher.
  The two smallest values are each achievable alone but not always together: a phase whose two budgets cannot be
  met at once is reported as infeasible (see :func:`resolve`).
* ``latency_ms`` / ``memory_mb`` (MB = 1e6 bytes, as in ``Runtime.select``): absolute values.
* Left out: no bound in that dimension (a phase with no latency budget has no deadline to miss).

Validation is strict and each problem is one line naming the file and the key (unknown keys are refused, so a
typo does not silently leave a budget out).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
DEFAULT_RATE_HZ = 30.0  # a trace that names no rate, and the nominal rate of a "max" trace (frames per second)
MAX_PHASES = 10_000
_TOP_KEYS = {"schema", "name", "description", "frame_rate_hz", "phases"}
_PHASE_KEYS = {"duration_s", "latency", "latency_ms", "memory", "memory_mb", "label"}
MAX_FRACTION = 100.0


class TraceError(ValueError):
    """A trace that cannot be used; the message is one line and names the file."""


@dataclass(frozen=True)
class Budget:
    kind: str  # "fraction" | "absolute"
    value: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Phase:
    duration_s: float
    latency: Budget | None  # absolute: milliseconds
    memory: Budget | None  # absolute: MB (1e6 bytes)
    label: str


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    frame_rate_hz: float | None  # None: as fast as possible
    phases: tuple[Phase, ...]
    source: str

    @property
    def duration_s(self) -> float:
        return math.fsum(p.duration_s for p in self.phases)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _budget(phase: dict, frac_key: str, abs_key: str, where: str) -> Budget | None:
    if frac_key in phase and abs_key in phase:
        raise TraceError(f"{where}: give {frac_key!r} (a fraction of the bundle's range) or {abs_key!r}, not both")
    if frac_key in phase:
        v = phase[frac_key]
        if not _is_number(v) or v < 0 or v > MAX_FRACTION:
            raise TraceError(f"{where}.{frac_key}: must be a number from 0 (the bundle's cheapest selection) "
                             f"to {MAX_FRACTION:g} (1 = the teacher's fp32 chain), got {v!r}")
        return Budget("fraction", float(v))
    if abs_key in phase:
        v = phase[abs_key]
        if not _is_number(v) or v <= 0:
            raise TraceError(f"{where}.{abs_key}: must be a positive number, got {v!r}")
        return Budget("absolute", float(v))
    return None


def parse_trace(doc: Any, source: str = "trace") -> Trace:
    """Validate a parsed trace document. Raises :class:`TraceError` (one line, naming ``source`` and the key)."""
    if not isinstance(doc, dict):
        raise TraceError(f"{source}: a trace is a JSON object with 'phases', got {type(doc).__name__}")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise TraceError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if "schema" in doc and doc["schema"] != SCHEMA:
        raise TraceError(f"{source}: schema {doc['schema']!r} is not supported (this suite reads schema {SCHEMA})")
    name = doc.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\\0\n"):
        raise TraceError(f"{source}: name must be a non-empty string without slashes, got {name!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise TraceError(f"{source}: description must be a string, got {description!r}")
    rate = doc.get("frame_rate_hz", DEFAULT_RATE_HZ)
    if rate is None or rate == "max":
        rate = None
    elif not _is_number(rate) or rate <= 0:
        raise TraceError(f"{source}: frame_rate_hz must be a positive number or \"max\", got {rate!r}")
    phases = doc.get("phases")
    if not isinstance(phases, list) or not phases:
        raise TraceError(f"{source}: 'phases' must be a non-empty list of phases")
    if len(phases) > MAX_PHASES:
        raise TraceError(f"{source}: {len(phases)} phases; at most {MAX_PHASES}")
    out = []
    for i, p in enumerate(phases):
        where = f"{source}: phases[{i}]"
        if not isinstance(p, dict):
            raise TraceError(f"{where}: must be an object, got {type(p).__name__}")
        unknown = sorted(set(p) - _PHASE_KEYS)
        if unknown:
            raise TraceError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_PHASE_KEYS))})")
        if "duration_s" not in p:
            raise TraceError(f"{where}: missing key 'duration_s'")
        d = p["duration_s"]
        if not _is_number(d) or d <= 0:
            raise TraceError(f"{where}.duration_s: must be a positive number of seconds, got {d!r}")
        label = p.get("label", f"phase {i}")
        if not isinstance(label, str):
            raise TraceError(f"{where}.label: must be a string, got {label!r}")
        out.append(Phase(float(d), _budget(p, "latency", "latency_ms", where),
                         _budget(p, "memory", "memory_mb", where), label))
    return Trace(name.strip(), description, None if rate is None else float(rate), tuple(out), source)


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace file. Raises :class:`TraceError` with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"{p}: trace file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{p}: cannot read the trace ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return parse_trace(doc, str(p))


def shipped_traces() -> list[Path]:
    """The traces that come with the suite (``benchmarks/jetson/traces/*.json``), by name."""
    return sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json"))


# --------------------------------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Ranges:
    """The bundle's range per dimension: ``lo`` (the cheapest any selection achieves) and ``hi`` (the teacher's
    fp32 chain); latency in ms (chain overhead included, as ``Selection.latency_ms``), memory in bytes (boundary
    buffers included, as ``Selection.memory_bytes``)."""

    latency_lo_ms: float
    latency_hi_ms: float
    memory_lo_bytes: float
    memory_hi_bytes: float

    def to_json(self) -> dict:
        return {"latency_ms": [self.latency_lo_ms, self.latency_hi_ms],
                "memory_bytes": [self.memory_lo_bytes, self.memory_hi_bytes]}


def bundle_ranges(manifest, latency_quantile: str = "median") -> Ranges:
    """:class:`Ranges` from a manifest's profiles (selectable options only, as the optimizer sees them, with the
    latency the runtime's budgets count: each option's median or p90)."""
    from legocompile.optimize.select import (boundary_bytes, chain_overhead_ms, make_selection, option_latency,
                                             selectable)

    overhead = chain_overhead_ms(manifest)
    options = [selectable(b) for b in manifest.blocks]
    empty = [b.name for b, opts in zip(manifest.blocks, options) if not opts]
    if empty:
        raise TraceError(f"bundle: block {empty[0]!r} has no selectable option")
    lat_lo = math.fsum(min(option_latency(o, latency_quantile) for o in opts) for opts in options) + overhead
    mem_lo = sum(min(o.memory_bytes for o in opts) for opts in options) + boundary_bytes(manifest)
    teacher = make_selection(manifest, [b.option("s0", "fp32") for b in manifest.blocks], latency_quantile)
    return Ranges(lat_lo, max(teacher.latency_ms, lat_lo), float(mem_lo), float(max(teacher.memory_bytes, mem_lo)))


def resolve_budget(budget: Budget | None, lo: float, hi: float, scale: float = 1.0) -> float | None:
    """A budget's absolute value: ``lo + f * (hi - lo)`` for a fraction, ``value * scale`` for an absolute one."""
    if budget is None:
        return None
    if budget.kind == "fraction":
        return lo + budget.value * (hi - lo)
    return budget.value * scale


def resolve(trace: Trace, ranges: Ranges) -> list[dict]:
    """Each phase's absolute budgets: ``latency_ms`` (ms) and ``memory_mb`` (MB = 1e6 bytes), None when unbounded,
    with the fractions they came from (None for an absolute budget)."""
    out = []
    for p in trace.phases:
        lat = resolve_budget(p.latency, ranges.latency_lo_ms, ranges.latency_hi_ms)
        mem_bytes = resolve_budget(p.memory, ranges.memory_lo_bytes, ranges.memory_hi_bytes, scale=1e6)
        out.append({
            "label": p.label,
            "duration_s": p.duration_s,
            "latency_ms": lat,
            "memory_mb": None if mem_bytes is None else mem_bytes / 1e6,
            "latency_fraction": p.latency.value if p.latency and p.latency.kind == "fraction" else None,
            "memory_fraction": p.memory.value if p.memory and p.memory.kind == "fraction" else None,
        })
    return out


def frame_schedule(trace: Trace, frames: int | None = None) -> list[int]:
    """Frames per phase: ``duration_s`` x the trace's rate (its nominal 30 Hz for a "max" trace), or, with
    ``frames``, that total shared in proportion to the durations (largest remainder; at least one per phase)."""
    rate = trace.frame_rate_hz or DEFAULT_RATE_HZ
    durations = [p.duration_s for p in trace.phases]
    if frames is None:
        return [max(1, int(round(d * rate))) for d in durations]
    n = len(durations)
    if frames < n:
        raise TraceError(f"{trace.source}: --frames {frames} is fewer than the trace's {n} phases (one frame each at least)")
    spare = frames - n  # one frame per phase first, the rest by duration
    total = math.fsum(durations)
    exact = [spare * d / total for d in durations]
    counts = [int(math.floor(e)) for e in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]
