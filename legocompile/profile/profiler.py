"""The profile stage: latency, resident memory and accuracy drop of every engine, measured here.

* Latency: each engine bound to preallocated boundary buffers exactly as the runtime binds it, fed a real block
  input, timed in interleaved rounds (warm-up, then ``runs`` timed calls; median and p90).
* Memory: :func:`legocompile.profile.memory.measure_memory` (fresh process per engine).
* Accuracy drop: top-1 of the teacher chain (all original fp32 engines) minus top-1 of the same chain with this
  engine in place of block i, on the evaluation split.

Every result is cached by the engine's sha256, the device fingerprint and the settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from legocompile.profile.accuracy import top1
from legocompile.profile.latency import interleaved_latency, measure_latency
from legocompile.profile.memory import measure_memory
from legocompile.workspace import Workspace, atomic_write_json, content_key

EVAL_BATCH = 256


def _run_batched(engine, x: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.run(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


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
    prof_settings = {"batch": batch, "warmup": settings.warmup, "runs": settings.runs, "threads": settings.threads}
    keys = {k: content_key("profile", e["sha256"], fingerprint, prof_settings) for k, e in engines.items()}
    paths = {k: ws.path("profiles", key, ".json") for k, key in keys.items()}
    results: dict[tuple[int, str, str], dict] = {}
    for k, p in paths.items():
        if p.exists():
            import json

            results[k] = json.loads(p.read_text())
    todo = [k for k in engines if k not in results]
    for k in engines:
        report.count("profile", k not in todo)

    loaded: dict[tuple[int, str, str], Any] = {}

    def load(k):
        if k not in loaded:
            loaded[k] = backend.load(engines[k]["path"])
        return loaded[k]

    teacher_keys = [(i, "s0", "fp32") for i in range(n)]
    teacher_key = content_key("teacher", [engines[k]["sha256"] for k in teacher_keys], fingerprint, prof_settings, eval_y)

    def teacher_outputs() -> list[np.ndarray]:
        """Outputs of the original fp32 engines on the teacher's block inputs (block i's output on eval_in[i])."""
        return [_run_batched(load(k), eval_in[i]) for i, k in enumerate(teacher_keys)]

    if todo:
        ref_out = teacher_outputs()
        teacher_acc = top1(_chain_from(load, teacher_keys, 0, eval_in[0]), eval_y)

        with progress.stage("profile accuracy", len(todo)) as advance:
            for k in todo:
                i = k[0]
                out = _run_batched(load(k), eval_in[i])
                logits = _chain_from(load, teacher_keys, i + 1, out)
                results[k] = {
                    "accuracy_drop": teacher_acc - top1(logits, eval_y),
                    "output_max_abs_err": float(np.max(np.abs(out - ref_out[i]))),
                }
                advance()

        with progress.stage("profile latency", 1) as advance:
            runs = {}
            for k in todo:
                src = backend.allocate((batch, *chain[k[0]].input_shape[1:]))
                dst = backend.allocate((batch, *chain[k[0]].output_shape[1:]))
                src.numpy()[...] = eval_in[k[0]][:batch]
                runs[k] = load(k).bind(src, dst)
            stats = interleaved_latency(runs, warmup=settings.warmup, runs=settings.runs)
            for k in todo:
                results[k].update(latency_ms=stats[k].median_ms, latency_p90_ms=stats[k].p90_ms)
            advance()

        with progress.stage("profile memory", 1) as advance:
            shapes = [(engines[k]["path"], (batch, *chain[k[0]].input_shape[1:])) for k in todo]
            for k, mem in zip(todo, measure_memory(shapes, threads=settings.threads)):
                results[k]["memory_bytes"] = int(mem)
            advance()

        for k in todo:
            atomic_write_json(paths[k], results[k])

    def compute_teacher() -> dict:
        acc = top1(_chain_from(load, teacher_keys, 0, eval_in[0]), eval_y)
        bufs = [backend.allocate((batch, *chain[0].input_shape[1:]))]
        bufs += [backend.allocate((batch, *b.output_shape[1:])) for b in chain]
        bufs[0].numpy()[...] = eval_in[0][:batch]
        bound = [load(k).bind(bufs[i], bufs[i + 1]) for i, k in enumerate(teacher_keys)]

        def run_chain():
            for r in bound:
                r()

        lat = measure_latency(run_chain, warmup=settings.warmup, runs=settings.runs)
        return {"accuracy": acc, "latency_ms": lat.median_ms, "latency_p90_ms": lat.p90_ms, "num_eval": int(len(eval_y))}

    teacher, _ = ws.cached_json("profiles", teacher_key, compute_teacher)
    return results, dict(teacher)


def _chain_from(load, keys, start: int, x: np.ndarray) -> np.ndarray:
    """Run blocks ``start..`` of the chain given by ``keys`` on ``x`` (block ``start``'s input)."""
    for k in keys[start:]:
        x = _run_batched(load(k), x)
    return x
