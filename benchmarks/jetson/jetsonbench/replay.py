"""The dynamic scenario LegoDNN is about: frames keep flowing while the budget changes under them.

A trace (:mod:`.traces`) is replayed on a fresh Runtime:

* **Frames.** At a fixed rate (frame *k* is released at ``t0 + k / rate``), or as fast as possible (a frame is
  released when the previous one is done). A frame's *response time* is from its release to the end of its
  ``rt(x)`` call, so it includes waiting behind a late frame and, for a phase's first frame, the switch. In the
  fixed-rate mode a frame still unstarted when the next one is released is **dropped** (a camera keeps only the
  newest frame).
* **Switching.** When a phase starts, its budget "arrives" at its first frame's release: ``rt.select(latency_ms,
  memory_mb)`` runs, then the frame. The time of ``select`` is the **switch latency** (the optimizer, loading the
  engines the new selection needs, unloading the others). The first phase's select loads every engine of a
  Runtime that has none yet: it is reported apart (``initial_load_ms``), not as a switch. A budget no selection
  fits is **infeasible**: the phase runs the most accurate selection within its memory budget alone, or the one
  that needs the least memory, and says so.
* **Deadline misses.** A processed frame misses when its response time exceeds the phase's latency budget
  (frames of a phase without one have no deadline). ``miss_rate = misses / frames_with_deadline``; dropped
  frames are counted apart, and in ``miss_rate_incl_dropped``.
* **Accuracy over time.** Predicted from each phase's selection (the bundle's accuracy model). With evaluation
  data, frame *k* is sample ``k mod N``: each phase's frames are a slice of the eval set, and the mean of the bundle's metric
  (top-1, mIoU) over its frames is the phase's *streamed* accuracy (a project's own metric is never imported: a
  bundle is data; accuracy is then predicted only); after the timed replay (untimed) each distinct selection is also evaluated on up to
  ``eval_samples`` samples.
* **Memory.** The process's RSS before any engine is loaded is the base. The peak RSS of each phase is read
  exactly (VmHWM, reset at each phase's start, see :mod:`.sampling`) and set against the phase's memory budget;
  the background sampler adds the RSS and CPU curves.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import numpy as np

from . import sampling
from .static import stats

SPIN_S = 0.0005  # the last half millisecond before a frame's release is spun, not slept


def _selection_json(sel) -> list[str]:
    return [f"{o.variant}/{o.precision}" for o in sel.options]


def _select(rt, budget_ms: float | None, budget_mb: float | None):
    """(selection, infeasible reason or None). An infeasible budget keeps memory first (see module docstring)."""
    from legocompile.optimize.problem import InfeasibleBudgetError

    try:
        return rt.select(latency_ms=budget_ms, memory_mb=budget_mb), None
    except InfeasibleBudgetError as e:
        reason = " ".join(str(e).split())
        if budget_mb is not None:
            try:
                return rt.select(memory_mb=budget_mb), reason
            except InfeasibleBudgetError:
                pass
        return rt.select(memory_mb=e.min_memory_bytes / 1e6), reason


def _wait_until(due: float, clock: Callable[[], float]) -> None:
    """Return at ``due`` (a ``clock()`` time) within microseconds: sleep until half a millisecond before, then spin.

    ``time.sleep`` alone wakes 50-100 us late on Linux (more under load), which would count as response time
    against sub-millisecond budgets: a release that late is the benchmark's, not the runtime's."""
    while True:
        left = due - clock()
        if left <= 0:
            return
        if left > SPIN_S:
            time.sleep(min(0.001, left - SPIN_S))


def replay(
    make_runtime: Callable[[], Any],
    trace,
    resolved: list[dict],
    frames_per_phase: list[int],
    *,
    rate_hz: float | None,
    inputs: np.ndarray,
    labels: np.ndarray | None,
    batch: int,
    sample_interval_s: float,
    eval_samples: int,
    progress: Callable[[str], None],
    tegrastats: str | bool | None = None,
    metric: Callable[[Any, Any], float] | None = None,
) -> dict:
    """Replay one trace; the report (see the module docstring). ``inputs`` hold at least ``batch`` samples.

    ``metric(outputs, labels)`` scores accuracy (the bundle's metric; required with ``labels``)."""
    if labels is not None and metric is None:
        raise ValueError("labels need the metric that scores them")
    period = None if rate_hz is None else 1.0 / rate_hz
    if len(inputs) < batch:
        raise ValueError(f"{len(inputs)} input samples; a frame needs {batch}")
    pool = len(inputs) // batch  # frame k is the (k mod pool)-th batch of the inputs
    frames_x = [np.ascontiguousarray(inputs[s * batch:(s + 1) * batch]) for s in range(pool)]
    frames_y = None if labels is None else [np.asarray(labels[s * batch:(s + 1) * batch]) for s in range(pool)]

    gc.collect()
    sampling.trim_heap()
    rt = make_runtime()
    exact_peak = sampling.reset_peak_rss()
    rss_base = sampling.current_rss_bytes()

    total = sum(frames_per_phase)
    rec_t = np.full(total, np.nan)
    rec_service = np.full(total, np.nan)
    rec_response = np.full(total, np.nan)
    rec_phase = np.zeros(total, dtype=np.int32)
    rec_done = np.zeros(total, dtype=bool)
    rec_score = np.full(total, np.nan)  # the metric on each frame's batch
    phases_out = []
    previous = None
    sampler = sampling.Sampler(sample_interval_s, tegrastats=tegrastats)
    sampler.start()
    t0 = time.perf_counter() + 0.01  # the first release: a moment after the sampler started
    clock = time.perf_counter
    k = 0
    for i, (budget, n) in enumerate(zip(resolved, frames_per_phase)):
        due0 = t0 + k * period if period else clock()
        if period:
            _wait_until(due0, clock)
        phase_start = due0 if period else clock()
        if exact_peak:
            sampling.reset_peak_rss()
        s0 = clock()
        sel, infeasible = _select(rt, budget["latency_ms"], budget["memory_mb"])
        switch_ms = (clock() - s0) * 1e3
        deadline = budget["latency_ms"]
        first_frame_ms = None
        dropped = 0
        for j in range(n):
            idx = k + j
            rec_phase[idx] = i
            if period:
                due = t0 + idx * period
                now = clock()
                if j > 0 and now >= due + period:  # the next frame is already out: this one is gone
                    dropped += 1
                    continue
                _wait_until(due, clock)
                release = due if j > 0 else phase_start
            else:
                release = s0 if j == 0 else clock()
            fx = frames_x[idx % len(frames_x)]
            a = clock()
            y = rt(fx)
            end = clock()
            rec_t[idx] = release - t0
            rec_service[idx] = (end - a) * 1e3
            rec_response[idx] = (end - release) * 1e3
            rec_done[idx] = True
            if first_frame_ms is None:
                first_frame_ms = rec_service[idx]
            if frames_y is not None:
                rec_score[idx] = metric(y, frames_y[idx % len(frames_y)])
        phase_end = clock()
        peak = sampling.peak_rss_bytes() if exact_peak else None
        k += n
        m = slice(k - n, k)
        done = rec_done[m]
        resp = rec_response[m][done]
        misses = int(np.sum(resp > deadline)) if deadline is not None else 0
        changed = None if previous is None else sum(a.key != b.key for a, b in zip(previous.options, sel.options))
        mem_budget_bytes = None if budget["memory_mb"] is None else int(round(budget["memory_mb"] * 1e6))
        entry: dict[str, Any] = {
            "label": budget["label"],
            "start_s": phase_start - t0, "end_s": phase_end - t0,
            "budget": {"latency_ms": deadline, "memory_mb": budget["memory_mb"],
                       "latency_fraction": budget["latency_fraction"], "memory_fraction": budget["memory_fraction"]},
            "infeasible": infeasible,
            "selection": _selection_json(sel),
            "predicted": {"latency_ms": sel.latency_ms, "memory_bytes": sel.memory_bytes, "accuracy": sel.accuracy},
            "fits_budget": {
                "latency": None if deadline is None else bool(sel.latency_ms <= deadline + 1e-12),
                "memory": None if mem_budget_bytes is None else bool(sel.memory_bytes <= mem_budget_bytes),
            },
            "initial": previous is None,
            "blocks_changed": changed,
            "switch_ms": switch_ms,
            "first_frame_ms": first_frame_ms,
            "frames_scheduled": n, "frames": int(done.sum()), "dropped": dropped,
            "frames_with_deadline": int(done.sum()) if deadline is not None else 0,
            "misses": misses,
            "response": stats(resp),
            "service": stats(rec_service[m][done]),
            "rss": {"hwm_bytes": peak,
                    "hwm_over_base_bytes": None if peak is None or rss_base is None else peak - rss_base,
                    "memory_budget_bytes": mem_budget_bytes},
            "accuracy": {"predicted": sel.accuracy},
        }
        if entry["rss"]["hwm_over_base_bytes"] is not None and mem_budget_bytes is not None:
            entry["rss"]["over_budget_bytes"] = entry["rss"]["hwm_over_base_bytes"] - mem_budget_bytes
        if frames_y is not None and done.any():
            entry["accuracy"]["measured_stream"] = float(np.mean(rec_score[m][done]))
            entry["accuracy"]["stream_samples"] = int(done.sum() * batch)
        phases_out.append(entry)
        previous = sel
        progress(f"  {trace.name} phase {i + 1}/{len(resolved)} {budget['label']!r}: "
                 f"{' '.join(entry['selection'])}, switch {switch_ms:.2f} ms, "
                 f"{misses}/{entry['frames_with_deadline']} misses, {dropped} dropped")
    sampler.stop()
    trace_hwm = max((p["rss"]["hwm_bytes"] for p in phases_out if p["rss"]["hwm_bytes"] is not None), default=None)

    # untimed: each distinct selection on a slice of the eval set
    if labels is not None and eval_samples > 0:
        ex, ey = inputs[:eval_samples], labels[:eval_samples]
        cache: dict[tuple, float] = {}
        for p in phases_out:
            key = tuple(p["selection"])
            if key not in cache:
                rt.select(selection=[tuple(s.split("/")) for s in key])
                cache[key] = metric(rt.predict(ex), ey)
            p["accuracy"]["measured_eval"] = cache[key]
            p["accuracy"]["eval_samples"] = int(len(ey))

    offset = t0 - sampler.t0  # sampler times are from its start, the trace's from the first release
    for p in phases_out:  # the sampler's view of each phase
        p["sampled"] = sampler.window(p["start_s"] + offset, p["end_s"] + offset)

    done = rec_done
    with_deadline = [p["frames_with_deadline"] for p in phases_out]
    misses = sum(p["misses"] for p in phases_out)
    dropped = sum(p["dropped"] for p in phases_out)
    frames_dl = sum(with_deadline)
    switches = [p["switch_ms"] for p in phases_out if not p["initial"]]
    weights = np.array([p["frames"] for p in phases_out], dtype=float)
    pred = np.array([p["accuracy"]["predicted"] for p in phases_out])
    summary: dict[str, Any] = {
        "frames_scheduled": total,
        "frames": int(done.sum()),
        "frames_with_deadline": frames_dl,
        "misses": misses,
        "miss_rate": misses / frames_dl if frames_dl else None,
        "dropped": dropped,
        "miss_rate_incl_dropped": (misses + dropped) / (frames_dl + dropped) if frames_dl + dropped else None,
        "duration_s": float(np.nanmax(rec_t) if done.any() else 0.0),
        "initial_load_ms": phases_out[0]["switch_ms"],
        "switch_ms": {"count": len(switches), "values": switches,
                      **({"median": float(np.median(switches)), "max": float(np.max(switches)),
                          "mean": float(np.mean(switches))} if switches else {})},
        "infeasible_phases": sum(1 for p in phases_out if p["infeasible"]),
        "distinct_selections": len({tuple(p["selection"]) for p in phases_out}),
        "response": stats(rec_response[done]),
        "rss": {"base_bytes": rss_base, "hwm_bytes": trace_hwm,
                "hwm_over_base_bytes": None if trace_hwm is None or rss_base is None else trace_hwm - rss_base,
                "max_memory_budget_bytes": max((p["rss"]["memory_budget_bytes"] for p in phases_out
                                                if p["rss"]["memory_budget_bytes"] is not None), default=None),
                "method": "VmHWM reset per phase (/proc/self/clear_refs)" if exact_peak
                else "not measured exactly (no /proc/self/clear_refs); see sampled.rss_max_bytes"},
        "accuracy": {"predicted_mean": float(np.sum(pred * weights) / weights.sum()) if weights.sum() else None},
        "sampled": sampler.summary(),
    }
    if labels is not None and done.any():
        summary["accuracy"]["measured_stream"] = float(np.mean(rec_score[done]))
        if eval_samples > 0:
            summary["accuracy"]["measured_eval_mean"] = float(
                np.sum(np.array([p["accuracy"]["measured_eval"] for p in phases_out]) * weights) / weights.sum())
    frames = {
        "t_s": [round(float(v), 6) if d else None for v, d in zip(rec_t, done)],
        "response_ms": [round(float(v), 5) if d else None for v, d in zip(rec_response, done)],
        "service_ms": [round(float(v), 5) if d else None for v, d in zip(rec_service, done)],
        "phase": rec_phase.tolist(),
        "dropped": [bool(not d) for d in done],
    }
    if frames_y is not None:
        frames["score"] = [round(float(v), 6) if d else None for v, d in zip(rec_score, done)]
    del rt
    return {
        "status": "ok",
        "trace": {"name": trace.name, "description": trace.description, "source": trace.source,
                  "frame_rate_hz": rate_hz, "mode": "fixed rate" if rate_hz else "as fast as possible",
                  "batch": batch},
        "phases": phases_out,
        "summary": summary,
        "frames": frames,
        "series": sampler.series(offset),
    }
