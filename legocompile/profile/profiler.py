"""The profile stage: latency, resident memory and accuracy drop of every engine, measured here.

* Latency and memory: measured in the profiling probe (:mod:`legocompile.profile.probe`), a fresh process set up like
  the Runtime: engines bound to preallocated boundary buffers, real block inputs, interleaved timing rounds.
* Accuracy drop: the task metric (:mod:`legocompile.profile.accuracy`: top-1 by default) of the teacher chain (all
  original fp32 engines) minus the metric of the same chain with this engine in place of block i, on the evaluation
  split (in this process).

Results are cached under the declared inputs of :data:`ACCURACY`, :data:`TIMING` and :data:`TEACHER`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.outputs import as_outputs, concat_outputs, max_abs
from legocompile.profile.accuracy import Metric, resolve_metric
from legocompile.profile.probe import ProbeEngine, run_probe
from legocompile.stage import Stage, digest
from legocompile.workspace import Workspace, atomic_write_json

EVAL_BATCH = 256


def run_batched(engine, x: np.ndarray):
    """The engine's outputs over ``x``, in batches (an array, or a tuple of arrays for several outputs)."""
    return concat_outputs([engine.run(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def _chain_from(load, keys, start: int, x: np.ndarray):
    """Run blocks ``start..`` of the chain given by ``keys`` on ``x`` (block ``start``'s input)."""
    for k in keys[start:]:
        x = run_batched(load(k), x)
    return x


ACCURACY = Stage("accuracy", inputs=("engine", "teacher_chain", "block_inputs", "eval_inputs", "labels", "metric"),
                 tools=("onnxruntime",), format=2)
TIMING = Stage("timing", inputs=("engine", "context", "chain_input", "device", "settings"), tools=("onnxruntime",),
               format=4)  # 4: memory as the median increment over 8 instances; threads default to own pools
TEACHER = Stage("teacher_timing", inputs=("teacher_chain", "chain_input", "device", "settings"),
                tools=("onnxruntime",), format=5)  # 5: the chain overhead from rounds interleaved with the engines


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
    metric: Metric | None = None,
) -> tuple[dict[tuple[int, str, str], dict], dict[str, Any]]:
    """Profile every engine; return per-engine results and the teacher chain's accuracy and latency.

    Accuracy drops depend on the engine, the whole teacher chain (its accuracy is the reference, and the blocks
    after the engine's finish the chain), the engine's block inputs, the labels and the metric. Latency and memory
    depend on the engine, the chain of same-precision originals it is timed in, the input, the device and the
    settings.
    """
    metric = resolve_metric(metric)
    n = len(chain)
    batch = settings.batch_size
    prof_settings = {"batch": batch, "warmup": settings.warmup, "runs": settings.runs, "threads": settings.threads}
    if settings.frame_gap_ms:  # absent when 0, so back-to-back profiles keep their cache keys
        prof_settings["frame_gap_ms"] = float(settings.frame_gap_ms)
    teacher_keys = [(i, "s0", "fp32") for i in range(n)]
    teacher_chain = [engines[k]["sha256"] for k in teacher_keys]
    chain_input = np.ascontiguousarray(eval_in[0][:batch])
    labels, eval_digests = digest(eval_y), [digest(a) for a in eval_in]
    precisions = sorted({k[2] for k in engines})
    context_keys = {p: [(i, "s0", p) for i in range(n)] for p in precisions}
    device = {"fingerprint": fingerprint}

    def accuracy_path(k) -> Path:
        return ws.path("accuracy", ACCURACY.key(engine=engines[k]["sha256"], teacher_chain=teacher_chain,
                                                block_inputs=eval_digests[k[0]], eval_inputs=eval_digests[0],
                                                labels=labels, metric=metric.identity), ".json")

    def timing_path(k) -> Path:
        return ws.path("timing", TIMING.key(engine=engines[k]["sha256"],
                                            context=[engines[c]["sha256"] for c in context_keys[k[2]]],
                                            chain_input=digest(chain_input), device=device, settings=prof_settings),
                       ".json")

    teacher_path = ws.path("timing", TEACHER.key(teacher_chain=teacher_chain, chain_input=digest(chain_input),
                                                 device=device, settings=prof_settings), ".json")
    results: dict[tuple[int, str, str], dict] = {k: {} for k in engines}
    acc_todo, time_todo = [], []
    for k in engines:
        for path, todo in ((accuracy_path(k), acc_todo), (timing_path(k), time_todo)):
            if path.exists():
                results[k].update(json.loads(path.read_text()))
            else:
                todo.append(k)
        report.count("profile", k not in acc_todo and k not in time_todo)

    loaded: dict[tuple[int, str, str], Any] = {}

    def load(k):
        if k not in loaded:
            loaded[k] = backend.load(engines[k]["path"])
        return loaded[k]

    teacher_acc = metric(_chain_from(load, teacher_keys, 0, eval_in[0]), eval_y)
    ref_out = {}
    with progress.stage("profile accuracy", len(acc_todo)) as advance:
        for k in acc_todo:
            i = k[0]
            if i not in ref_out:
                ref_out[i] = run_batched(load(teacher_keys[i]), eval_in[i])
            out = run_batched(load(k), eval_in[i])
            logits = _chain_from(load, teacher_keys, i + 1, out)
            measured = {"accuracy_drop": teacher_acc - metric(logits, eval_y),
                        "output_max_abs_err": max(max_abs(o - r) for o, r in zip(as_outputs(out),
                                                                                  as_outputs(ref_out[i])))}
            atomic_write_json(accuracy_path(k), measured)
            results[k].update(measured)
            advance()

    if time_todo or not teacher_path.exists():
        # Latency (each engine in a chain of original engines of its own precision) and memory, in one probe run.
        probe_keys = list(dict.fromkeys([k for p in precisions for k in context_keys[p]] + time_todo))
        with progress.stage("profile latency+memory", 1) as advance, tempfile.TemporaryDirectory() as tmp:
            input_path = Path(tmp) / "x.npy"
            np.save(input_path, chain_input)
            probe_engines = [
                ProbeEngine(engines[k]["path"], k[0], k[2], (batch, *chain[k[0]].input_shape[1:]),
                            tuple((batch, *s[1:]) for s in chain[k[0]].output_shapes))
                for k in probe_keys
            ]
            measured = run_probe(
                probe_engines, threads=settings.threads, warmup=settings.warmup, runs=settings.runs,
                contexts={p: [probe_keys.index(k) for k in keys] for p, keys in context_keys.items()},
                overhead_context="fp32", chain_input=input_path, backend=backend.name,
                frame_gap_ms=settings.frame_gap_ms,
            )
            advance()
        for j, k in enumerate(probe_keys):
            if k in time_todo:
                lat = measured["latency"][j]
                timing = {"latency_ms": lat["latency_ms"], "latency_p90_ms": lat["latency_p90_ms"],
                          "memory_bytes": int(measured["memory_bytes"][j])}
                atomic_write_json(timing_path(k), timing)
                results[k].update(timing)
        c = measured["chain"]
        atomic_write_json(teacher_path, {"latency_ms": c["latency_ms"], "latency_p90_ms": c["latency_p90_ms"],
                                         "chain_overhead_ms": c["overhead_ms"]})
    teacher = {"accuracy": teacher_acc, "metric": metric.name, **json.loads(teacher_path.read_text()), "num_eval": int(len(eval_y))}
    return results, teacher
