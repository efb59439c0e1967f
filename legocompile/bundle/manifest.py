"""Manifest schema (``manifest.json``), shared by the Python reader/writer and the C++ runtime.

Paths inside are relative to the bundle folder and use ``/``. Latencies are milliseconds, memory bytes,
accuracies fractions in [0, 1]; an ``accuracy_drop`` is teacher accuracy minus the accuracy of the chain in which
that option replaced the block (so it can be slightly negative).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # at the profile batch size; dimension 0 is the dynamic batch axis
    dtype: str = "float32"


@dataclass(frozen=True, kw_only=True)
class OptionEntry:
    variant: str  # "s0" is the original block; "s0.4" the 40%-pruned descendant, or a user-supplied name
    sparsity: float | None  # None for a user-supplied variant of unknown sparsity
    precision: str  # fp32 | fp16 | int8
    backend: str
    engine: str  # relative path of the engine file
    sha256: str  # of the engine file
    onnx: str  # relative path of the exported fp32 ONNX the engine was built from
    params: int  # parameters of the variant's PyTorch block
    export_max_abs_err: float  # |ORT fp32 - PyTorch| on real block inputs
    latency_ms: float  # median, batch = profile batch size
    latency_p90_ms: float
    memory_bytes: int  # resident when loaded and run once (weights + arena)
    accuracy_drop: float  # teacher accuracy minus accuracy with this option in the otherwise original chain
    output_max_abs_err: float = 0.0  # |this engine - fp32 original block| on real block inputs

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.precision)


@dataclass(frozen=True, kw_only=True)
class BlockEntry:
    name: str
    input: TensorSpec
    output: TensorSpec
    options: tuple[OptionEntry, ...]

    def option(self, variant: str, precision: str) -> OptionEntry:
        for o in self.options:
            if o.variant == variant and o.precision == precision:
                return o
        have = ", ".join(f"{o.variant}/{o.precision}" for o in self.options)
        from legocompile.errors import LegoCompileError

        raise LegoCompileError(f"block {self.name!r} has no option {variant}/{precision}; it has {have}")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    schema_version: int
    model: str
    input: TensorSpec
    blocks: tuple[BlockEntry, ...]
    teacher: dict[str, Any]  # accuracy, latency_ms (chained fp32 originals), pytorch_accuracy, num_eval
    device: dict[str, Any]
    tools: dict[str, str]
    settings: dict[str, Any]  # profile + calibration settings used
    additivity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict) -> "Manifest":
        def spec(d: dict) -> TensorSpec:
            return TensorSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"))

        blocks = tuple(
            BlockEntry(
                name=b["name"],
                input=spec(b["input"]),
                output=spec(b["output"]),
                options=tuple(OptionEntry(**o) for o in b["options"]),
            )
            for b in doc["blocks"]
        )
        return Manifest(
            schema_version=doc["schema_version"],
            model=doc["model"],
            input=spec(doc["input"]),
            blocks=blocks,
            teacher=doc["teacher"],
            device=doc["device"],
            tools=doc["tools"],
            settings=doc["settings"],
            additivity=doc.get("additivity"),
            extra=doc.get("extra", {}),
        )
