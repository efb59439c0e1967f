"""A small synthetic bundle (fake engine bytes) for tests of the bundle format itself: no model, no build.

The reader never loads engines, so bytes are enough to test writing, checksums, paths and damage handling.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from legocompile.bundle import BlockEntry, Manifest, OptionEntry, TensorSpec, write_bundle

BLOCKS = ("b0", "b1")
PRECISIONS = ("fp32", "int8")


def stage_sources(src: Path, tag: str = "v1") -> tuple[Manifest, dict[str, Path]]:
    """Write fake engine/ONNX files under ``src``; return a manifest describing them and the files map."""
    files: dict[str, Path] = {}
    blocks = []
    for b in BLOCKS:
        onnx_rel = f"onnx/{b}/s0.onnx"
        onnx_src = src / f"{b}-s0.onnx"
        onnx_src.parent.mkdir(parents=True, exist_ok=True)
        onnx_src.write_bytes(f"onnx {b} {tag}".encode() * 50)
        files[onnx_rel] = onnx_src
        options = []
        for p in PRECISIONS:
            rel = f"engines/{b}/s0-{p}.onnx"
            eng_src = src / f"{b}-s0-{p}.engine"
            data = f"engine {b} {p} {tag}".encode() * 100
            eng_src.write_bytes(data)
            files[rel] = eng_src
            options.append(OptionEntry(
                variant="s0", sparsity=0.0, precision=p, backend="onnxruntime", engine=rel,
                sha256=hashlib.sha256(data).hexdigest(), onnx=onnx_rel, params=100, export_max_abs_err=1e-6,
                latency_ms=1.0 if p == "fp32" else 0.5, latency_p90_ms=1.2, memory_bytes=1000,
                accuracy_drop=0.0 if p == "fp32" else 0.01,
                accuracy_gate={"rel_l2": 0.001, "tolerance": 0.05} if p == "int8" else None,
            ))
        blocks.append(BlockEntry(name=b, input=TensorSpec(name="x", shape=(1, 4)),
                                 output=TensorSpec(name="y", shape=(1, 4)), options=tuple(options)))
    manifest = Manifest(
        schema_version=2, model=f"fake-{tag}", input=TensorSpec(name="x", shape=(1, 4)), blocks=tuple(blocks),
        teacher={"accuracy": 0.9, "latency_ms": 2.0, "num_eval": 10}, device={"processor": "test"},
        tools={"python": "3"}, settings={}, extra={"note": tag},
    )
    return manifest, files


def make_bundle(out: Path, src: Path, tag: str = "v1") -> Manifest:
    """Write a synthetic bundle at ``out`` (sources under ``src``); return the manifest as written."""
    manifest, files = stage_sources(src, tag)
    write_bundle(out, manifest, files)
    from legocompile.bundle import read_bundle

    return read_bundle(out)
