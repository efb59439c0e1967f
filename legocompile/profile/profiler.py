"""The profile stage: latency, resident memory and accuracy drop of every engine, measured here.

* Latency and memory: measured in the profiling probe (:mod:`legocompile.profile.probe`), a fresh process set up like
  the Runtime: engines bound to preallocated boundary buffers, real block inputs, interleaved timing rounds.
* Accuracy drop: top-1 of the teacher chain (all original fp32 engines) minus top-1 of the same chain with this
  engine in place of block i, on the evaluation split (in this process).

Every result is cached by the engine's sha256, the device fingerprint and the settings.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.profile.accuracy import top1
from legocompile.profile.probe import ProbeEngine, run_probe
from legocompile.workspace import Workspace, atomic_write_json, content_key

EVAL_BATCH = 256


def _run_batched(engine, x: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.run(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def _chain_from(load, keys, start: int, x: np.ndarray) -> np.ndarray:
    """Run blocks ``start..`` of the chain given by ``keys`` on ``x`` (block ``start``'s input)."""
    for k in keys[start:]:
        x = _run_batched(load(k), x)
    return x


def profile_engines(
    ws: Workspace,
    backend,
    fingerprint: dict,
    *,
    chain,
    engines: dict[tuple[int, str, str], dict],
    eval_in: list[np.ndarray],
    eval_y: np.ndarray,
    settings,
    progress,
    report,
) -> tuple[dict[tuple[int, str, str], dict], dict[str, Any]]:
    """Profile every engine; return per-engine results and the teacher chain's accuracy and latency."""
    n = len(chain)
    batch = settings.batch_size
    prof_settings = {"batch": batch, "warmup": settings.warmup, "runs": settings.runs, "threads": settings.threads,
                     "method": "in-context-2"}
    teacher_keys = [(i, "s0", "fp32") for i in range(n)]
    paths = {k: ws.path("profiles", content_key("profile", e["sha256"], fingerprint, prof_settings), ".json")
             for k, e in engines.items()}
    teacher_path = ws.path(
        "profiles",
        content_key("teacher", [engines[k]["sha256"] for k in teacher_keys], fingerprint, prof_settings, eval_y),
        ".json",
    )
    results = {k: json.loads(p.read_text()) for k, p in paths.items() if p.exists()}
    todo = [k for k in engines if k not in results]
    for k in engines:
        report.count("profile", k not in todo)
    if not todo and teacher_path.exists():
        return results, json.loads(teacher_path.read_text())

    loaded: dict[tuple[int, str, str], Any] = {}

    def load(k):
        if k not in loaded:
            loaded[k] = backend.load(engines[k]["path"])
        return loaded[k]

    teacher_acc = top1(_chain_from(load, teacher_keys, 0, eval_in[0]), eval_y)
    ref_out = {}
    with progress.stage("profile accuracy", len(todo)) as advance:
        for k in todo:
            i = k[0]
            if i not in ref_out:
                ref_out[i] = _run_batched(load(teacher_keys[i]), eval_in[i])
            out = _run_batched(load(k), eval_in[i])
            logits = _chain_from(load, teacher_keys, i + 1, out)
            results[k] = {
                "accuracy_drop": teacher_acc - top1(logits, eval_y),
                "output_max_abs_err": float(np.max(np.abs(out - ref_out[i]))),
            }
            advance()

    # Latency (each engine in a chain of original engines of its own precision) and memory, in one probe run.
    precisions = sorted({k[2] for k in engines})
    context_keys = {p: [(i, "s0", p) for i in range(n)] for p in precisions}
    probe_keys = list(dict.fromkeys([k for p in precisions for k in context_keys[p]] + todo))
    with progress.stage("profile latency+memory", 1) as advance, tempfile.TemporaryDirectory() as tmp:
        chain_input = Path(tmp) / "x.npy"
        np.save(chain_input, np.ascontiguousarray(eval_in[0][:batch]))
        probe_engines = [
            ProbeEngine(engines[k]["path"], k[0], k[2], (batch, *chain[k[0]].input_shape[1:]),
                        (batch, *chain[k[0]].output_shape[1:]))
            for k in probe_keys
        ]
        measured = run_probe(
            probe_engines, threads=settings.threads, warmup=settings.warmup, runs=settings.runs,
            contexts={p: [probe_keys.index(k) for k in keys] for p, keys in context_keys.items()},
            overhead_context="fp32", chain_input=chain_input,
        )
        advance()
    for j, k in enumerate(probe_keys):
        if k in todo:
            lat = measured["latency"][j]
            results[k].update(latency_ms=lat["latency_ms"], latency_p90_ms=lat["latency_p90_ms"],
                              memory_bytes=int(measured["memory_bytes"][j]))
            atomic_write_json(paths[k], results[k])
    c = measured["chain"]
    teacher = {"accuracy": teacher_acc, "latency_ms": c["latency_ms"], "latency_p90_ms": c["latency_p90_ms"],
               "chain_overhead_ms": c["overhead_ms"], "num_eval": int(len(eval_y))}
    atomic_write_json(teacher_path, teacher)
    return results, teacher
