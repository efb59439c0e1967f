"""Manifest schema (``manifest.json``), shared by the Python reader/writer and the C++ runtime.

Paths inside are relative to the bundle folder and use ``/``. Latencies are milliseconds, memory bytes,
accuracies fractions in [0, 1]; an ``accuracy_drop`` is teacher accuracy minus the accuracy of the chain in which
that option replaced the block (so it can be slightly negative).

Schema 2 adds ``files``: every file of the bundle except ``manifest.json`` itself (engines and ONNX exports),
bundle-relative path -> sha256 of its bytes. The writer computes it from what it copies; the reader checks every
entry. A bundle is data: nothing in a manifest names code to import or run.

Bundles with int8 engines also carry each variant's calibration ranges (``calibration/BLOCK/VARIANT.ranges.json``,
:class:`calibration.ranges.TensorRanges`'s JSON) and the TensorRT calibration cache written from them
(``...trt-cache``, header ``TRT-8600``), listed in ``files`` and named in ``settings.calibration.files``
(``{block: {variant: {"ranges": path, "trt_cache": path}}}``); :func:`calibration_files` reads that map.
``legocompile retarget`` builds int8 engines for another device from the ranges. A bundle without the map (built
before it existed) reads as before; only retargeting its int8 engines is refused. ``settings.retarget``, when
present, records the bundle a retargeted bundle came from and which profiles were measured elsewhere.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from legocompile.errors import LegoCompileError

SCHEMA_VERSION = 2
TRT_CACHE_VERSION = "8600"  # the header of the TensorRT calibration cache in a bundle (TensorRT 8.6's digits)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(LegoCompileError):
    """``manifest.json`` does not match the schema (a wrong type, a missing or unknown key)."""


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
    engine: str  # relative path of the engine file (listed in Manifest.files)
    sha256: str  # of the engine file (equal to Manifest.files[engine])
    onnx: str  # relative path of the exported fp32 ONNX the engine was built from (listed in Manifest.files)
    params: int  # parameters of the variant's PyTorch block
    export_max_abs_err: float  # |ORT fp32 - PyTorch| on real block inputs
    latency_ms: float  # median, batch = profile batch size
    latency_p90_ms: float
    memory_bytes: int  # resident when loaded and run once (weights + arena)
    accuracy_drop: float  # teacher accuracy minus accuracy with this option in the otherwise original chain
    output_max_abs_err: float = 0.0  # |this engine - fp32 original block| on real block inputs
    accuracy_gate: dict[str, Any] | None = None  # measured error of this engine against its fp32 ONNX, and tolerance
    excluded: str | None = None  # None: selectable; else the one-line reason the engine is not a selectable option

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.precision)


@dataclass(frozen=True, kw_only=True)
class BlockEntry:
    name: str
    input: TensorSpec
    output: TensorSpec  # the block's output (``y``); for a last block with several outputs, the first one
    options: tuple[OptionEntry, ...]
    # The last block of a model whose forward returns a tuple: its outputs after the first (``y1``, ``y2``, ...).
    # Absent (empty) everywhere else; block boundaries inside the chain are single tensors.
    extra_outputs: tuple[TensorSpec, ...] = ()

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Every output of the block, in order (one, except for such a last block)."""
        return (self.output, *self.extra_outputs)

    def option(self, variant: str, precision: str) -> OptionEntry:
        for o in self.options:
            if o.variant == variant and o.precision == precision:
                return o
        have = ", ".join(f"{o.variant}/{o.precision}" for o in self.options)
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
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes; never read to load or run anything
    files: dict[str, str] = field(default_factory=dict)  # bundle-relative path -> sha256; set by write_bundle

    def to_json(self) -> dict:
        doc = asdict(self)
        for b in doc["blocks"]:
            if not b["extra_outputs"]:
                del b["extra_outputs"]  # single-output bundles read exactly as before (the C++ runtime too)
        return doc

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The chain's outputs: the last block's (one tensor, or several for a model that returns a tuple)."""
        return self.blocks[-1].outputs if self.blocks else ()

    @staticmethod
    def from_json(doc: Any) -> "Manifest":
        """Build a Manifest from parsed JSON, checking every key and type.

        Raises :class:`ManifestError` (one line, naming the offending key) for a missing, unknown or mistyped key.
        """
        return _parse(Manifest, doc, "manifest")


# ------------------------------------------------------------------------------------------------------ parsing
def quote(value: Any) -> str:
    """``'text'`` for a printable string (as the C++ runtime prints it), else Python's repr (escapes, one line)."""
    return f"'{value}'" if isinstance(value, str) and value.isprintable() else repr(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse(cls: type, doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected an object, got {_describe(doc)}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ManifestError(f"{where}: unknown key {quote(unknown[0])}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ManifestError(f"{where}: missing key {quote(f.name)}")
            continue
        kwargs[f.name] = _value(hints[f.name], doc[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if tp is Any:
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ManifestError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {_describe(value)}")
        inner = args[0]
        return tuple(_value(inner, v, f"{where}[{k}]") for k, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {_describe(value)}")
        inner = args[1]
        return {k: _value(inner, v, f"{where}[{quote(k)}]") for k, v in value.items()}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _parse(tp, value, where)
    raise TypeError(f"manifest schema: unsupported annotation {tp!r} at {where}")  # a bug in this module


def check_consistency(manifest: Manifest) -> list[str]:
    """Cross-field rules the types cannot express, one line per violation (paths are checked by the reader)."""
    problems = []
    for b in manifest.blocks[:-1]:
        if b.extra_outputs:
            problems.append(f"{b.name}: only the last block may have several outputs (block boundaries are single "
                            "tensors)")
    for rel, digest in manifest.files.items():
        if not _SHA256.fullmatch(digest):
            problems.append(f"files[{quote(rel)}]: not a sha256 hex digest: {_describe(digest)}")
    for b in manifest.blocks:
        for o in b.options:
            for kind, rel in (("engine", o.engine), ("onnx", o.onnx)):
                if rel not in manifest.files:
                    problems.append(f"{b.name} {o.variant}/{o.precision}: {kind} {quote(rel)} is not listed in files")
            if o.engine in manifest.files and manifest.files[o.engine] != o.sha256:
                problems.append(f"{b.name} {o.variant}/{o.precision}: sha256 differs from files[{quote(o.engine)}]")
    return problems


def calibration_files(manifest: Manifest) -> dict[tuple[str, str], dict[str, str]]:
    """``(block, variant) -> {"ranges": path, "trt_cache": path}`` from ``settings.calibration.files`` (empty for a
    bundle built before bundles carried calibration ranges). Every path must be listed in ``files`` (so it is
    checksummed); the caller reads it with :func:`legocompile.bundle.read_verified_bytes`.

    Raises :class:`ManifestError` (one line) when the map is malformed or names an unlisted file.
    """
    calibration = manifest.settings.get("calibration")
    doc = calibration.get("files") if isinstance(calibration, dict) else None
    if doc is None:
        return {}
    where = "settings.calibration.files"
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected an object, got {_describe(doc)}")
    found: dict[tuple[str, str], dict[str, str]] = {}
    for block, variants in doc.items():
        if not isinstance(variants, dict):
            raise ManifestError(f"{where}[{quote(block)}]: expected an object, got {_describe(variants)}")
        for variant, entry in variants.items():
            at = f"{where}[{quote(block)}][{quote(variant)}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("ranges"), str):
                raise ManifestError(f"{at}: expected an object with a 'ranges' path, got {_describe(entry)}")
            for kind, rel in entry.items():
                if kind not in ("ranges", "trt_cache"):
                    raise ManifestError(f"{at}: unknown key {quote(kind)}")
                if not isinstance(rel, str) or rel not in manifest.files:
                    raise ManifestError(f"{at}.{kind}: {quote(rel)} is not listed in files")
            found[(block, variant)] = dict(entry)
    return found
