"""A bundle's summary as plain JSON (``legocompile inspect --json``)."""

from __future__ import annotations

from dataclasses import asdict

from legocompile.bundle import Manifest
from legocompile.profile.accuracy import metric_of

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
    }


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
