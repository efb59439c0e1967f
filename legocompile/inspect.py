"""A bundle's summary as plain JSON (``legocompile inspect --json``)."""

from __future__ import annotations

from dataclasses import asdict

from legocompile.bundle import Manifest
from legocompile.profile.accuracy import metric_label, metric_of

OPTION_FIELDS = (
    "variant", "sparsity", "precision", "backend", "params", "latency_ms", "latency_p90_ms", "memory_bytes",
    "accuracy_drop", "export_max_abs_err", "output_max_abs_err", "engine", "accuracy_gate", "excluded",
)


def summary(manifest: Manifest) -> dict:
    return {
        "model": manifest.model,
        "metric": metric_of(manifest.teacher),  # what accuracy and every accuracy_drop are measured in
        "teacher": dict(manifest.teacher),
        "device": dict(manifest.device),
        "blocks": [
            {
                "name": b.name,
                "input_shape": list(b.input.shape),
                "output_shape": list(b.output.shape),
                "output_shapes": [list(t.shape) for t in b.outputs],  # several for a model's last block returning a tuple
                "options": [{k: asdict(o)[k] for k in OPTION_FIELDS} for o in b.options],
            }
            for b in manifest.blocks
        ],
        "additivity": manifest.additivity,
        "int8": manifest.settings.get("int8"),
        "profile": manifest.settings.get("profile"),
        "retarget": _retarget(manifest),
        "flat_accuracy": flat_accuracy_note(manifest),
    }


def flat_accuracy_note(manifest: Manifest) -> str | None:
    """Why the frontier trades latency against memory only, when no option changes the metric; else None.

    A newcomer's first frontier would otherwise look broken: with every accuracy drop at zero the optimizer always
    finds the cheapest selection, fp32 engines are dominated wherever int8 measures the same, and the frontier
    collapses to a few points."""
    drops = [o.accuracy_drop for b in manifest.blocks for o in b.options if o.excluded is None]
    if not drops or any(d != 0 for d in drops):
        return None
    n = manifest.teacher.get("num_eval")
    on = f" on its {n} evaluation samples" if n else ""
    label = metric_label(metric_of(manifest.teacher))
    return (f"no option changes the model's {label}{on} (every accuracy drop is 0), so the frontier trades latency "
            "against memory only; evaluate on harder or more data to see what the variants cost in accuracy")


def _retarget(manifest: Manifest) -> dict | None:
    """Where a retargeted bundle came from and what was measured elsewhere (None for a bundle built here)."""
    r = manifest.settings.get("retarget")
    if not isinstance(r, dict):
        return None
    src = r.get("source") if isinstance(r.get("source"), dict) else {}
    return {
        "backend": r.get("backend"), "accuracy": r.get("accuracy"),
        "measured_elsewhere": r.get("measured_elsewhere", []), "timing_input": r.get("timing_input"),
        "source": {"model": src.get("model"), "manifest_sha256": str(src.get("manifest_sha256")),
                   "backend": list(src.get("backend") or []), "device": src.get("device")},
    }
