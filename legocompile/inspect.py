"""A bundle's summary as plain JSON (``legocompile inspect --json``)."""

from __future__ import annotations

from dataclasses import asdict

from legocompile.bundle import Manifest

OPTION_FIELDS = (
    "variant", "sparsity", "precision", "backend", "params", "latency_ms", "latency_p90_ms", "memory_bytes",
    "accuracy_drop", "export_max_abs_err", "output_max_abs_err", "engine", "accuracy_gate", "excluded",
)


def summary(manifest: Manifest) -> dict:
    return {
        "model": manifest.model,
        "teacher": dict(manifest.teacher),
        "device": dict(manifest.device),
        "blocks": [
            {
                "name": b.name,
                "input_shape": list(b.input.shape),
                "output_shape": list(b.output.shape),
                "options": [{k: asdict(o)[k] for k in OPTION_FIELDS} for o in b.options],
            }
            for b in manifest.blocks
        ],
        "additivity": manifest.additivity,
        "int8": manifest.settings.get("int8"),
    }
