"""How far the optimizer's accuracy model is from the truth.

The optimizer predicts a selection's accuracy from per-option drops, each profiled with every other block original
(see :mod:`legocompile.optimize.select` for the model). LegoDNN assumes its additive model without checking. Here
random full selections are run for real on the evaluation split, and both the model in use and LegoDNN's additive
model are compared with what was measured.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from legocompile.optimize.select import additive_accuracy, predicted_accuracy
from legocompile.profile.accuracy import Metric, resolve_metric
from legocompile.profile.profiler import run_batched
from legocompile.stage import Stage, digest
from legocompile.workspace import Workspace, atomic_write_json

ADDITIVITY = Stage("additivity", inputs=("options", "drops", "teacher_accuracy", "eval_inputs", "labels",
                                         "metric", "num_selections", "seed"), tools=("onnxruntime",), format=3)


def check_additivity(
    ws: Workspace,
    backend,
    *,
    options: list[list[tuple[int, str, str]]],
    engines: dict[tuple[int, str, str], dict],
    drops: dict[tuple[int, str, str], float],
    teacher_accuracy: float,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    num_selections: int,
    seed: int = 0,
    progress,
    metric: Metric | None = None,
) -> dict[str, Any] | None:
    """Measure ``num_selections`` random full selections; report mean and max |predicted - measured| accuracy (in
    the task's metric, which the result names)."""
    metric = resolve_metric(metric)
    if num_selections <= 0 or all(len(o) == 1 for o in options):
        return None
    key = ADDITIVITY.key(options=[[engines[k]["sha256"] for k in block] for block in options],
                         drops=[[drops[k] for k in block] for block in options], teacher_accuracy=teacher_accuracy,
                         eval_inputs=digest(eval_x), labels=digest(eval_y), metric=metric.identity,
                         num_selections=num_selections, seed=seed)
    path = ws.path("additivity", key, ".json")
    if path.exists():
        return json.loads(path.read_text())

    rng = np.random.default_rng(seed)
    loaded: dict[tuple[int, str, str], Any] = {}
    samples = []
    with progress.stage("additivity check", num_selections) as advance:
        for _ in range(num_selections):
            choice = [block[rng.integers(len(block))] for block in options]
            h = eval_x
            for k in choice:
                if k not in loaded:
                    loaded[k] = backend.load(engines[k]["path"])
                h = run_batched(loaded[k], h)
            measured = metric(h, eval_y)
            d = [drops[k] for k in choice]
            samples.append({"selection": [[k[1], k[2]] for k in choice], "measured": measured,
                            "predicted": predicted_accuracy(teacher_accuracy, d),
                            "predicted_additive": additive_accuracy(teacher_accuracy, d)})
            advance()
    errors = np.array([abs(s["predicted"] - s["measured"]) for s in samples])
    additive = np.array([abs(s["predicted_additive"] - s["measured"]) for s in samples])
    result = {
        "num_selections": len(samples),
        "metric": metric.name,
        "mean_abs_error": float(errors.mean()),
        "max_abs_error": float(errors.max()),
        "accuracy_model": "multiplicative: teacher * prod(1 - drop / teacher)",
        "additive_mean_abs_error": float(additive.mean()),
        "additive_max_abs_error": float(additive.max()),
        "seed": seed,
        "samples": samples,
    }
    atomic_write_json(path, result)
    return result
